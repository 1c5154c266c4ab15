"""Cutting a run between steps and resuming it (`steer.partial_run`), and the window choice built on it: the two
candidate windows of ``window="auto"`` share the first half of their runs (`steer.calibrate.calibrate_windows`)."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

import steer.calibrate as calibrate_module
from steer.calibrate import WINDOW_CHOICE_GRID, calibrate_windows
from steer.denoisers import CONTEXT_SITE
from steer.partial_run import SolverCarry, partial_pipeline, resumable
from steer.testing import random_vector, tiny_pipeline
from steer.testing.flux import tiny_flux_pipeline
from steer.testing.pixart import TINY_CALL, tiny_pixart_pipeline
from steer.testing.sd3 import tiny_sd3_pipeline
from steer.testing.sdxl import tiny_sdxl_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

PROMPTS = ["a blue sneaker", "a red bag"]


def _latents(pipe, steps: int, **call):
    gens = [torch.Generator().manual_seed(s) for s in range(len(PROMPTS))]
    family = TINY_CALL if "Pix" in type(pipe).__name__ else {}  # the tiny PixArt's size is off its resolution bins
    return pipe(PROMPTS, generator=gens, num_inference_steps=steps, guidance_scale=5.0, output_type="latent", **family, **call).images


def _sdxl_karras(seed: int):
    pipe = tiny_sdxl_pipeline(seed=seed)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True, timestep_spacing="trailing")
    return pipe


def _sd_dpm(seed: int, order: int = 2):
    pipe = tiny_pipeline(seed=seed)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, solver_order=order)
    return pipe


FAMILIES = {"sd": tiny_pipeline, "sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline, "sdxl": tiny_sdxl_pipeline, "sdxl-karras": _sdxl_karras,
            "sd-dpm2": _sd_dpm, "sd-dpm3": lambda seed: _sd_dpm(seed, 3), "pixart": tiny_pixart_pipeline}


# DDIM; flow-matching Euler (Flux: packed latents); Euler discrete, "leading" spacing (the resumed latents must not be
# scaled by the first sigma again) and Karras sigmas with "trailing" spacing; DPM-Solver of order 2 and 3 (its history
# handed on, its last steps' order read from the whole schedule), on SD and on PixArt (whose default it is)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_run_cut_after_its_window_and_resumed_equals_the_whole_run(family):
    pipe = FAMILIES[family](seed=0)
    steps, cut = (6, 3) if "dpm" in family or family == "pixart" else (4, 2)  # order 3 needs 3 steps of history
    v = random_vector(pipe, [CONTEXT_SITE], seed=1, scale=0.5)
    schedule = pipe.scheduler.timesteps.clone()
    original = type(pipe.scheduler)
    steer = dict(steering=v, steering_scale=[0.0, 1.0])
    whole_early = _latents(pipe, steps, steering_window=(0.0, 0.5), **steer)
    whole_run = _latents(pipe, steps, steering_window=(0.0, 1.0), **steer)
    carry = SolverCarry()
    head = _latents(partial_pipeline(pipe, 0, cut, carry), steps, steering_window=(0.0, 1.0), **steer)  # the window's steps
    carry.repeat(1, None)
    early = _latents(partial_pipeline(pipe, cut, steps, carry), steps, latents=head)  # the rest unsteered
    carry.repeat(1, None)
    late = _latents(partial_pipeline(pipe, cut, steps, carry), steps, latents=head, steering_window=(0.0, 1.0), **steer)
    torch.testing.assert_close(early, whole_early, rtol=0, atol=1e-5)
    torch.testing.assert_close(late, whole_run, rtol=0, atol=1e-5)
    assert (whole_early[1] - whole_run[1]).abs().max() > 1e-3, "the two windows differ: the comparison means something"
    assert type(pipe.scheduler) is original, "the pipeline's own scheduler is untouched"
    assert torch.equal(pipe.scheduler.timesteps, schedule), "the partial calls left the pipeline's schedule as it was"


def test_only_exactly_resumable_schedulers_are_cut():
    ddim = DDIMScheduler()
    assert resumable(ddim) and resumable(ddim, eta=0.0) and not resumable(ddim, eta=0.5)  # eta > 0 draws noise each step
    assert resumable(FlowMatchEulerDiscreteScheduler())
    assert not resumable(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True))
    assert resumable(EulerDiscreteScheduler())  # no churn noise in the pipelines' calls
    assert resumable(DPMSolverMultistepScheduler()) and not resumable(DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"))
    assert not resumable(EulerAncestralDiscreteScheduler()) and not resumable(UniPCMultistepScheduler())  # noise; a corrector's history
    pipe = tiny_pipeline(seed=0)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="^UniPCMultistepScheduler runs cannot be cut and resumed exactly$"):
        partial_pipeline(pipe, 0, 2)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="^DPMSolverMultistepScheduler keeps a solver history: pass the same SolverCarry to both parts"):
        partial_pipeline(pipe, 0, 2)
    with pytest.raises(RuntimeError, match="^a resumed multistep run has no solver history"):
        _latents(partial_pipeline(pipe, 2, 4, SolverCarry()), 4, latents=torch.zeros(2, 4, 8, 8))


def _choose(pipe, branched: bool, steps: int = 4, batch_size: int | None = 8):
    v = random_vector(pipe, [CONTEXT_SITE], seed=1, scale=1.0)
    v.metadata["recommended"] = {"branch": "split", "mode": "token", "preserve_norm": True, "window": [0.0, 0.5]}
    rows = [0]
    handle = pipe.unet.register_forward_pre_hook(lambda m, a: rows.__setitem__(0, rows[0] + a[0].shape[0]))
    original = calibrate_module.branch_step
    if not branched:
        calibrate_module.branch_step = lambda *a, **k: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: the calibration may not converge
            chosen, results = calibrate_windows(pipe, v, ["a blue sneaker", "a blue bag"], ["a sneaker", "a bag"], [(0.0, 0.5), (0.0, 1.0)],
                                                num_samples=2, num_inference_steps=steps, guidance_scale=5.0, choose_route=True,
                                                batch_size=batch_size)
    finally:
        calibrate_module.branch_step = original
        handle.remove()
    return chosen, results, rows[0]


# DDIM, Euler discrete; DPM-Solver with its history handed on in uneven calls (the 8 first-part images 3 + 3 + 2 per
# call, the 16 continuing ones 3 + 3 + 3 + 3 + 3 + 1)
@pytest.mark.parametrize(("family", "batch_size"), [("sd", 8), ("sdxl", 8), ("sd-dpm2", 3)])
def test_the_window_choice_shares_the_first_half_and_matches_separate_sweeps(family, batch_size):
    pipe = FAMILIES[family](seed=0)
    chosen, shared, rows = _choose(pipe, branched=True, batch_size=batch_size)
    chosen_apart, apart, rows_apart = _choose(pipe, branched=False)
    assert chosen == chosen_apart and [r.grid for r in shared] == [list(WINDOW_CHOICE_GRID)] * 2
    for a, b in zip(shared, apart, strict=True):
        assert a.distances == pytest.approx(b.distances, abs=1e-5) and a.strength == pytest.approx(b.strength, abs=1e-5)
        assert a.route == b.route and a.branched_at == 2 and b.branched_at is None
    grid, samples, cfg, steps = len(WINDOW_CHOICE_GRID), 2, 2, 4
    # positives and unsteered open samples whole; the grid over the first half once, then continued twice
    assert rows == shared[chosen].unet_rows == (2 * steps + grid * 2 + 2 * grid * 2) * samples * cfg  # 8 sets: as one window
    assert rows_apart == apart[chosen_apart].unet_rows == (2 + 2 * grid) * steps * samples * cfg
    assert "branched_at" in shared[chosen].to_dict() and "branched_at" not in apart[chosen_apart].to_dict()


def test_schedulers_that_cannot_resume_sample_each_window_whole():
    pipe = tiny_pipeline(seed=0)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    chosen, results, rows = _choose(pipe, branched=True)
    assert all(r.branched_at is None for r in results)
    assert rows == results[chosen].unet_rows == (2 + 2 * len(WINDOW_CHOICE_GRID)) * 4 * 2 * 2


def test_sample_latents_splits_per_image_options_with_the_prompts_and_refuses_misfits(tiny_pipe):
    """``batch_size`` splits the prompts, seeds, per-image scales and starting latents alike: the same latents as one
    call (each image has its own seed); options that do not hold one entry per image are a one-line error."""
    from steer.calibrate import sample_latents

    v = random_vector(tiny_pipe, [CONTEXT_SITE], seed=1, scale=0.5)
    prompts, seeds = ["a blue sneaker", "a red bag", "a bag"], [0, 1, 2]
    kw = dict(num_inference_steps=2, guidance_scale=5.0, steering=v, steering_scale=[0.0, 0.5, 1.0])
    one = sample_latents(tiny_pipe, prompts, seeds, flat=False, raw=True, **kw)
    split = sample_latents(tiny_pipe, prompts, seeds, flat=False, raw=True, batch_size=2, **kw)
    torch.testing.assert_close(split, one, rtol=1e-5, atol=1e-5)
    resumed = [sample_latents(tiny_pipe, prompts, seeds, batch_size=size, latents=one, **kw) for size in (None, 1)]
    torch.testing.assert_close(resumed[1], resumed[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"^sample_latents: 2 seeds for 3 prompts$"):
        sample_latents(tiny_pipe, prompts, seeds[:2], **kw)
    with pytest.raises(ValueError, match=r"^sample_latents: steering_scale must hold one entry per image \(3\) to be split into batches, got 2$"):
        sample_latents(tiny_pipe, prompts, seeds, batch_size=2, **{**kw, "steering_scale": [0.5, 1.0]})
