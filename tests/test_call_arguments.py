"""The Python entry points take directions and settings alike, and refuse what they cannot use in one line.

Found by a careless-user pass over the public API (2026-12-03): a mistyped ``steering_sclae=`` or ``stering=`` was
swallowed by the diffusers pipeline's ``**kwargs`` (an unsteered or fully steered image, no word); ``num_inference_steps=-1``
returned an image without one denoising step and 0 divided by zero inside the scheduler; an image-to-image strength
that runs no step failed on an empty stack; a `pipe.steering(...)` block did not reach `ImageInversion.edit`;
``fit_take_away("to_blue", "to_red")`` raised AttributeError on the names ``steering=`` takes; a direction cast to
an integer dtype steered nothing, silently; ``save("folder/")`` wrote ``folder.safetensors`` beside the folder.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from steer import SteeringStableDiffusionImg2ImgPipeline, SteeringVector


@pytest.fixture(scope="module")
def demo():
    from steer.cli.loading import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(out) -> np.ndarray:
    return np.asarray(out.images[0], dtype=float)


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize(("kwargs", "meant"), [
    ({"steering": "to_blue", "steering_sclae": 0.0}, "'steering_scale'"),
    ({"stering": "to_blue"}, "'steering'"),
    ({"steering": "to_blue", "scale": 0.0}, "'steering_scale'"),
    ({"steering": "to_blue", "steering_windw": (0, 1)}, "'steering_window'"),
])
def test_a_mistyped_steering_option_is_refused_not_swallowed(demo, kwargs, meant):
    with pytest.raises(TypeError, match=f"unknown argument .*did you mean {meant}"):
        demo("a sneaker", num_inference_steps=1, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' deprecation of callback_steps
        demo("a sneaker", num_inference_steps=1, callback_steps=1)  # the pipeline's own (deprecated) names still pass
    with pytest.raises(TypeError, match="learn_direction.. got an unknown argument 'calibrat'; did you mean 'calibrate'"):
        demo.learn_direction(["a blue bag"], ["a bag"], calibrat=False, progress=False)



@pytest.mark.parametrize(("helper", "kwargs", "needle"), [
    ("fit_take_away", {"num_sample": 1}, "fit_take_away() got an unknown argument 'num_sample'; did you mean 'num_samples'"),
    ("fit_edit", {"num_sample": 1}, "fit_edit() got an unknown argument 'num_sample'; did you mean 'num_samples'"),
    ("detect_memorization", {"num_inferance_steps": 2}, "got an unknown argument 'num_inferance_steps'; did you mean 'num_inference_steps'"),
    ("learn_direction", {"generator": None}, "learn_direction() sets generator itself"),
    ("fit_take_away", {"output_type": "pil"}, "fit_take_away() sets output_type itself"),
    ("detect_memorization", {"generator": None}, "detect_memorization() sets generator itself"),
])
def test_helpers_refuse_mistyped_or_their_own_call_arguments_in_one_line(demo, helper, kwargs, needle):
    """Each helper passes its extra keywords on to the pipeline's calls: a mistyped one was swallowed by diffusers'
    ``**kwargs`` (the helper ran with its default: 50 steps instead of 2, a fit from the default samples) and one it
    sets itself gave a 39-line "got multiple values" with the pipeline's whole config."""
    call = {"fit_take_away": lambda **kw: demo.fit_take_away("to_blue", "to_red", **kw),
            "fit_edit": lambda **kw: demo.fit_edit("to_blue", **kw),
            "detect_memorization": lambda **kw: demo.detect_memorization("a bag", **kw),
            "learn_direction": lambda **kw: demo.learn_direction(["a blue bag"], ["a bag"], progress=False, **kw)}[helper]
    with pytest.raises(TypeError) as err:
        call(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("guidance", [float("nan"), float("inf"), 1e9, "7.5"])
def test_a_guidance_scale_that_is_no_finite_number_is_one_line_in_calls_learning_and_fits(demo, guidance):
    """diffusers reads ``nan > 1`` as no guidance: a NaN guidance sampled without it, and learning recorded NaN in the
    direction's metadata as "calibrated"."""
    for run in (lambda: demo("a sneaker", num_inference_steps=1, guidance_scale=guidance),
                lambda: demo.learn_direction(["a blue bag"], ["a bag"], guidance_scale=guidance, num_inference_steps=2,
                                             calibration_samples=1, progress=False),
                lambda: demo.fit_take_away("to_blue", "to_red", guidance_scale=guidance, num_samples=1, num_inference_steps=2)):
        with pytest.raises(ValueError, match="guidance_scale must be a finite number within"):
            run()


def test_yes_no_options_take_booleans_not_strings(demo):
    """``bool("False")`` is True: ``steering_normalize="False"`` turned normalization on and ``calibrate="no"``
    calibrated. Strings are one line; numpy booleans and 0/1 still read as they say."""
    import numpy as np

    for option in ("steering_normalize", "steering_strict", "steering_preserve_norm"):
        with pytest.raises(ValueError, match=f"{option} must be True or False, got 'False'"):
            demo("a sneaker", num_inference_steps=1, steering="to_blue", **{option: "False"})
    with pytest.raises(TypeError, match="calibrate must be True or False, got 'no'"):
        demo.learn_direction(["a blue bag"], ["a bag"], calibrate="no", progress=False)
    plain = pixels(demo("a sneaker", num_inference_steps=2, generator=gen(), steering="to_blue", steering_normalize=False))
    numpy_false = pixels(demo("a sneaker", num_inference_steps=2, generator=gen(), steering="to_blue", steering_normalize=np.bool_(False)))
    assert np.array_equal(plain, numpy_false)


def test_fit_inputs_are_checked_and_named(demo):
    """A NaN grid used to fail naming steering_scale, a three-number window was cut to two, and a string strength
    failed comparing int with str."""
    with pytest.raises(ValueError, match=r"the take-away grid must hold positive, finite strengths"):
        demo.fit_take_away("to_blue", "to_red", grid=[float("nan")], num_samples=1, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"each of windows= must be a pair \(start, end\) of fractions"):
        demo.fit_take_away("to_blue", "to_red", windows=[(0, 0.5, 0.9)], num_samples=1, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"each of windows= must satisfy 0 <= start < end <= 1"):
        demo.fit_take_away("to_blue", "to_red", windows=[(0.5, 0.2)], num_samples=1, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"the edit grid must hold positive, finite strengths"):
        demo.fit_edit("to_blue", grid=[0.5, float("inf")], num_samples=1, num_inference_steps=2)
    with pytest.raises(TypeError, match=r"strength must be a number in \(0, 1\], got str"):
        demo.fit_edit("to_blue", strength="0.5", num_samples=1, num_inference_steps=2)
    with pytest.raises(ValueError, match=r"^floor must be a finite number, got inf$"):  # it came back as the scale
        demo.fit_edit("to_blue", floor=float("inf"), num_samples=1, num_inference_steps=2)
    # a repeated strength ended in a ZeroDivisionError after all the sampling (the curve's fit through it)
    with pytest.raises(ValueError, match=r"^the calibration grid repeats the strength 0.3: give each once$"):
        demo.learn_direction(["a blue bag"], ["a bag"], calibration_grid=[0.2, 0.3, 0.3], progress=False)
    with pytest.raises(ValueError, match=r"^the take-away grid repeats the strength 1: give each once$"):
        demo.fit_take_away("to_blue", "to_red", grid=[1, 0.5, 1.0], num_samples=1, num_inference_steps=2)


@pytest.mark.parametrize("steps", [-1, 0, 2.5, True, 1001])
def test_num_inference_steps_out_of_range_is_one_line(demo, steps):
    with pytest.raises(ValueError, match="num_inference_steps must be an integer from 1 to 1000"):
        demo("a sneaker", num_inference_steps=steps, steering="to_blue")


def test_empty_prompts_and_counts_are_one_line(demo):
    with pytest.raises(ValueError, match="prompt is an empty list"):
        demo([], steering="to_blue", num_inference_steps=1)
    with pytest.raises(ValueError, match="num_images_per_prompt must be a positive integer"):
        demo("a sneaker", num_images_per_prompt=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="non-empty list of prompts"):
        demo.detect_memorization([], num_inference_steps=1)
    with pytest.raises(ValueError, match="batch_size must be between 1"):
        demo.detect_memorization("a sneaker", batch_size=0, num_inference_steps=1)
    with pytest.raises(ValueError, match="verdict_from must be"):
        demo.detect_memorization("a sneaker", verdict_from="x", num_inference_steps=1)


def test_an_image_to_image_strength_that_runs_no_step_is_one_line(demo):
    photo = demo("a t-shirt", num_inference_steps=2, generator=gen()).images[0]
    edit = SteeringStableDiffusionImg2ImgPipeline.from_pipe(demo)
    for strength in (0.1, 0.0):
        with pytest.raises(ValueError, match=f"strength {strength:g} of 6 steps runs no denoising step"):
            edit("a t-shirt", image=photo, strength=strength, steering="to_blue", num_inference_steps=6)
    for strength in (float("nan"), 1.5, -0.5):  # NaN failed inside int() ("cannot convert float NaN to integer")
        with pytest.raises(ValueError, match=r"^strength must be a number in \(0, 1\], got"):
            edit("a t-shirt", image=photo, strength=strength, num_inference_steps=6)
    assert edit("a t-shirt", image=photo, strength=0.2, num_inference_steps=6).images[0].size == photo.size  # 1 step runs


def test_fits_and_checks_take_directions_as_calls_do(demo):
    from steer.take_away import suggested_take_aways

    blue = demo.load_direction("to_blue")
    with pytest.raises(ValueError, match="windows= is a list of candidate windows"):
        demo.fit_take_away("to_blue", "to_red", windows=(0, 1))
    with pytest.raises(ValueError, match="num_samples must be between 1"):
        demo.fit_take_away(blue, "to_red", num_samples=0)
    with pytest.raises(ValueError, match="num_samples must be between 1"):
        demo.fit_edit("to_blue", num_samples=0)
    with pytest.raises(TypeError, match="pipe.load_direction"):  # was [] (a name read as "no recorded prompts")
        suggested_take_aways(blue, "a red t-shirt", {"red": "to_red"})
    assert suggested_take_aways(blue, "a red t-shirt", {"red": demo.load_direction("to_red")}) == [("red", ["red"])]
    with pytest.raises(ValueError, match="positive item 0 is neither a prompt nor an image"):
        demo.learn_direction([None, "a blue bag"], ["a t-shirt", "a bag"], calibrate=False, progress=False)
    with pytest.raises(ValueError, match="step_buckets must be between 1"):
        demo.learn_direction(["a blue bag", "a blue coat"], ["a bag", "a coat"], preset="casteer", step_buckets=0, progress=False)


def test_steering_that_cannot_steer_is_refused(demo):
    blue = demo.load_direction("to_blue")
    for steering, needle in ((123, "got int"), (torch.zeros(3), "got Tensor"),
                             (blue.to(dtype=torch.int64), "holds int64 values"),
                             (SteeringVector({"up_blocks.0.resnets.0": torch.zeros(0)}, {}), "is empty")):
        with pytest.raises((TypeError, ValueError), match=needle):
            demo("a sneaker", steering=steering, num_inference_steps=1)


def test_a_steering_block_reaches_the_inversion_replay(demo):
    """`ImageInversion.edit` replays on a copy of the pipeline: a `pipe.steering(...)` block applies to it as to a
    call (it was ignored: the copy looked its block up under another key)."""
    photo = demo("a purple t-shirt", num_inference_steps=4, generator=gen()).images[0]
    inversion = demo.invert_image(photo, "a purple item", num_inference_steps=4, generator=gen())
    plain, steered = pixels(inversion.edit(demo)), pixels(inversion.edit(demo, steering="to_bag"))
    with demo.steering("to_bag"):
        blocked = pixels(inversion.edit(demo))
    assert np.abs(steered - plain).mean() > 5 and np.array_equal(blocked, steered)
    with pytest.raises(TypeError, match="the inversion fixes num_inference_steps"):
        inversion.edit(demo, steering="to_bag", num_inference_steps=10)
    with pytest.raises(ValueError, match="rows must be a positive integer"):
        inversion.edit(demo, rows=0)
    with pytest.raises(TypeError, match="invert_image takes one prompt"):
        demo.invert_image(photo, ["a purple item"], num_inference_steps=4)
    with pytest.raises(ValueError, match="give height and width for an image that is not a PIL image .got ndarray"):
        demo.invert_image(np.asarray(photo), "a purple item", num_inference_steps=4)
    with pytest.raises(ValueError, match="num_inference_steps must be between 1"):
        demo.invert_image(photo, "a purple item", num_inference_steps=-2)


def test_save_refuses_a_folder_and_load_finds_what_save_wrote(demo, tmp_path):
    blue = demo.load_direction("to_blue")
    with pytest.raises(ValueError, match="it is a folder; give a file name"):
        blue.save(tmp_path)
    with pytest.raises(ValueError, match="it is a folder"):
        blue.save(f"{tmp_path}/new/")
    (tmp_path / "taken.safetensors").mkdir()
    with pytest.raises(ValueError, match="a folder has that name"):
        blue.save(tmp_path / "taken")
    written = blue.save(tmp_path / "blue")  # the suffix added
    assert written == tmp_path / "blue.safetensors"
    assert SteeringVector.load(tmp_path / "blue").digest() == blue.digest()  # found as save named it
    assert not list(tmp_path.parent.glob(f"{tmp_path.name}.safetensors"))


def test_from_pipe_of_a_plain_pipeline_loaded_without_a_dtype_runs(demo):
    """diffusers loads the demo model's float16 text encoder as stored and its UNet in float32 (it cannot run);
    `from_pipe` makes the choice `from_pretrained` makes (float32 on the CPU) instead of keeping the mix."""
    from diffusers import StableDiffusionPipeline

    from steer import SteeringStableDiffusionPipeline
    from steer.assets import DEFAULT_MODEL

    plain = StableDiffusionPipeline.from_pretrained(DEFAULT_MODEL)
    assert plain.text_encoder.dtype == torch.float16 and plain.unet.dtype == torch.float32
    pipe = SteeringStableDiffusionPipeline.from_pipe(plain)
    pipe.set_progress_bar_config(disable=True)
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    out = pixels(pipe("a sneaker", steering="to_blue", num_inference_steps=2, generator=gen()))
    assert np.array_equal(out, pixels(demo("a sneaker", steering="to_blue", num_inference_steps=2, generator=gen())))


def test_a_calibrated_direction_is_its_recorded_strength_whatever_the_batch_size(demo):
    """``batch_size`` changes memory and speed only, but the strength's last bits followed the batches' float rounding,
    and with them the direction's digest, by which recipes find it (8, 3, 1 gave three digests)."""
    from steer.denoisers import CONTEXT_SITE

    learned = [demo.learn_direction(["a blue sneaker", "a blue bag"], ["a sneaker", "a bag"], num_inference_steps=6,
                                    calibration_samples=4, batch_size=size, progress=False) for size in (8, 3)]
    assert learned[0].metadata["calibration"]["converged"]
    assert learned[0].digest() == learned[1].digest()
    strength = learned[0].metadata["calibration"]["strength"]
    assert learned[0].directions[CONTEXT_SITE].norm(dim=-1).max().item() == pytest.approx(strength, rel=1e-6)
