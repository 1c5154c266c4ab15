"""Flux.1 (`SteeringFluxPipeline` on tiny random-weight components, CPU, fp32): the engine's guarantees, including
true CFG, where the conditional and unconditional passes are separate transformer calls of one step."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

import steer
from steer import ModelMismatchError, NonFiniteOutputError, SteeringVector
from steer.denoisers import CONTEXT_SITE, LayerError, layer_channels
from steer.engine import ActivationRecorder, window_bounds
from steer.extract import record_steps
from steer.pipelines.flux import SteeringFluxPipeline
from steer.testing import no_hooks_left, random_vector, run_in_threads, step_barrier
from steer.testing.flux import tiny_flux_pipeline
from steer.vectors import unet_fingerprint

STEPS = 4
PROMPT = "a red sneaker"
SIZE = dict(height=16, width=16)
TRUE_CFG = dict(negative_prompt="a blurry photo", true_cfg_scale=2.0)
# (sign on the conditional call, sign on the unconditional call) of each steering_branch under true CFG
BRANCH_SIGNS = {"cond": (1, 0), "uncond": (0, 1), "both": (1, 1), "split": (1, -1)}


@pytest.fixture(scope="module")
def pipe():
    return tiny_flux_pipeline(seed=0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "np")
    return pipe(PROMPT, generator=gen(seed), **SIZE, **kw).images


class CallObserver:
    """The output of one site's module at every transformer call, before and after the steering hooks (the second
    hook is registered at the first transformer call, i.e. after the session's hooks). ``index`` picks the image
    tokens of a tuple output; ``calls`` holds (before, after) per call."""

    def __init__(self, pipe, layer, index=None):
        self.module = dict(pipe.transformer.named_modules())[layer]
        self.index = index
        self.raw, self.steered, self.handles = [], [], []
        self.handles.append(self.module.register_forward_hook(lambda m, a, o: self.raw.append(self._pick(o))))
        self.handles.append(pipe.transformer.register_forward_pre_hook(self._arm))

    def _pick(self, out):
        if self.index is not None:
            return out[self.index].detach().clone()
        return tuple(o.detach().clone() for o in out) if isinstance(out, tuple) else out.detach().clone()

    def _arm(self, _m, _a):
        if len(self.handles) == 2:
            self.handles.append(self.module.register_forward_hook(lambda m, a, o: self.steered.append(self._pick(o))))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    @property
    def calls(self):
        assert len(self.raw) == len(self.steered)
        return list(zip(self.raw, self.steered, strict=True))


# -- identity, sites, signature, state -------------------------------------------------------------------------------
def test_scale_zero_and_no_vector_are_bit_identical_to_flux_pipeline(pipe):
    v = random_vector(pipe, ["transformer_blocks.1", CONTEXT_SITE], scale=3.0)
    for extra in ({}, TRUE_CFG):
        parent = FluxPipeline.__call__(pipe, PROMPT, generator=gen(0), num_inference_steps=STEPS, output_type="np", **SIZE, **extra).images
        assert np.array_equal(call(pipe, **extra), parent)
        assert np.array_equal(call(pipe, steering=v, steering_scale=0.0, **extra), parent)
        assert np.array_equal(call(pipe, steering=[v, v], steering_scale=[0.0, 0.0], **extra), parent)
        assert not np.array_equal(call(pipe, steering=v, steering_scale=1.0, steering_window=(0, 1), **extra), parent)


def test_sites_signature_and_state(pipe):
    sites = steer.list_layers(pipe.transformer, ("blocks", "attn", "context"))
    assert sites[0] == CONTEXT_SITE
    for name in ("transformer_blocks.0", "transformer_blocks.1.attn", "single_transformer_blocks.1", "single_transformer_blocks.0.attn"):
        assert name in sites
    assert steer.list_layers(pipe.transformer) == ["transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0", "single_transformer_blocks.1"]
    assert steer.default_layers(pipe.transformer) == ["transformer_blocks.1"]  # the middle third of 4 blocks
    assert steer.list_layers(pipe.transformer, ["attn2"]) == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert layer_channels(pipe.transformer, [CONTEXT_SITE, "single_transformer_blocks.0.attn"]) == {CONTEXT_SITE: 32, "single_transformer_blocks.0.attn": 32}
    with pytest.raises(LayerError, match="single_transformer_blocks"):
        steer.resolve_layers(pipe.transformer, "single_transformer_block.0")

    params = inspect.signature(pipe.__call__).parameters
    parent = inspect.signature(FluxPipeline.__call__).parameters
    assert [p for p in parent if p != "self"] == list(params)[: len(parent) - 1]
    for name in ("steering", "steering_scale", "steering_window", "steering_branch", "steering_layers"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY

    v = random_vector(pipe, ["transformer_blocks.1"])
    FluxPipeline.__call__(pipe, PROMPT, generator=gen(0), num_inference_steps=2, guidance_scale=1.5, output_type="latent", **SIZE)
    call(pipe, steering=v, num_inference_steps=3, guidance_scale=5.0, output_type="latent")
    assert (pipe.guidance_scale, pipe.num_timesteps, pipe.interrupt, pipe.current_timestep) == (5.0, 3, False, None)


def test_steering_pipeline_and_from_pipe_share_the_components(pipe):
    plain = FluxPipeline(**pipe.components)
    steered = steer.steering_pipeline(plain)
    steered.set_progress_bar_config(disable=True)
    assert type(steered) is SteeringFluxPipeline and steered.transformer is pipe.transformer
    assert type(SteeringFluxPipeline.from_pipe(plain)) is SteeringFluxPipeline
    v = random_vector(pipe, ["transformer_blocks.0"])
    assert np.array_equal(call(steered, steering=v, steering_scale=0.5), call(pipe, steering=v, steering_scale=0.5))


# -- exact deltas --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer,index", [("transformer_blocks.1", 1), ("single_transformer_blocks.0", 1)])
def test_block_moves_by_scale_times_v_on_image_tokens_in_window_only(pipe, layer, index):
    v = random_vector(pipe, [layer], seed=3)
    scale, window = 0.7, (0.5, 1.0)
    with CallObserver(pipe, layer) as obs:  # whole tuple: (text stream, image stream)
        call(pipe, steering=v, steering_scale=scale, steering_window=window, steering_branch="uncond")  # no CFG: one branch
    first, stop = window_bounds(window, STEPS)
    assert (first, stop) == (2, 4) and len(obs.calls) == STEPS
    delta = (scale * v.directions[layer])[None, None, :]
    for step, (raw, steered) in enumerate(obs.calls):
        assert torch.equal(raw[1 - index], steered[1 - index])  # the text stream is never touched
        if first <= step < stop:
            torch.testing.assert_close(steered[index] - raw[index], delta.expand_as(raw[index]), rtol=0, atol=1e-5)
        else:
            assert torch.equal(steered[index], raw[index]), f"step {step} is outside the window but moved"


def test_single_stream_attention_site_steers_only_the_image_tokens(pipe):
    layer = "single_transformer_blocks.1.attn"
    v = random_vector(pipe, [layer], seed=4)
    with CallObserver(pipe, layer) as obs:
        call(pipe, steering=v, steering_scale=0.5, steering_window=(0, 1), max_sequence_length=8)
    image_tokens = (SIZE["height"] // 4) * (SIZE["width"] // 4)
    for raw, steered in obs.calls:
        assert raw.shape[1] == 8 + image_tokens
        assert torch.equal(raw[:, :8], steered[:, :8])
        torch.testing.assert_close(steered[:, 8:] - raw[:, 8:], (0.5 * v.directions[layer]).expand(1, image_tokens, -1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("branch", list(BRANCH_SIGNS))
def test_true_cfg_steers_the_window_steps_and_the_branch_calls_only(pipe, branch):
    """True CFG: 2 transformer calls per step (cond, then uncond); a (0.5, 1.0) window over 4 steps is steps 2 and 3,
    i.e. calls 4..7, and the branch picks the calls (split: + on cond, - on uncond)."""
    layer = "transformer_blocks.0"
    v = random_vector(pipe, [layer], seed=5)
    scale = 0.6
    with CallObserver(pipe, layer, index=1) as obs:
        call(pipe, steering=v, steering_scale=scale, steering_window=(0.5, 1.0), steering_branch=branch, **TRUE_CFG)
    assert len(obs.calls) == 2 * STEPS
    delta = (scale * v.directions[layer])[None, None, :]
    applied = []
    for i, (raw, steered) in enumerate(obs.calls):
        step, which = divmod(i, 2)
        sign = BRANCH_SIGNS[branch][which] if step >= 2 else 0
        if sign:
            torch.testing.assert_close(steered - raw, sign * delta.expand_as(raw), rtol=0, atol=1e-5)
            applied.append((step, ("cond", "uncond")[which], sign))
        else:
            assert torch.equal(steered, raw), f"call {i} (step {step}) moved"
    expected = [(s, b, BRANCH_SIGNS[branch][k]) for s in (2, 3) for k, b in enumerate(("cond", "uncond")) if BRANCH_SIGNS[branch][k]]
    assert applied == expected


def test_true_cfg_context_site_split_and_per_row_scales(pipe):
    """The text-token site (the default preset's) under true CFG: + on the conditional call's tokens, - on the
    unconditional one's, per batch row; rows of one call equal separate calls."""
    v = random_vector(pipe, [CONTEXT_SITE], seed=6)
    seen = []
    handle = pipe.transformer.context_embedder.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        FluxPipeline.__call__(pipe, [PROMPT] * 2, generator=[gen(0), gen(1)], num_inference_steps=2, output_type="latent", **SIZE, **TRUE_CFG)
        raw, seen[:] = list(seen), []
        pipe([PROMPT] * 2, generator=[gen(0), gen(1)], num_inference_steps=2, output_type="latent", **SIZE, **TRUE_CFG,
             steering=v, steering_scale=[0.0, 2.0], steering_window=(0, 1), steering_branch="split")
    finally:
        handle.remove()
    d = 2.0 * v.directions[CONTEXT_SITE]
    assert len(seen) == 4
    assert [len(r) for r in raw] == [2, 1, 2, 1]  # diffusers encodes one string negative prompt once (broadcast)
    for i, (r, s) in enumerate(zip(raw, seen, strict=True)):
        sign = 1 if i % 2 == 0 else -1
        r = r.expand_as(s)  # steering gives the broadcast negative tokens one row per image (each its own scale)
        assert torch.equal(s[0], r[0])  # row 0 has scale 0
        torch.testing.assert_close(s[1] - r[1], sign * d.expand_as(r[1]), rtol=0, atol=1e-5)
    rows = pipe([PROMPT] * 2, generator=[gen(0), gen(1)], num_inference_steps=STEPS, output_type="np", **SIZE, **TRUE_CFG,
                steering=v, steering_scale=[-1.0, 1.5], steering_branch="split").images
    for i, s in enumerate([-1.0, 1.5]):
        alone = call(pipe, seed=i, steering=v, steering_scale=s, steering_branch="split", **TRUE_CFG)
        np.testing.assert_allclose(rows[i], alone[0], atol=2e-5)


def test_true_cfg_removal_acts_on_the_conditional_call_whatever_the_additive_branch(pipe):
    """steering_negative="remove" takes from the conditional call's tokens only, also when the additive part is
    steered on the unconditional call (sequential CFG: the branch of a call decides, not a batch half)."""
    v = random_vector(pipe, [CONTEXT_SITE], seed=6)
    seen = []
    handle = pipe.transformer.context_embedder.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        FluxPipeline.__call__(pipe, PROMPT, generator=gen(0), num_inference_steps=2, output_type="latent", **SIZE, **TRUE_CFG)
        raw, seen[:] = list(seen), []
        v.metadata["reference_level"] = {CONTEXT_SITE: [-1.0] * raw[0].shape[1]}  # every token is above it
        pipe(PROMPT, generator=gen(0), num_inference_steps=2, output_type="latent", **SIZE, **TRUE_CFG, steering=v,
             steering_scale=-0.5, steering_window=(0, 1), steering_branch="uncond", steering_negative="remove")
    finally:
        handle.remove()
    assert len(seen) == len(raw) == 4
    for i, (r, s) in enumerate(zip(raw, seen, strict=True)):
        moved = not torch.equal(r, s)
        assert moved == (i % 2 == 0), f"call {i}: the conditional calls (even) move, the unconditional ones do not"


def test_text_directions_learn_and_remove_at_the_calls_max_sequence_length(pipe):
    """FLUX.1-schnell runs at 256 T5 tokens: learn_direction read the text tokens at the default 512 whatever the
    call's ``max_sequence_length``, and steering_negative="remove" failed ("expects (batch, 512 tokens...") at any
    other length, even for a direction learned at that length."""
    from steer.engine.steering import levels_for_length

    kw = dict(calibrate=False, progress=False)  # uncalibrated: nothing sampled, so no size
    red = pipe.learn_direction(["a red bag", "a red hat"], ["a bag", "a hat"], max_sequence_length=16, **kw)
    blue = pipe.learn_direction(["a blue bag", "a blue hat"], ["a bag", "a hat"], max_sequence_length=16, **kw)
    assert len(red.metadata["reference_level"][CONTEXT_SITE]) == 16
    at_default = pipe.learn_direction(["a red bag", "a red hat"], ["a bag", "a hat"], **kw)
    assert len(at_default.metadata["reference_level"][CONTEXT_SITE]) == 512
    assert not torch.allclose(red.directions[CONTEXT_SITE], at_default.directions[CONTEXT_SITE])  # padding counted
    both = dict(steering=[blue, red], steering_scale=[1.0, -1.0], steering_window=(0, 1))
    for length in (8, 16, 24):  # shorter, the same and longer than learned: the padding level is cut or repeated
        added = call(pipe, max_sequence_length=length, **both)
        removed = call(pipe, max_sequence_length=length, steering_negative="remove", **both)
        assert np.isfinite(removed).all() and not np.array_equal(added, removed)
    assert no_hooks_left(pipe.transformer)
    levels = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    assert torch.equal(levels_for_length(levels, 2), levels[:, :2])
    assert torch.equal(levels_for_length(levels, 5), torch.tensor([[0.1, 0.2, 0.3, 0.3, 0.3], [1.0, 2.0, 3.0, 3.0, 3.0]]))


def test_recording_keeps_only_the_conditional_calls_of_true_cfg(pipe):
    layer = "transformer_blocks.1"
    with CallObserver(pipe, layer, index=1) as obs:
        steps, norms = record_steps(pipe, [PROMPT], [0], [layer], num_inference_steps=STEPS, **SIZE, **TRUE_CFG)
    cond_calls = [raw for raw, _ in obs.calls][0::2]
    assert sorted(steps[layer]) == list(range(STEPS))
    for k in range(STEPS):
        torch.testing.assert_close(steps[layer][k], cond_calls[k].mean(1), rtol=0, atol=1e-6)
    # the unconditional branch, on a bare recorder: the second call of every step
    call_pipe = pipe._call_copy()
    recorder = ActivationRecorder(pipe.transformer, [layer], cfg=call_pipe.steering_cfg, branch="uncond")
    with recorder, CallObserver(pipe, layer, index=1) as obs:
        FluxPipeline.__call__(call_pipe, PROMPT, generator=gen(0), num_inference_steps=STEPS, output_type="latent", **SIZE, **TRUE_CFG)
    uncond = recorder.by_step(layer)
    assert sorted(uncond) == list(range(STEPS))
    for k in range(STEPS):
        torch.testing.assert_close(uncond[k], obs.calls[2 * k + 1][0].mean(1), rtol=0, atol=1e-6)
    assert no_hooks_left(pipe.transformer)


# -- exit paths, threads, errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_hooks_removed_on_every_exit_path(pipe, exc):
    v = random_vector(pipe, ["single_transformer_blocks.0.attn", CONTEXT_SITE])
    call(pipe, steering=v, **TRUE_CFG)
    assert no_hooks_left(pipe.transformer)

    def boom(p, i, t, kw):
        raise exc("stop")

    with pytest.raises(exc):
        call(pipe, steering=v, callback_on_step_end=boom, **TRUE_CFG)
    assert no_hooks_left(pipe.transformer)
    with pytest.raises(exc), pipe.steering(v, 1.0):
        call(pipe, callback_on_step_end=boom)
    assert no_hooks_left(pipe.transformer)


def test_two_threads_one_steered_one_plain(pipe):
    v = random_vector(pipe, ["transformer_blocks.0", CONTEXT_SITE], seed=2, scale=2.0)
    settings = {"steered": dict(steering=v, steering_scale=1.5, steering_window=(0, 1), **TRUE_CFG), "plain": dict(**TRUE_CFG)}
    alone = {k: call(pipe, **kw) for k, kw in settings.items()}
    assert not np.array_equal(alone["steered"], alone["plain"])
    sync = step_barrier(2)  # the two denoising loops interleave step by step
    together = run_in_threads(lambda k: call(pipe, callback_on_step_end=sync, **settings[k]), settings)
    for k in settings:
        assert np.array_equal(together[k], alone[k]), k
    assert no_hooks_left(pipe.transformer)


def test_non_finite_image_raises_instead_of_a_black_image(pipe):
    def poison(p, i, t, kw):
        return {"latents": kw["latents"] * float("nan")}

    with pytest.raises(NonFiniteOutputError, match="NaN"):
        call(pipe, callback_on_step_end=poison)
    v = random_vector(pipe, ["transformer_blocks.0"])
    with pytest.raises(NonFiniteOutputError, match="NaN"):
        call(pipe, steering=v, callback_on_step_end=poison, output_type="pil")


# -- learning ---------------------------------------------------------------------------------------------------------
def test_learn_then_steer_and_refuse_other_families(pipe, tmp_path):
    positive, negative = ["a blue sneaker", "a blue bag"], ["a red sneaker", "a green bag"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the calibration may not find a minimum
        v = pipe.learn_direction(positive, negative, num_inference_steps=3, calibration_samples=2, seed=0, progress=False, **SIZE)
    assert v.layers == [CONTEXT_SITE] and v.metadata["recommended"]["branch"] == "cond"
    assert v.metadata["model"]["unet_class"] == "FluxTransformer2DModel"
    plain = call(pipe, seed=1)
    steered = call(pipe, seed=1, steering=v)
    assert np.abs(steered - plain).max() > 1e-3
    assert np.array_equal(call(pipe, seed=1, steering=v, steering_scale=0.0), plain)
    # under true CFG too (split: + on the conditional call, - on the unconditional one)
    assert not np.array_equal(call(pipe, seed=1, steering=v, **TRUE_CFG), call(pipe, seed=1, **TRUE_CFG))

    path = tmp_path / "blue.safetensors"
    v.save(path)
    loaded = SteeringVector.load(path)
    assert np.array_equal(call(pipe, seed=1, steering=loaded), steered)

    from steer.testing import tiny_pipeline

    sd = tiny_pipeline(seed=0)  # its text tokens have 32 channels too: only the fingerprint tells them apart
    with pytest.raises(ModelMismatchError, match="FluxTransformer2DModel"):
        sd("a sneaker", num_inference_steps=2, steering=loaded, output_type="np")
    sd_vector = SteeringVector({CONTEXT_SITE: torch.randn(32)}, {"name": "sd", "model": unet_fingerprint(sd.unet)})
    with pytest.raises(ModelMismatchError, match="UNet2DConditionModel"):
        call(pipe, steering=sd_vector)
    with pytest.raises(LayerError, match="up_blocks.0.resnets.0"):
        call(pipe, steering=SteeringVector({"up_blocks.0.resnets.0": torch.randn(64)}, {"name": "unet-layer"}))


def test_casteer_preset_learns_per_step_joint_attention_directions(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = pipe.learn_direction(["a blue sneaker"], ["a red sneaker"], preset="casteer", num_samples=2, step_buckets=2,
                                 num_inference_steps=4, calibrate=False, progress=False, **SIZE)
    assert v.layers == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]
    assert tuple(v.directions["transformer_blocks.0.attn"].shape) == (2, 32)
    assert not np.array_equal(call(pipe, steering=v, steering_scale=2.0), call(pipe))


def test_compiled_transformer_takes_per_row_scales():
    """`compile_unet` on Flux: the persistent sites read the batch from the ``hidden_states`` keyword (transformers are
    called with keywords only), so per-row scales give each row what a separate uncompiled call gives."""
    plain = tiny_flux_pipeline(seed=0)
    compiled = tiny_flux_pipeline(seed=0)
    layer = "single_transformer_blocks.0"
    v = random_vector(plain, [layer], seed=4, scale=3.0)
    compiled.compile_unet(layers=[layer], backend="eager")
    rows = compiled([PROMPT, PROMPT], generator=[gen(0), gen(0)], num_inference_steps=STEPS, output_type="np",
                    steering=v, steering_scale=[0.0, 2.0], steering_window=(0.0, 1.0), **SIZE).images
    for i, scale in enumerate((0.0, 2.0)):
        alone = call(plain, steering=v, steering_scale=scale, steering_window=(0.0, 1.0))
        assert np.allclose(rows[i], alone[0], atol=1e-5), i
    assert not np.allclose(rows[0], rows[1], atol=1e-3)
