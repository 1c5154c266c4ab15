"""PixArt-Sigma family: `SteeringPixArtSigmaPipeline` on a tiny random-weight pipeline (CPU, fp32)."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch
from diffusers import PixArtSigmaPipeline

from steer import ModelMismatchError, NonFiniteOutputError, SteeringVector, steering_pipeline, testing
from steer.config import STEERING_DEFAULTS
from steer.denoisers import (
    CONTEXT_SITE,
    LayerError,
    adapter_for,
    default_layers,
    layer_channels,
    list_layers,
    resolve_layers,
)
from steer.denoisers.pixart import PixArtAdapter
from steer.engine import window_bounds
from steer.pipelines.pixart import SteeringPixArtSigmaPipeline
from steer.testing import no_hooks_left, run_in_threads, step_barrier
from steer.testing.pixart import TINY_CALL, tiny_pixart_components, tiny_pixart_pipeline
from steer.vectors import unet_fingerprint

STEPS = 4
PROMPT = "a red sneaker"
BLOCKS = ["transformer_blocks.0", "transformer_blocks.1", "transformer_blocks.2"]


@pytest.fixture(scope="module")
def pipe() -> SteeringPixArtSigmaPipeline:
    return tiny_pixart_pipeline(seed=0)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def call(pipe, seed: int = 0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(PROMPT, generator=gen(seed), output_type="np", **TINY_CALL, **kw).images


def parent_call(pipe, seed: int = 0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return PixArtSigmaPipeline.__call__(pipe, PROMPT, generator=gen(seed), output_type="np", **TINY_CALL, **kw).images


def random_vector(pipe, layers, seed: int = 0, scale: float = 1.0) -> SteeringVector:
    """`steer.testing.random_vector` carrying the transformer's fingerprint, as a learned direction does."""
    return testing.random_vector(pipe, layers, seed, scale, fingerprint=True)


# sites ----------------------------------------------------------------------------------------------------------------
def test_sites_kinds_channels_and_defaults(pipe):
    tr = pipe.transformer
    assert isinstance(adapter_for(tr), PixArtAdapter)
    assert list_layers(tr) == BLOCKS
    every = list_layers(tr, ("context", "blocks", "attn", "attn2"))
    assert every[0] == CONTEXT_SITE
    assert "transformer_blocks.1.attn1" in every and "transformer_blocks.2.attn2" in every and len(every) == 1 + 3 * 3
    assert list_layers(tr, ("attn2",)) == [f"{b}.attn2" for b in BLOCKS]
    assert default_layers(tr) == ["transformer_blocks.1"]  # the middle third
    # the text site is the T5 width (before caption_projection), the blocks the inner width
    channels = layer_channels(tr, [CONTEXT_SITE, "transformer_blocks.0", "transformer_blocks.0.attn1", "transformer_blocks.2.attn2"])
    assert channels == {CONTEXT_SITE: tr.config.caption_channels, "transformer_blocks.0": 24, "transformer_blocks.0.attn1": 24, "transformer_blocks.2.attn2": 24}
    assert tr.config.caption_channels != tr.inner_dim
    assert resolve_layers(tr, "transformer_blocks.*.attn2") == [f"{b}.attn2" for b in BLOCKS]
    with pytest.raises(LayerError, match="transformer_blocks"):
        resolve_layers(tr, "transformer_blocks.9")
    assert no_hooks_left(tr)


def test_call_signature_is_the_parents_plus_steering(pipe):
    parent = inspect.signature(PixArtSigmaPipeline.__call__).parameters
    ours = inspect.signature(pipe.__call__).parameters
    for name, p in parent.items():
        if name == "self":
            continue
        assert name in ours, name
        assert ours[name].default is p.default or ours[name].default == p.default, name
    for name in STEERING_DEFAULTS:
        assert ours[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert SteeringPixArtSigmaPipeline._steering_parent is PixArtSigmaPipeline


# bit identity -----------------------------------------------------------------------------------------------------
def test_scale_zero_is_bit_identical_to_the_parent(pipe):
    plain = PixArtSigmaPipeline(**pipe.components)
    plain.set_progress_bar_config(disable=True)
    reference = parent_call(plain)
    v = random_vector(pipe, ["transformer_blocks.1", CONTEXT_SITE], scale=5.0)
    assert np.array_equal(call(pipe), reference)
    assert np.array_equal(call(pipe, steering=v, steering_scale=0.0), reference)
    assert np.array_equal(call(pipe, steering=[v, v], steering_scale=[0.0, 0.0]), reference)
    assert np.array_equal(call(pipe, guidance_scale=1.0), parent_call(plain, guidance_scale=1.0))
    assert not np.array_equal(call(pipe, steering=v, steering_scale=1.0), reference)


# exact delta ------------------------------------------------------------------------------------------------------
def _tap(pipe, layer, store):
    """Record the site's value (the module output, or the transformer's encoder_hidden_states input)."""
    if layer == CONTEXT_SITE:
        return pipe.transformer.register_forward_pre_hook(
            lambda m, a, kw: store.append(kw["encoder_hidden_states"].detach().clone()), with_kwargs=True
        )
    module = dict(pipe.transformer.named_modules())[layer]
    return module.register_forward_hook(lambda m, a, o: store.append(o.detach().clone()))


@pytest.mark.parametrize(
    ("layer", "branch", "guidance"),
    [
        ("transformer_blocks.1", "cond", 4.5),
        ("transformer_blocks.2.attn2", "uncond", 4.5),
        (CONTEXT_SITE, "split", 4.5),
        ("transformer_blocks.0.attn1", "cond", 1.0),  # no CFG: every row is conditional
    ],
)
def test_site_moves_by_scale_times_v_only_in_window_and_branch(pipe, layer, branch, guidance):
    v = random_vector(pipe, [layer], seed=3)
    scale, window = 0.7, (0.25, 0.75)
    raw, steered, late = [], [], []
    first_tap = _tap(pipe, layer, raw)  # registered before the steering hook: sees the unsteered value

    def register_after(step, t, latents):  # the steering hook exists now; a later hook sees the steered value
        if not late:
            late.append(_tap(pipe, layer, steered))

    try:
        call(pipe, steering=v, steering_scale=scale, steering_window=window, steering_branch=branch,
             guidance_scale=guidance, callback=register_after)
    finally:
        first_tap.remove()
        for h in late:
            h.remove()
    assert no_hooks_left(pipe.transformer)
    raw = raw[1:]  # step 0 ran before the second tap existed
    assert len(raw) == len(steered) == STEPS - 1
    first, stop = window_bounds(window, STEPS)
    rows = raw[0].shape[0]
    assert rows == (2 if guidance > 1 else 1)
    half = rows // 2
    sign = {"cond": [0, 1], "uncond": [1, 0], "split": [-1, 1]}[branch] if guidance > 1 else [1]
    delta = scale * v.directions[layer]
    for step, (r, s) in enumerate(zip(raw, steered, strict=True), start=1):
        if not first <= step < stop:
            assert torch.equal(s, r), f"step {step} is outside the window but moved"
            continue
        for row, k in enumerate(sign):
            if k == 0:
                assert torch.equal(s[row], r[row]), f"row {row} (not {branch}) moved at step {step}"
            else:
                torch.testing.assert_close(s[row] - r[row], (k * delta).expand_as(r[row]), rtol=0, atol=1e-5)
    assert half in (0, 1)


def test_per_row_scales_in_one_batch_equal_separate_calls(pipe):
    v = random_vector(pipe, ["transformer_blocks.1"], seed=1, scale=3.0)
    scales = [0.0, 1.5]
    batched = pipe([PROMPT] * 2, num_inference_steps=STEPS, generator=[gen(i) for i in range(2)], output_type="np",
                   steering=v, steering_scale=scales, **TINY_CALL).images
    for i, s in enumerate(scales):
        np.testing.assert_allclose(batched[i], call(pipe, seed=i, steering=v, steering_scale=s)[0], atol=2e-5)


# hooks and state --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_hooks_removed_on_every_exit_path(pipe, exc):
    v = random_vector(pipe, ["transformer_blocks.1", CONTEXT_SITE])
    call(pipe, steering=v)
    assert no_hooks_left(pipe.transformer)

    def boom(step, t, latents):
        raise exc("stop")

    with pytest.raises(exc):
        call(pipe, steering=v, callback=boom)
    assert no_hooks_left(pipe.transformer)
    with pytest.raises(exc), pipe.steering(v, 1.0):
        call(pipe, callback=boom)
    assert no_hooks_left(pipe.transformer)
    with pytest.raises(LayerError):  # a bad request fails before any hook is added
        call(pipe, steering=v, steering_layers=["transformer_blocks.7"])
    assert no_hooks_left(pipe.transformer)


def test_pipeline_state_after_a_steered_call_is_what_the_parent_leaves(pipe):
    plain = PixArtSigmaPipeline(**tiny_pixart_components(seed=0))
    plain.set_progress_bar_config(disable=True)
    before = dict(plain.__dict__)
    parent_call(plain)
    parent_changed = {k for k, val in plain.__dict__.items() if before.get(k, before) is not val} - {"scheduler"}

    before = dict(pipe.__dict__)
    call(pipe, steering=random_vector(pipe, ["transformer_blocks.1"]), steering_scale=1.0)
    ours_changed = {k for k, val in pipe.__dict__.items() if before.get(k, before) is not val} - {"scheduler"}
    assert ours_changed == parent_changed
    for attr in ("guidance_scale", "num_timesteps", "interrupt", "do_classifier_free_guidance"):
        assert hasattr(pipe, attr) == hasattr(plain, attr), attr
    assert pipe.scheduler is before["scheduler"]  # the call ran on its own scheduler copy


def test_threads_get_their_own_cfg_and_steering(pipe):
    v = random_vector(pipe, ["transformer_blocks.1"], seed=2, scale=2.0)
    settings = {
        "cfg": dict(steering=v, steering_scale=1.5, guidance_scale=4.5),
        "nocfg": dict(steering=v, steering_scale=-1.5, guidance_scale=1.0),
        "plain": dict(guidance_scale=4.5),
    }
    alone = {k: call(pipe, **kw) for k, kw in settings.items()}
    sync = step_barrier(len(settings))  # interleave the denoising loops step by step
    together = run_in_threads(lambda k: call(pipe, callback=sync, **settings[k]), settings)
    # MKL's sgemm rounds by buffer alignment (conditional numerical reproducibility: exact under MKL_CBWR=COMPATIBLE),
    # so concurrent runs may differ from sequential ones by an ulp (measured <= 4e-7); a leaked or lost steering hook
    # moves pixels by far more than the tolerance
    for k in settings:
        np.testing.assert_allclose(together[k], alone[k], rtol=0, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(together["plain"], parent_call(pipe), rtol=0, atol=1e-5)
    assert np.abs(alone["cfg"] - alone["plain"]).max() > 1e-3
    assert no_hooks_left(pipe.transformer)


# text, learning, files --------------------------------------------------------------------------------------------
def test_text_embeddings_are_the_tokens_the_transformer_reads(pipe):
    prompts = ["a red sneaker on a table", "blue"]
    emb = pipe.steering_text_embeddings(prompts)
    with torch.no_grad():
        full, mask, _, _ = PixArtSigmaPipeline.encode_prompt(pipe, prompts, do_classifier_free_guidance=False, clean_caption=False)
    assert emb.shape == full.shape == (2, 300, pipe.transformer.config.caption_channels)
    real = mask.bool()
    assert torch.equal(emb[real], full[real])
    for i in range(2):  # masked positions hold the mean of the real tokens: a mean over positions is theirs
        torch.testing.assert_close(emb[i].mean(0), full[i][real[i]].mean(0))


def test_learn_default_preset_then_steer_and_refuse_other_families(pipe, tmp_path):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights render no attribute
        v = pipe.learn_direction(["a red sneaker"], ["a blue sneaker"], num_inference_steps=3, calibration_samples=2,
                                 progress=False, **TINY_CALL)
    assert v.layers == [CONTEXT_SITE] and v.metadata["preset"] == "text"
    assert v.directions[CONTEXT_SITE].shape == (pipe.transformer.config.caption_channels,)
    assert torch.isfinite(v.directions[CONTEXT_SITE]).all() and v.directions[CONTEXT_SITE].norm() > 0
    assert v.metadata["model"]["unet_class"] == "PixArtTransformer2DModel"
    plain = call(pipe, num_inference_steps=3)
    assert not np.array_equal(call(pipe, num_inference_steps=3, steering=v), plain)
    assert np.array_equal(call(pipe, num_inference_steps=3, steering=v, steering_scale=0.0), plain)

    loaded = SteeringVector.load(v.save(tmp_path / "red.safetensors"))
    assert np.array_equal(call(pipe, num_inference_steps=3, steering=loaded), call(pipe, num_inference_steps=3, steering=v))

    from steer.testing import tiny_pipeline

    sd = tiny_pipeline(seed=0)
    assert layer_channels(sd.unet, [CONTEXT_SITE])[CONTEXT_SITE] == 32  # same width: only the family tells them apart
    with pytest.raises(ModelMismatchError, match="PixArtTransformer2DModel"):
        sd("a shoe", num_inference_steps=2, generator=gen(), output_type="np", steering=loaded)
    sd_vector = SteeringVector({"up_blocks.0.resnets.1": torch.ones(64)}, {"name": "sd", "model": unet_fingerprint(sd.unet)})
    sd_loaded = SteeringVector.load(sd_vector.save(tmp_path / "sd.safetensors"))
    with pytest.raises(ModelMismatchError, match="UNet2DConditionModel"):
        call(pipe, steering=sd_loaded)
    assert no_hooks_left(pipe.transformer) and no_hooks_left(sd.unet)


def test_casteer_preset_records_the_conditional_half_at_the_cross_attentions(pipe):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")
        v = pipe.learn_direction(["a red sneaker"], ["a blue sneaker"], preset="casteer", num_inference_steps=3,
                                 num_samples=2, step_buckets=2, calibration_samples=2, progress=False, **TINY_CALL)
    assert v.layers == [f"{b}.attn2" for b in BLOCKS]
    assert all(d.shape == (2, 24) and torch.isfinite(d).all() for d in v.directions.values())
    assert not np.array_equal(call(pipe, num_inference_steps=3, steering=v), call(pipe, num_inference_steps=3))
    assert no_hooks_left(pipe.transformer)


def test_non_finite_images_raise_and_from_pipe_keeps_the_check(pipe):
    nan = torch.full((1, 4, 8, 8), float("nan"))
    for output_type in ("np", "pil"):
        with pytest.raises(NonFiniteOutputError):
            pipe(PROMPT, num_inference_steps=2, latents=nan, output_type=output_type, **TINY_CALL)
    v = random_vector(pipe, ["transformer_blocks.1"])
    with pytest.raises(NonFiniteOutputError):
        pipe(PROMPT, num_inference_steps=2, latents=nan, output_type="np", steering=v, **TINY_CALL)
    plain = PixArtSigmaPipeline(**pipe.components)
    for again in (SteeringPixArtSigmaPipeline.from_pipe(plain), steering_pipeline(plain)):
        assert type(again) is SteeringPixArtSigmaPipeline and again.transformer is plain.transformer
        assert getattr(type(again.image_processor), "_steer_finite", False)
    assert not getattr(type(plain.image_processor), "_steer_finite", False)  # the parent's object is untouched
