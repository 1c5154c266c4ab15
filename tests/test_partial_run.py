"""Cutting a run between steps and resuming it (`steer.partial_run`), and the window choice built on it: the two
candidate windows of ``window="auto"`` share the first half of their runs (`steer.calibrate.calibrate_windows`)."""

from __future__ import annotations

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

import steer.calibrate as calibrate_module
from steer.calibrate import WINDOW_CHOICE_GRID, calibrate_windows
from steer.denoisers import CONTEXT_SITE
from steer.engine.run import window_bounds
from steer.partial_run import SolverCarry, draws_noise, partial_pipeline, resumable, run_length
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


def _swapped(make, scheduler: type, **config):
    """``make``'s tiny pipeline with its scheduler swapped for ``scheduler`` (``config`` on top of its own)."""

    def build(seed: int):
        pipe = make(seed=seed)
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config, **config)
        return pipe

    return build


def _sd_dpm(seed: int, order: int = 2):
    return _swapped(tiny_pipeline, DPMSolverMultistepScheduler, solver_order=order)(seed)


FAMILIES = {"sd": tiny_pipeline, "sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline, "sdxl": tiny_sdxl_pipeline, "sdxl-karras": _sdxl_karras,
            "sd-dpm2": _sd_dpm, "sd-dpm3": lambda seed: _sd_dpm(seed, 3), "pixart": tiny_pixart_pipeline,
            "sd-unipc2": _swapped(tiny_pipeline, UniPCMultistepScheduler), "sd-unipc3": _swapped(tiny_pipeline, UniPCMultistepScheduler, solver_order=3),
            "sd-deis": _swapped(tiny_pipeline, DEISMultistepScheduler),
            "sd-euler-a": _swapped(tiny_pipeline, EulerAncestralDiscreteScheduler), "sdxl-euler-a": _swapped(tiny_sdxl_pipeline, EulerAncestralDiscreteScheduler),
            "sd-ddim-eta": tiny_pipeline, "sd-dpm-sde": _swapped(tiny_pipeline, DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++"),
            "sd-pndm": _swapped(tiny_pipeline, PNDMScheduler, skip_prk_steps=True), "sd-pndm-prk": _swapped(tiny_pipeline, PNDMScheduler),
            "sd-lms": _swapped(tiny_pipeline, LMSDiscreteScheduler), "sd-lms-karras": _swapped(tiny_pipeline, LMSDiscreteScheduler, use_karras_sigmas=True),
            "sd-heun": _swapped(tiny_pipeline, HeunDiscreteScheduler), "sd-heun-odd": _swapped(tiny_pipeline, HeunDiscreteScheduler),
            "sd-kdpm2": _swapped(tiny_pipeline, KDPM2DiscreteScheduler), "sd-kdpm2-a": _swapped(tiny_pipeline, KDPM2AncestralDiscreteScheduler),
            "sd-dpm-single": _swapped(tiny_pipeline, DPMSolverSinglestepScheduler),
            "sd-dpm-single3": _swapped(tiny_pipeline, DPMSolverSinglestepScheduler, solver_order=3),
            "sd-ddpm": _swapped(tiny_pipeline, DDPMScheduler)}
MULTISTEP = ("dpm", "unipc", "deis", "pixart", "pndm", "lms")
FAMILY_CALL = {"sd-ddim-eta": {"eta": 0.7}}  # DDIM drawing noise at every step
# odd step counts: Heun's and KDPM2's 2 n - 1 denoiser calls are then cut between the two calls of one step
FAMILY_STEPS = {"sd-heun-odd": 5, "sd-kdpm2-a": 5, "sd-dpm-single3": 7}


# DDIM; flow-matching Euler (Flux: packed latents); Euler discrete, "leading" spacing (the resumed latents must not be
# scaled by the first sigma again) and Karras sigmas with "trailing" spacing; DPM-Solver of order 2 and 3 (its history
# handed on, its last steps' order read from the whole schedule), on SD and on PixArt (whose default it is); UniPC of
# order 2 and 3 (its corrector's last sample and order handed on too) and DEIS; samplers that draw noise at every
# step, their generators' states handed on: Euler ancestral (SD, SDXL), DDIM with eta > 0, DPM-Solver++ SDE; PNDM
# (SD 1.x's default: 7 denoiser calls for 6 steps, cut after 4; with its Runge-Kutta warm-up, 15 calls, cut after 8);
# LMS (its derivatives), DPM-Solver single-step of order 2 and 3, DDPM (its previous timestep read from the whole
# schedule); Heun and KDPM2 (7 calls for 4 steps, cut between steps; Heun's and KDPM2 ancestral's 9 for 5, cut inside
# a step: the half-step handed on, KDPM2 ancestral drawing noise)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_run_cut_after_its_window_and_resumed_equals_the_whole_run(family):
    pipe = FAMILIES[family](seed=0)
    steps = FAMILY_STEPS.get(family, 6 if any(m in family for m in MULTISTEP) else 4)  # order 3 needs 3 steps of history
    cut = window_bounds((0.0, 0.5), run_length(pipe, steps))[1]
    v = random_vector(pipe, [CONTEXT_SITE], seed=1, scale=0.5)
    original = type(pipe.scheduler)
    steer = dict(steering=v, steering_scale=[0.0, 1.0], **FAMILY_CALL.get(family, {}))
    whole_early = _latents(pipe, steps, steering_window=(0.0, 0.5), **steer)
    whole_run = _latents(pipe, steps, steering_window=(0.0, 1.0), **steer)
    schedule = copy.deepcopy(pipe.scheduler.timesteps)  # as the pipeline's own calls left it (PNDM's: None until set)
    carry = SolverCarry()
    head = _latents(partial_pipeline(pipe, 0, cut, carry), steps, steering_window=(0.0, 1.0), **steer)  # the window's steps
    carry.repeat(1, None)
    early = _latents(partial_pipeline(pipe, cut, None, carry), steps, latents=head, **FAMILY_CALL.get(family, {}))  # the rest unsteered
    carry.repeat(1, None)
    late = _latents(partial_pipeline(pipe, cut, None, carry), steps, latents=head, steering_window=(0.0, 1.0), **steer)
    torch.testing.assert_close(early, whole_early, rtol=0, atol=1e-5)
    torch.testing.assert_close(late, whole_run, rtol=0, atol=1e-5)
    assert (whole_early[1] - whole_run[1]).abs().max() > 1e-3, "the two windows differ: the comparison means something"
    assert type(pipe.scheduler) is original, "the pipeline's own scheduler is untouched"
    assert (schedule is None and pipe.scheduler.timesteps is None) or torch.equal(pipe.scheduler.timesteps, schedule), \
        "the partial calls left the pipeline's schedule as it was"


def test_only_exactly_resumable_schedulers_are_cut():
    assert resumable(DDIMScheduler()) and draws_noise(DDIMScheduler(), eta=0.5)  # eta > 0: its generators' states handed on
    assert resumable(FlowMatchEulerDiscreteScheduler())
    assert not resumable(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True))  # its pipelines pass it no generator
    assert resumable(EulerDiscreteScheduler()) and resumable(EulerAncestralDiscreteScheduler())
    assert resumable(DPMSolverMultistepScheduler()) and resumable(DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++"))
    assert resumable(UniPCMultistepScheduler()) and not resumable(UniPCMultistepScheduler(solver_p=DDIMScheduler()))
    assert resumable(PNDMScheduler()) and resumable(LMSDiscreteScheduler()) and resumable(HeunDiscreteScheduler())
    assert resumable(KDPM2AncestralDiscreteScheduler()) and draws_noise(KDPM2AncestralDiscreteScheduler())
    assert resumable(DDPMScheduler()) and draws_noise(DDPMScheduler()) and resumable(DPMSolverSinglestepScheduler())
    kinds = (PNDMScheduler(skip_prk_steps=True), PNDMScheduler(), DDIMScheduler(), HeunDiscreteScheduler(), KDPM2DiscreteScheduler())
    lengths = [run_length(SimpleNamespace(scheduler=kind), 6) for kind in kinds]
    assert lengths == [7, 15, 6, 11, 11]  # denoiser calls in a 6-step run: PNDM's repeat, its Runge-Kutta warm-up; 2 n - 1
    pipe = tiny_pipeline(seed=0)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, solver_p=DDIMScheduler.from_config(pipe.scheduler.config))
    with pytest.raises(ValueError, match="^UniPCMultistepScheduler runs cannot be cut and resumed exactly$"):
        partial_pipeline(pipe, 0, 2)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="^DPMSolverMultistepScheduler keeps a solver history: pass the same SolverCarry to both parts"):
        partial_pipeline(pipe, 0, 2)
    with pytest.raises(RuntimeError, match="^a resumed run has no state from the part before it"):
        _latents(partial_pipeline(pipe, 2, 4, SolverCarry()), 4, latents=torch.zeros(2, 4, 8, 8))
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="^EulerAncestralDiscreteScheduler draws noise at every step: pass the same SolverCarry"):
        partial_pipeline(pipe, 2, 4)


def test_a_noisy_run_resumes_only_with_one_generator_per_image():
    """The noise a resumed ancestral run draws is each image's own generator's: one generator for the whole batch
    cannot be handed on per image, and is refused rather than resumed inexactly."""
    pipe = FAMILIES["sd-euler-a"](seed=0)
    carry = SolverCarry()
    call = dict(num_inference_steps=4, guidance_scale=5.0, output_type="latent")
    with pytest.raises(RuntimeError, match="^a run that draws noise at every step resumes exactly only with one generator per image"):
        partial_pipeline(pipe, 0, 2, carry)(PROMPTS, generator=torch.Generator().manual_seed(0), **call)
    head = partial_pipeline(pipe, 0, 2, carry)(PROMPTS, generator=[torch.Generator().manual_seed(s) for s in range(2)], **call).images
    carry.repeat(1, None)
    with pytest.raises(RuntimeError, match="^a run that draws noise at every step resumes exactly only with one generator per image"):
        partial_pipeline(pipe, 2, 4, carry)(PROMPTS, generator=torch.Generator().manual_seed(0), latents=head, **call)


def _choose(pipe, branched: bool, steps: int = 4, batch_size: int | None = 8, **call):
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
                                                batch_size=batch_size, **call)
    finally:
        calibrate_module.branch_step = original
        handle.remove()
    return chosen, results, rows[0]


# DDIM, Euler discrete; DPM-Solver, UniPC, Euler ancestral and PNDM with their history and generator states handed on
# in uneven calls (the 8 first-part images 3 + 3 + 2 per call, the 16 continuing ones 3 + 3 + 3 + 3 + 3 + 1); DDIM
# with eta > 0 (an option of the learning call); PNDM's 4 steps are 5 denoiser calls, split after 3; Heun's and KDPM2
# ancestral's 7, split after 4 (KDPM2 ancestral drawing noise); LMS's derivatives handed on
@pytest.mark.parametrize(("family", "batch_size"), [("sd", 8), ("sdxl", 8), ("sd-dpm2", 3), ("sd-unipc2", 3), ("sd-euler-a", 3),
                                                    ("sd-ddim-eta", 3), ("sd-pndm", 3), ("sd-heun", 3), ("sd-kdpm2-a", 3),
                                                    ("sd-lms", 3)])
def test_the_window_choice_shares_the_first_half_and_matches_separate_sweeps(family, batch_size):
    pipe = FAMILIES[family](seed=0)
    chosen, shared, rows = _choose(pipe, branched=True, batch_size=batch_size, **FAMILY_CALL.get(family, {}))
    chosen_apart, apart, rows_apart = _choose(pipe, branched=False, **FAMILY_CALL.get(family, {}))
    assert chosen == chosen_apart and [r.grid for r in shared] == [list(WINDOW_CHOICE_GRID)] * 2
    for a, b in zip(shared, apart, strict=True):
        assert a.distances == pytest.approx(b.distances, abs=1e-5) and a.strength == pytest.approx(b.strength, abs=1e-5)
    grid, samples, cfg, calls = len(WINDOW_CHOICE_GRID), 2, 2, {"sd-pndm": 5, "sd-heun": 7, "sd-kdpm2-a": 7}.get(family, 4)
    cut = calls // 2 + calls % 2
    assert all(a.route == b.route and a.branched_at == cut and b.branched_at is None for a, b in zip(shared, apart, strict=True))
    # positives and unsteered open samples whole; the grid over the first half once, then continued twice
    assert rows == shared[chosen].unet_rows == (2 * calls + grid * cut + 2 * grid * (calls - cut)) * samples * cfg  # DDIM: 8 sets, as one window
    assert rows_apart == apart[chosen_apart].unet_rows == (2 + 2 * grid) * calls * samples * cfg
    assert "branched_at" in shared[chosen].to_dict() and "branched_at" not in apart[chosen_apart].to_dict()


def test_schedulers_that_cannot_resume_sample_each_window_whole():
    pipe = tiny_pipeline(seed=0)  # UniPC with a separate predictor: its solver_p's own state is not carried
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, solver_p=DDIMScheduler.from_config(pipe.scheduler.config))
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


def test_the_carry_lays_out_per_image_state_and_refuses_first_part_calls_that_disagree():
    """Per-image rows (model outputs, the corrector's last sample) and generator states are laid out image by image
    for the continuing calls; values the batch shares (orders, the timestep list) must agree between the first part's
    calls."""
    unipc = UniPCMultistepScheduler()

    def record(carry, images: int, first: int, order: int = 2):
        rows = torch.arange(first, first + images, dtype=torch.float32)[:, None]
        unipc.model_outputs, unipc.last_sample = [None, rows], rows + 100
        unipc.lower_order_nums, unipc.this_order, unipc.timestep_list = order, order, [None, torch.tensor([7, 5])]
        carry.save(unipc, images, [torch.Generator().manual_seed(first + i) for i in range(images)])

    carry = SolverCarry()
    record(carry, 2, 0)
    record(carry, 1, 2)  # 3 images in two calls, continued twice, 4 per call: 4 + 2
    carry.repeat(2, 4)
    calls = [carry.take(), carry.take()]
    assert [c["rows"]["model_outputs"][1].flatten().tolist() for c in calls] == [[0, 1, 2, 0], [1, 2]]
    assert calls[1]["rows"]["last_sample"].flatten().tolist() == [101, 102] and calls[1]["rows"]["model_outputs"][0] is None
    assert torch.equal(calls[1]["generators"][1], torch.Generator().manual_seed(2).get_state())
    with pytest.raises(RuntimeError, match="^a resumed run has no state from the part before it"):
        carry.take()
    disagree = SolverCarry()
    record(disagree, 1, 0, order=1)
    record(disagree, 1, 1, order=2)
    with pytest.raises(RuntimeError, match="^the first part's calls reached different solver states"):
        disagree.repeat(1, None)
