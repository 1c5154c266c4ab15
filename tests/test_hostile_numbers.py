"""Hostile numbers: out-of-range scales, directions and command-line values are refused up front with one line, and a
generation that still ends in NaN / infinite pixels raises instead of returning (or writing) a black image.

Before: ``steering_scale=1e30``, ``--scale 1e30`` or a direction with 3e38 entries gave NaN (all-black) PNGs with exit
status 0; ``--steps 0`` raised ZeroDivisionError; ``--steps -3`` wrote an image; ``--num-images -1`` wrote nothing
with exit status 0; ``--sweep=-2,2,100000`` grew to 6 GB; ``steering_layers=[]`` silently steered nothing.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
import pytest
import torch

from steer import NonFiniteOutputError, SteeringVector
from steer.cli.main import main
from steer.testing import assert_one_line_error
from steer.validation import MAX_SCALE, MAX_SWEEP, MAX_VECTOR_ENTRY, check_steering_request

LAYER = "up_blocks.0.resnets.0"


def _vector(value: float = 1.0, channels: int = 64, **meta: Any) -> SteeringVector:
    return SteeringVector({LAYER: torch.full((channels,), value)}, {"name": "v", **meta})


def _call(pipe, **kwargs: Any):
    return pipe("a sneaker", num_inference_steps=2, generator=torch.Generator().manual_seed(0), **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Python API
# ----------------------------------------------------------------------------------------------------------------------
API_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("scale-1e30", {"steering": _vector(), "steering_scale": 1e30}, "out of range"),
    ("scale-minus-1e30", {"steering": _vector(), "steering_scale": -1e30}, "out of range"),
    ("scale-just-above-limit", {"steering": _vector(), "steering_scale": MAX_SCALE * 1.01}, "out of range"),
    ("scale-nan", {"steering": _vector(), "steering_scale": float("nan")}, "finite"),
    ("scale-a-word", {"steering": _vector(), "steering_scale": "abc"}, "steering_scale must be a number"),
    ("scale-list-with-a-word", {"steering": [_vector(), _vector(0.5)], "steering_scale": [1.0, "x"]}, "steering_scale must be a number"),
    ("scale-ragged-rows", {"steering": [_vector(), _vector(0.5)], "steering_scale": [[1.0, 2.0], [3.0]]}, "steering_scale must be a number"),
    ("scale-inf", {"steering": _vector(), "steering_scale": float("inf")}, "finite"),
    ("scale-true", {"steering": _vector(), "steering_scale": True}, "steering_scale must be a number"),  # ran as 1.0
    ("scale-list-of-bools", {"steering": [_vector(), _vector(0.5)], "steering_scale": [True, False]}, "steering_scale must be a number"),
    ("scale-bool-tensor", {"steering": _vector(), "steering_scale": torch.tensor(True)}, "steering_scale must be a number"),
    ("per-vector-scale-1e30", {"steering": [_vector(), _vector(0.5)], "steering_scale": [1.0, 1e30]}, "out of range"),
    ("vector-3e38-entries", {"steering": _vector(3e38)}, "above the limit"),
    ("vector-infinite-entry", {"steering": _vector(float("inf"))}, "NaN or infinite"),
    ("vector-nan-entry", {"steering": _vector(float("nan"))}, "NaN or infinite"),
    ("layers-empty-list", {"steering": _vector(), "steering_layers": []}, "steering_layers is empty"),
    ("layers-empty-tuple", {"steering": _vector(), "steering_layers": ()}, "steering_layers is empty"),
    ("layers-empty-string", {"steering": _vector(), "steering_layers": ""}, "steering_layers is empty"),
    ("layers-blank-string", {"steering": _vector(), "steering_layers": "  "}, "steering_layers is empty"),
    ("layers-an-int", {"steering": _vector(), "steering_layers": 5}, "steering_layers must be None, a layer name"),
    ("layers-list-of-ints", {"steering": _vector(), "steering_layers": [3]}, "steering_layers must be None, a layer name"),
]


@pytest.mark.parametrize(("case", "kwargs", "needle"), API_CASES, ids=[c[0] for c in API_CASES])
def test_out_of_range_steering_is_refused_before_any_compute(tiny_pipe, case, kwargs, needle):
    calls = []
    handle = tiny_pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=needle) as info:
            _call(tiny_pipe, **kwargs)
    finally:
        handle.remove()
    assert "\n" not in str(info.value)
    assert calls == [], "refused before any UNet evaluation"


def test_sweep_rows_with_one_huge_scale_are_refused(tiny_pipe):
    with pytest.raises(ValueError, match="out of range"):
        tiny_pipe(["a sneaker"] * 2, num_inference_steps=2, steering=_vector(), steering_scale=[0.0, 1e30])


def test_empty_layers_are_refused_in_a_steering_block_too(tiny_pipe):
    with tiny_pipe.steering(_vector(), scale=1.0, layers=[]), pytest.raises(ValueError, match="steering_layers is empty"):
        _call(tiny_pipe)


def test_the_delta_must_be_finite_in_the_unets_dtype():
    v = _vector(1e3)
    scales = torch.tensor([[100.0]])
    check_steering_request([v], scales, {}, torch.float32)  # 1e5: fine in float32
    with pytest.raises(ValueError, match="beyond what float16 holds"):
        check_steering_request([v], scales, {}, torch.float16)
    # normalized: each unit-norm bucket (max entry 1/8 here) is scaled by the activation norm the direction records
    n = _vector(1.0, activation_norm={LAYER: 1e3})
    check_steering_request([n], torch.tensor([[1.0]]), {"steering_normalize": True}, torch.float16)  # 125
    with pytest.raises(ValueError, match=LAYER):
        check_steering_request([n], torch.tensor([[1000.0]]), {"steering_normalize": True}, torch.float16)  # 125000


def _nan_unet(pipe):
    """A fault: every UNet output becomes NaN (the hook is removed by the caller)."""

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] * float("nan"), *output[1:])
        output.sample = output.sample * float("nan")
        return output

    return pipe.unet.register_forward_hook(hook)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])  # latents came back NaN silently
@pytest.mark.parametrize("steered", [False, True], ids=["plain", "steered"])
def test_a_nan_image_is_refused_not_returned_black(tiny_pipe, output_type, steered):
    kwargs: dict[str, Any] = {"output_type": output_type}
    if steered:
        kwargs.update(steering=_vector(0.1), steering_scale=1.0, steering_window=(0.0, 1.0))
    handle = _nan_unet(tiny_pipe)
    try:
        with pytest.raises(NonFiniteOutputError, match="NaN or infinite") as info:
            _call(tiny_pipe, **kwargs)
    finally:
        handle.remove()
    assert "\n" not in str(info.value)
    image = _call(tiny_pipe, output_type="np").images  # the pipeline is fine again once the fault is gone
    assert np.isfinite(image).all()


def test_the_largest_allowed_inputs_never_return_a_nan_image(tiny_pipe):
    """At the limits (entries 1e6, scale 1e4) the call either returns finite pixels or raises; never NaN pixels."""
    try:
        images = _call(tiny_pipe, steering=_vector(MAX_VECTOR_ENTRY), steering_scale=MAX_SCALE, steering_window=(0.0, 1.0), output_type="np").images
    except NonFiniteOutputError:
        return
    assert np.isfinite(images).all()


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def _run(argv: list[str], capsys) -> tuple[Any, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    return rc, capsys.readouterr().err




GENERATE_CASES: list[tuple[str, list[str], str]] = [
    ("steps-0", ["--steps", "0"], "--steps: must be between 1 and 1000, got 0"),
    ("steps-negative", ["--steps", "-3"], "--steps: must be between 1 and 1000"),
    ("steps-huge", ["--steps", "1000001"], "--steps: must be between 1 and 1000"),
    ("steps-text", ["--steps", "many"], "--steps: expected a whole number"),
    ("steps-float", ["--steps", "2.5"], "--steps: expected a whole number"),
    ("num-images-negative", ["--num-images", "-1"], "--num-images: must be between 1"),
    ("num-images-0", ["--num-images", "0"], "--num-images: must be between 1"),
    ("sweep-100000", ["--direction", "red_to_blue", "--sweep=-2,2,100000"], f"--sweep count must be an integer from 2 to {MAX_SWEEP}"),
    ("sweep-65", ["--direction", "red_to_blue", f"--sweep=-2,2,{MAX_SWEEP + 1}"], "--sweep count"),
    ("sweep-1", ["--direction", "red_to_blue", "--sweep=-2,2,1"], "--sweep count"),
    ("sweep-fractional", ["--direction", "red_to_blue", "--sweep=-2,2,2.5"], "--sweep count"),
    ("sweep-nan", ["--direction", "red_to_blue", "--sweep=nan,2,3"], "finite"),
    ("sweep-1e30", ["--direction", "red_to_blue", "--sweep=-1e30,1e30,3"], "--sweep scales must be within"),
    ("sweep-two-numbers", ["--direction", "red_to_blue", "--sweep=1,2"], "--sweep needs 3"),
    ("scale-1e30", ["--direction", "red_to_blue", "--scale", "1e30"], "--scale: must be a finite number"),
    ("scale-nan", ["--direction", "red_to_blue", "--scale", "nan"], "--scale: must be a finite number"),
    ("scale-inf", ["--direction", "red_to_blue", "--scale", "inf"], "--scale: must be a finite number"),
    ("scale-minus-1e5", ["--direction", "red_to_blue", "--scale=-1e5"], "--scale: must be a finite number"),
    ("guidance-1e30", ["--guidance", "1e30"], "--guidance: must be a finite number"),
    ("guidance-nan", ["--guidance", "nan"], "--guidance: must be a finite number"),
    ("guidance-negative", ["--guidance", "-1"], "--guidance: must be a finite number"),
    ("height-7", ["--height", "7"], "--height: must be between 8"),
    ("height-12", ["--height", "12"], "--height: must be a multiple of 8"),
    ("width-negative", ["--width", "-8"], "--width: must be between 8"),
    ("width-huge", ["--width", "100000"], "--width: must be between 8"),
    ("seed-negative", ["--seed", "-1"], "--seed: must be between 0"),
    ("seed-2-63", ["--seed", str(2**63)], "--seed: must be between 0"),
    ("window-reversed", ["--direction", "red_to_blue", "--window", "0.9,0.1"], "--window needs 0 <= START < END <= 1"),
    ("window-above-one", ["--direction", "red_to_blue", "--window", "0,2"], "--window needs"),
    ("window-nan", ["--direction", "red_to_blue", "--window", "nan,1"], "finite"),
    ("mode-unknown", ["--direction", "red_to_blue", "--mode", "sideways"], "--mode: invalid choice"),
]


@pytest.mark.parametrize(("case", "args", "needle"), GENERATE_CASES, ids=[c[0] for c in GENERATE_CASES])
def test_generate_refuses_bad_numbers_with_one_line(tmp_path, capsys, case, args, needle):
    out = tmp_path / "out"
    start, rss = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rc, err = _run(["generate", "--prompt", "a sneaker", *args, "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "steer generate: error:", needle)
    assert not out.exists(), "nothing is written for a refused command"
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 * 1024  # KiB: no 6 GB sweep


RUNTIME_CASES: list[tuple[str, list[str], str]] = [
    ("seed-plus-count-overflows", ["--seed", str(2**63 - 1), "--num-images", "2"], "runs past the largest seed"),
    ("device-unknown", ["--device", "banana"], "unknown device 'banana'"),
    ("sweep-without-direction", ["--sweep=-1,1,3"], "--sweep needs a --direction"),
]


@pytest.mark.parametrize(("case", "args", "needle"), RUNTIME_CASES, ids=[c[0] for c in RUNTIME_CASES])
def test_generate_refuses_inconsistent_values_with_one_line(tmp_path, capsys, case, args, needle):
    out = tmp_path / "out"
    rc, err = _run(["generate", "--prompt", "a sneaker", *args, "--out", str(out)], capsys)
    assert_one_line_error(rc, err, "steer generate: error:", needle)
    assert not out.exists() or not any(out.iterdir())


OTHER_CASES: list[tuple[str, list[str], str]] = [
    ("learn-num-samples-0", ["learn", "--positive", "a", "--num-samples", "0", "--out", "x.safetensors"], "--num-samples"),
    ("learn-steps-0", ["learn", "--positive", "a", "--steps", "0", "--out", "x.safetensors"], "--steps"),
    ("learn-batch-size-0", ["learn", "--positive", "a", "--batch-size", "0", "--out", "x.safetensors"], "--batch-size"),
    ("learn-timestep-negative", ["learn", "--positive", "a", "--timestep", "-1", "--out", "x.safetensors"], "--timestep"),
    ("learn-guidance-nan", ["learn", "--positive", "a", "--guidance", "nan", "--out", "x.safetensors"], "--guidance"),
    ("relu-dae-iters-0", ["lab", "relu-dae", "--iters", "0", "--out", "x"], "--iters"),
    ("relu-diffusion-iters-negative", ["lab", "relu-diffusion", "--iters", "-1", "--out", "x"], "--iters"),
    ("relu-dae-threads-0", ["lab", "relu-dae", "--threads", "0", "--out", "x"], "--threads"),
    ("detect-steps-0", ["detect", "--prompts", "p.txt", "--steps", "0", "--out", "r.jsonl"], "--steps"),
    ("detect-guidance-nan", ["detect", "--prompts", "p.txt", "--guidance", "nan", "--out", "r.jsonl"], "--guidance"),
    ("detect-fpr-5", ["detect", "--calibrate", "p.txt", "--fpr", "5"], "--fpr"),
    ("detect-images-per-prompt-0", ["detect", "--prompts", "p.txt", "--num-images-per-prompt", "0", "--out", "r.jsonl"], "--num-images-per-prompt"),
    ("train-steps-0", ["lab", "train", "--steps", "0", "--out", "x"], "--steps"),
    ("train-lr-nan", ["lab", "train", "--lr", "nan", "--out", "x"], "--lr"),
    ("train-lr-0", ["lab", "train", "--lr", "0", "--out", "x"], "--lr"),
    ("train-batch-size-0", ["lab", "train", "--batch-size", "0", "--out", "x"], "--batch-size"),
    ("train-ema-2", ["lab", "train", "--ema", "2", "--out", "x"], "--ema"),
    ("train-max-minutes-negative", ["lab", "train", "--max-minutes", "-5", "--out", "x"], "--max-minutes"),
]


@pytest.mark.parametrize(("case", "argv", "needle"), OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_learn_and_lab_refuse_bad_numbers_with_one_line(tmp_path, capsys, monkeypatch, case, argv, needle):
    monkeypatch.chdir(tmp_path)
    rc, err = _run(argv, capsys)
    assert_one_line_error(rc, err, needle)
    assert list(tmp_path.iterdir()) == []


def test_cli_never_writes_a_nan_png(tiny_pipe, tmp_path, capsys, monkeypatch):
    """A generation that ends in NaN (here: a faulty UNet) is exit status 2 with one line, and no PNG."""
    import steer.cli.loading

    monkeypatch.setattr(steer.cli.loading, "load_pipeline", lambda *a, **k: tiny_pipe)
    out = tmp_path / "out"
    handle = _nan_unet(tiny_pipe)
    try:
        rc, err = _run(["generate", "--prompt", "a sneaker", "--steps", "2", "--out", str(out)], capsys)
    finally:
        handle.remove()
    assert_one_line_error(rc, err, "steer generate: error:", "NaN or infinite")
    assert not list(out.glob("*.png"))


def test_generate_still_works_at_ordinary_values(tiny_pipe, tmp_path, capsys, monkeypatch):
    import steer.cli.loading

    monkeypatch.setattr(steer.cli.loading, "load_pipeline", lambda *a, **k: tiny_pipe)
    out = tmp_path / "out"
    rc, _ = _run(["generate", "--prompt", "a sneaker", "--steps", "1", "--num-images", "2", "--seed", "3", "--out", str(out)], capsys)
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["seed3.png", "seed4.png"]
    from PIL import Image

    with Image.open(out / "seed3.png") as image:
        assert np.asarray(image).max() > 0, "not a black image"


def test_a_step_count_past_the_samplers_training_timesteps_is_one_line(tiny_pipe):
    """DDIM with "leading" spacing and ``steps_offset=1`` (SD's own config) places step 1000 of 1000 at timestep
    1000 of 0-999: diffusers failed with an IndexError inside the first step, steered or not."""
    from steer.samplers import check_step_count

    for kwargs in ({}, {"steering": _vector(), "steering_scale": 1.0}):
        with pytest.raises(ValueError, match=r"num_inference_steps=1000 does not fit this sampler \(DDIMScheduler, leading "
                                             r"spacing, steps_offset 1\).*use at most 999") as info:
            tiny_pipe("a sneaker", num_inference_steps=1000, **kwargs)
        assert "\n" not in str(info.value)
    check_step_count(tiny_pipe.scheduler, 999)  # the most it can place: no error
    # schedulers that interpolate sigmas run every count (Euler with leading spacing at 1000; flow matching, whose
    # run starts at exactly 1000.0, was refused from 500 steps on)
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    check_step_count(tiny_pipe.with_sampler("euler").scheduler, 1000)
    check_step_count(EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1), 1000)
    for steps in (500, 1000):
        check_step_count(FlowMatchEulerDiscreteScheduler(), steps)
