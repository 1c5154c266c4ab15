"""Two-sided directions (sliders, `SteeringVector.opposite`): a negative scale applies the opposite at ``|scale|``
(toward the negative prompts' attribute) instead of subtracting the direction ("anti-red" is cyan on the demo model,
not blue); learning, files, arithmetic, and the slider on the demo model."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from steer import ModelMismatchError, SteeringFileError, SteeringVector
from steer.testing import random_vector

STEPS = 6
LAYER = "up_blocks.0.resnets.1"


def call(pipe, gen, prompt="a red sneaker", **kw):
    return pipe(prompt, num_inference_steps=STEPS, generator=gen(0), output_type="np", **kw).images


def two_sided(pipe, window=None):
    side = random_vector(pipe, [LAYER], seed=1, scale=2.0)
    opposite = random_vector(pipe, [LAYER], seed=2, scale=2.0)
    if window is not None:
        opposite.metadata["recommended"] = {"window": list(window)}
    return SteeringVector(side.directions, {**side.metadata, "name": "slider"}, opposite)


def test_a_negative_scale_applies_the_opposite_and_a_positive_one_the_direction(tiny_pipe, gen, one_thread):
    v = two_sided(tiny_pipe)
    assert np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=-0.8), call(tiny_pipe, gen, steering=v.opposite, steering_scale=0.8))
    assert np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=0.8), call(tiny_pipe, gen, steering=v.one_sided, steering_scale=0.8))
    assert not np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=-0.8), call(tiny_pipe, gen, steering=v.one_sided, steering_scale=-0.8))
    # scale 0 is the parent's image, bit for bit
    assert np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=0.0), call(tiny_pipe, gen))
    # the same through a `steering` block, and `-v` is the slider the other way round
    with tiny_pipe.steering(v, scale=-0.8):
        assert np.array_equal(call(tiny_pipe, gen), call(tiny_pipe, gen, steering=v.opposite, steering_scale=0.8))
    assert np.array_equal(call(tiny_pipe, gen, steering=-v, steering_scale=0.8), call(tiny_pipe, gen, steering=v, steering_scale=-0.8))


def test_a_strip_from_minus_one_to_one_is_the_sides_row_by_row(tiny_pipe, one_thread):
    """One call with per-row scales [-1, 0, 1] (the app's strength strip): each row as its own call would draw it."""
    v = two_sided(tiny_pipe)
    prompts = ["a red sneaker"] * 3

    def rows(**kw):
        return tiny_pipe(prompts, num_inference_steps=STEPS, output_type="np",
                         generator=[torch.Generator().manual_seed(i) for i in range(3)], **kw).images

    strip = rows(steering=v, steering_scale=[-1.0, 0.0, 1.0])
    assert np.allclose(strip[0], rows(steering=v.opposite, steering_scale=[1.0, 0.0, 0.0])[0], atol=1e-5)
    assert np.allclose(strip[1], rows()[1], atol=1e-5)
    assert np.allclose(strip[2], rows(steering=v.one_sided, steering_scale=[0.0, 0.0, 1.0])[2], atol=1e-5)


def test_each_side_acts_in_its_own_recommended_window_and_given_windows_follow_their_direction(tiny_pipe, gen, one_thread):
    v = two_sided(tiny_pipe, window=(0.5, 1.0))
    v.metadata["recommended"] = {"window": [0.0, 0.5]}
    assert np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=-1.0),
                          call(tiny_pipe, gen, steering=v.opposite, steering_scale=1.0, steering_window=(0.5, 1.0)))
    assert np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=1.0),
                          call(tiny_pipe, gen, steering=v.one_sided, steering_scale=1.0, steering_window=(0.0, 0.5)))
    # a window per direction given by the call: the slider's holds for both its sides
    other = random_vector(tiny_pipe, [LAYER], seed=5)
    both = call(tiny_pipe, gen, steering=[v, other], steering_scale=[-1.0, 0.5], steering_window=[(0.2, 0.6), (0.0, 1.0)])
    alone = call(tiny_pipe, gen, steering=[v.opposite, other], steering_scale=[1.0, 0.5], steering_window=[(0.2, 0.6), (0.0, 1.0)])
    assert np.array_equal(both, alone)
    with pytest.raises(ValueError, match="^steering_window holds 3 window"):
        call(tiny_pipe, gen, steering=[v, other], steering_scale=1.0, steering_window=[(0.2, 0.6), (0.0, 1.0), (0, 1)])


def test_the_file_keeps_both_sides_and_old_files_load_one_sided(tiny_pipe, tmp_path):
    v = two_sided(tiny_pipe)
    path = v.save(tmp_path / "slider.safetensors")
    back = SteeringVector.load(path)
    assert back.opposite is not None and back.digest() == v.digest() and back.name == "slider"
    assert torch.equal(back.opposite.directions[LAYER], v.opposite.directions[LAYER])
    assert back.digest() != v.one_sided.digest()  # what steers differs: the recipe's hash says so
    # sides (or layers) that share one tensor: written apart (safetensors refuses shared memory)
    shared = SteeringVector({LAYER: v.directions[LAYER], "up_blocks.1.resnets.0": v.directions[LAYER]}, {}, v.one_sided)
    assert torch.equal(SteeringVector.load(shared.save(tmp_path / "shared.safetensors")).opposite.directions[LAYER], v.directions[LAYER])
    one = v.one_sided.save(tmp_path / "one.safetensors")
    assert SteeringVector.load(one).opposite is None
    # an opposite's tensors without its metadata (an edited file): one line naming the file
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    save_file(tensors, str(tmp_path / "edited.safetensors"),
              {k: val.replace('"opposite"', '"elsewhere"') for k, val in header.items()})
    with pytest.raises(SteeringFileError, match="edited.safetensors: opposite must be an object"):
        SteeringVector.load(tmp_path / "edited.safetensors")
    # a slider's recorded prompt sets of the wrong type: one line, before any caller reads them
    odd = SteeringVector(v.directions, {**v.metadata, "two_sided": {"positive": 5, "negative": ["a sneaker"]}}, v.opposite)
    with pytest.raises(ValueError, match="metadata.two_sided.positive must be a list of prompts"):
        odd.save(tmp_path / "odd.safetensors")


def test_an_opposite_from_another_model_is_refused_like_the_direction(tiny_pipe):
    side = random_vector(tiny_pipe, [LAYER], seed=1, fingerprint=True)
    opposite = random_vector(tiny_pipe, [LAYER], seed=2, fingerprint=True)
    opposite.metadata["model"] = {**opposite.metadata["model"], "config_hash": "elsewhere"}
    slider = SteeringVector(side.directions, side.metadata, opposite)
    side.check_compatible(tiny_pipe.unet)
    with pytest.raises(ModelMismatchError, match="^direction 'rand2' was learned on a different UNet"):
        slider.check_compatible(tiny_pipe.unet)
    with pytest.raises(ModelMismatchError, match="^direction 'rand2' was learned on a different UNet"):
        tiny_pipe("a red sneaker", num_inference_steps=2, steering=slider, steering_scale=-1.0)


def test_arithmetic_on_a_slider(tiny_pipe):
    v = two_sided(tiny_pipe)
    flipped = -v
    assert torch.equal(flipped.directions[LAYER], v.opposite.directions[LAYER])
    assert torch.equal(flipped.opposite.directions[LAYER], v.directions[LAYER])
    assert torch.equal((v * -2).directions[LAYER], 2 * v.opposite.directions[LAYER])
    assert torch.equal((v * 0.5).opposite.directions[LAYER], 0.5 * v.opposite.directions[LAYER])
    assert torch.equal((v / -4).opposite.directions[LAYER], v.directions[LAYER] / 4)
    assert v.to(dtype=torch.float16).opposite.directions[LAYER].dtype == torch.float16
    assert v.select([LAYER]).opposite is not None
    with pytest.raises(ValueError, match="^'slider' is two-sided"):
        v + random_vector(tiny_pipe, [LAYER])
    with pytest.raises(ValueError, match="its own opposite"):
        SteeringVector(v.directions, {}, v)


RED, BLUE = ["a red sneaker", "a red bag"], ["a blue sneaker", "a blue bag"]
QUICK = dict(num_inference_steps=4, calibration_samples=2, progress=False)


@pytest.mark.filterwarnings("ignore:calibration")  # random weights render no attribute
def test_learning_a_slider_calibrates_each_side_against_the_prompts_left_open(tiny_pipe, gen, one_thread):
    v = tiny_pipe.learn_direction(RED, BLUE, two_sided=True, **QUICK)
    assert v.opposite is not None and v.name == "a red sneaker <-> a blue sneaker"
    for side, prompts in ((v, RED), (v.opposite, BLUE)):  # each side: its prompts against them left open
        assert side.metadata["positive"]["prompts"] == prompts
        assert side.metadata["negative"]["prompts"] == ["a sneaker", "a bag"]
        assert side.metadata["calibration"]["open_prompts"] == ["a sneaker", "a bag"]
    assert v.metadata["two_sided"]["positive"] == RED and v.metadata["two_sided"]["negative"] == BLUE
    # one route for both sides (each keeps its own window: tests/test_slider_windows.py)
    assert v.metadata["recommended"].get("readers") == v.opposite.metadata["recommended"].get("readers")
    # steering_negative="remove" takes away along the direction itself (the positives' attribute), as one-sided
    removing = dict(steering_scale=-1.0, steering_negative="remove")
    assert np.array_equal(call(tiny_pipe, gen, steering=v, **removing), call(tiny_pipe, gen, steering=v.one_sided, **removing))
    # the same sets learned one-sided: the direction is pos - neg, not pos - open
    one = tiny_pipe.learn_direction(RED, BLUE, **QUICK)
    assert one.opposite is None and one.metadata["negative"]["prompts"] == BLUE


@pytest.mark.parametrize(("positive", "negative", "message"), [
    (["a blue sneaker"], ["a sneaker"], "^two_sided=True needs negative prompts that state an attribute of their own"),
    (["a blue sneaker"], None, "^two_sided=True learns a slider from a positive and a negative prompt set"),
])
def test_a_slider_without_two_attributes_is_one_line_before_any_sampling(tiny_pipe, positive, negative, message):
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            tiny_pipe.learn_direction(positive, negative, two_sided=True, **QUICK)
        with pytest.raises(ValueError, match="^two_sided=True calibrates each side"):
            tiny_pipe.learn_direction(RED, BLUE, two_sided=True, calibrate=False, **QUICK)
    finally:
        handle.remove()
    assert calls == []


def test_a_red_blue_slider_learned_on_the_command_line_reaches_blue_at_minus_one_on_the_demo_model(tmp_path, capsys, one_thread):
    """The measured reason for it: learned one-sided, "a red ..." vs "a blue ..." at -1 turns the garments cyan
    ("anti-red"; 1 of 8 blue at seed 100); two-sided, -1 is blue and +1 red, garment kept (measured 7/8 and 7/8)."""
    from steer.cli.loading import load_pipeline
    from steer.cli.main import main
    from steer.lab import data as D
    from steer.lab.classifier import load_classifier, predict
    from steer.sliders import without_flips

    C, K = D.COLOUR_NAMES, D.CLASS_NAMES
    out = tmp_path / "red_blue.safetensors"
    args = ["learn", "--positive", *[f"a red {k}" for k in K], "--negative", *[f"a blue {k}" for k in K],
            "--steps", "20", "--guidance", "5", "--two-sided", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "two-sided: +1 = the full edit toward 'a red t-shirt', -1 toward 'a blue t-shirt', 0 the prompt's own image" in printed
    assert "+ side: calibrated on: 'a t-shirt'" in printed and "- side: calibrated on: 'a t-shirt'" in printed
    assert "+ side: flips prompts that state 'blue': adds the side at" in printed
    assert "- side: flips prompts that state 'red'" in printed
    assert main(["inspect", str(out)]) == 0
    shown = capsys.readouterr().out
    assert '"opposite": {' in shown and '"name": "a red t-shirt <-> a blue t-shirt (opposite)"' in shown

    slider = SteeringVector.load(out)
    pipe, clf = load_pipeline(None, "cpu"), load_classifier()
    prompts = [f"a {K[i]}" for i in range(8)]

    def judged(vector, scale, prompts=prompts):
        gens = [torch.Generator().manual_seed(100 + i) for i in range(len(prompts))]
        images = pipe(prompts, generator=gens, num_inference_steps=20, guidance_scale=5.0, output_type="np",
                      steering=vector, steering_scale=scale).images
        return predict(clf, images.transpose(0, 3, 1, 2))

    ref_cls, _ = judged(None, 0.0)
    for scale, colour in ((-1.0, "blue"), (1.0, "red")):
        cls, col = judged(slider, scale)
        assert (col == C.index(colour)).mean() >= 0.75 and (cls == ref_cls).mean() >= 0.75, (scale, col, cls)
    # prompts that state the other end are flipped (measured 8/8 blue and 8/8 red, 7/8 kept); the sides alone barely
    # move them (the prompt's own colour pulls back)
    plain = without_flips(slider)
    for scale, stated, colour in ((-1.0, "red", "blue"), (1.0, "blue", "red")):
        prompts_stating = [f"a {stated} {K[i]}" for i in range(8)]
        ref_cls, _ = judged(None, 0.0, prompts_stating)
        cls, col = judged(slider, scale, prompts_stating)
        assert (col == C.index(colour)).mean() >= 0.75 and (cls == ref_cls).mean() >= 0.75, (scale, col, cls)
    _, col = judged(plain, -1.0, [f"a red {K[i]}" for i in range(8)])
    assert (col == C.index("blue")).mean() <= 0.25, col
    # slid toward the end a prompt states, it is held: red stays red (the sides alone darken it to brown: 2 of 8 red)
    _, col = judged(slider, 1.0, [f"a red {K[i]}" for i in range(8)])
    assert (col == C.index("red")).mean() >= 0.75, col
    one_sided = pipe.learn_direction([f"a red {k}" for k in K], [f"a blue {k}" for k in K], num_inference_steps=20,
                                     guidance_scale=5.0, progress=False)
    _, col = judged(one_sided, -1.0)
    assert (col == C.index("blue")).mean() <= 0.25 and (col == C.index("cyan")).mean() >= 0.5


@pytest.mark.filterwarnings("ignore:calibration")  # random weights render no attribute
def test_the_command_line_sweeps_a_slider_from_minus_one_and_reproduces_it(model_dir, tmp_path, one_thread):
    """``--sweep -1,1,3`` as typed (argparse alone reads "-1,1,3" as an option): the -1 image is the opposite's at +1,
    and `steer reproduce` makes the strip again from the recipes (the recipe's digest covers both sides)."""
    from PIL import Image

    from steer.cli.main import main

    learn = ["learn", "--model", model_dir, "--positive", *RED, "--negative", *BLUE, "--two-sided", "--steps", "3"]
    assert main([*learn, "--out", str(tmp_path / "slider.safetensors")]) == 0
    SteeringVector.load(tmp_path / "slider.safetensors").opposite.save(tmp_path / "opposite.safetensors")
    common = ["generate", "--model", model_dir, "--prompt", "a sneaker", "--steps", "3", "--seed", "5"]
    assert main([*common, "--direction", str(tmp_path / "slider.safetensors"), "--sweep", "-1,1,3", "--out", str(tmp_path / "s")]) == 0
    assert main([*common, "--direction", str(tmp_path / "opposite.safetensors"), "--scale", "1", "--out", str(tmp_path / "o")]) == 0
    with Image.open(tmp_path / "s" / "seed5_scale-1.png") as minus, Image.open(tmp_path / "o" / "seed5_scale+1.png") as other:
        # one row of a batched strip against a call of its own: equal up to batching's rounding
        assert np.abs(np.asarray(minus, dtype=int) - np.asarray(other, dtype=int)).max() <= 2
    with Image.open(tmp_path / "s" / "seed5_scale+0.png") as zero, Image.open(tmp_path / "s" / "seed5_scale-1.png") as minus:
        assert np.abs(np.asarray(zero, dtype=int) - np.asarray(minus, dtype=int)).mean() > 2  # and -1 moves
    strip = sorted(str(f) for f in (tmp_path / "s").glob("seed5_scale*.png"))
    assert len(strip) == 3 and main(["reproduce", *strip, "--model", model_dir]) == 0


def test_a_batch_sweep_of_a_slider_draws_its_opposite_below_zero(model_dir, tmp_path, one_thread):
    """A jobs file sweeping a slider from -1: the -1 image is what the slider draws at -1 from Python (the opposite),
    and its recipe records the slider's digest (both sides)."""
    import json

    from PIL import Image

    from steer.cli.main import main
    from steer.recipe import read_recipe
    from steer.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    slider = two_sided(pipe) * 20
    path = slider.save(tmp_path / "slider.safetensors")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a sneaker", "seed": 5, "num_inference_steps": STEPS, "name": "slider",
                                "directions": [{"path": str(path), "sweep": [-1, 1, 3]}]}) + "\n")
    assert main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", model_dir, "--device", "cpu", "--no-progress"]) == 0
    written = sorted((tmp_path / "out").glob("slider*.png"))
    assert len(written) == 3
    minus = next(f for f in written if read_recipe(f)["scale"] == -1.0)
    assert read_recipe(minus)["directions"][0]["hash"] == slider.digest()
    def alone(vector, scale):
        image = pipe("a sneaker", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(5), output_type="np",
                     steering=vector, steering_scale=scale, steering_window=tuple(read_recipe(minus)["window"])).images[0]
        return np.round(image * 255).astype(int)

    with Image.open(minus) as image:
        drawn = np.asarray(image, dtype=int)
    assert np.abs(drawn - alone(slider.opposite, 1.0)).max() <= 2
    assert np.abs(drawn - alone(slider.one_sided, -1.0)).max() > 10  # not the direction subtracted
