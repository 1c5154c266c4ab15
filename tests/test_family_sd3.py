"""Stable Diffusion 3 family: steering `SD3Transformer2DModel` through `SteeringStableDiffusion3Pipeline` (tiny random
components, CPU, fp32)."""

import inspect

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3Pipeline

import steer
from steer import ModelMismatchError, NonFiniteOutputError, SteeringVector
from steer.config import STEERING_DEFAULTS
from steer.denoisers import CONTEXT_SITE, adapter_for, cross_attention_sites, default_layers, layer_channels
from steer.engine import window_bounds
from steer.pipelines.stable_diffusion_3 import SteeringStableDiffusion3Pipeline
from steer.testing import capture_site, no_hooks_left, random_vector, run_in_threads, step_barrier
from steer.testing.sd3 import tiny_sd3_components, tiny_sd3_pipeline

STEPS = 4
PROMPT = "a red sneaker"
IMAGE_TOKENS = 64  # (16 latent pixels / patch 2) ** 2
BLOCKS = ["transformer_blocks.0", "transformer_blocks.1"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd3_pipeline(seed=0)


@pytest.fixture(scope="module")
def plain(pipe):
    """The diffusers parent class on identical components: the reference output."""
    ref = tiny_sd3_pipeline(seed=0, cls=StableDiffusion3Pipeline)
    return ref("a red sneaker", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0), output_type="np").images


def call(pipe, seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "np")
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kw).images


# sites ---------------------------------------------------------------------------------------------------------------
def test_sites_channels_and_image_stream_of_every_block(pipe):
    tr = pipe.transformer
    assert steer.list_layers(tr) == BLOCKS
    every = steer.list_layers(tr, ("context", "blocks", "attn", "attn2"))
    assert every == [CONTEXT_SITE, "transformer_blocks.0", "transformer_blocks.0.attn", "transformer_blocks.1", "transformer_blocks.1.attn"]
    assert cross_attention_sites(tr) == ["transformer_blocks.0.attn", "transformer_blocks.1.attn"]  # where the text enters
    assert default_layers(tr) == ["transformer_blocks.0"]
    adapter = adapter_for(tr)
    assert adapter.family == "sd3" and adapter.context_dim() == tr.config.joint_attention_dim == 64
    assert layer_channels(tr, [*every]) == {CONTEXT_SITE: 64, **{n: 32 for n in every[1:]}}
    # the hooked tensor is the image stream at every site, including the last block whose text output is None
    seen = {}
    handles = [steer.denoisers.register_site_hook(tr, n, lambda h, n=n: seen.__setitem__(n, tuple(h.shape))) for n in every]
    raw = []
    handles.append(tr.transformer_blocks[1].register_forward_hook(lambda m, a, o: raw.append(o)))
    try:
        call(pipe, num_inference_steps=1)
    finally:
        for h in handles:
            h.remove()
    assert raw[0][0] is None  # context_pre_only
    assert seen.pop(CONTEXT_SITE) == (2, 77 + 256, 64)  # [uncond, cond] CLIP + T5 tokens, before context_embedder
    assert set(seen.values()) == {(2, IMAGE_TOKENS, 32)}
    assert no_hooks_left(tr)


def test_sd35_dual_attention_blocks_list_and_steer_attn2():
    from steer.testing.sd3 import tiny_sd3_components

    torch.manual_seed(0)
    comps = tiny_sd3_components()
    cfg = {k: v for k, v in comps["transformer"].config.items() if not k.startswith("_")}
    cfg.update(dual_attention_layers=(0,), qk_norm="rms_norm")
    tr = type(comps["transformer"]).from_config(cfg).eval()
    assert "transformer_blocks.0.attn2" in steer.list_layers(tr, ("attn2",))
    v = SteeringVector({"transformer_blocks.0.attn2": torch.ones(32)})
    args, kwargs = adapter_for(tr).probe_inputs()
    out = []
    h = tr.transformer_blocks[0].attn2.register_forward_hook(lambda m, a, o: out.append(o.clone()))
    session = steer.SteeringSession(tr, steer.engine.build_layer_plans([v], None, False), torch.tensor([[2.0]]), steer.SteeringConfig(window=(0, 1)))
    with torch.no_grad():
        tr(*args, **kwargs)
        with session:
            after = []
            h2 = tr.transformer_blocks[0].attn2.register_forward_hook(lambda m, a, o: after.append(o.clone()))
            tr(*args, **kwargs)
            h2.remove()
    h.remove()
    torch.testing.assert_close(after[0] - out[1], torch.full_like(after[0], 2.0), atol=1e-5, rtol=0)
    assert no_hooks_left(tr)


# bit identity, exact delta -------------------------------------------------------------------------------------------
def test_no_steering_and_zero_scale_equal_the_parent_pipeline(pipe, plain):
    v = random_vector(pipe, [CONTEXT_SITE, *BLOCKS], scale=3.0)
    assert np.array_equal(call(pipe), plain)
    assert np.array_equal(call(pipe, steering=v, steering_scale=0.0), plain)
    assert np.array_equal(call(pipe, steering=[v, v], steering_scale=[0.0, 0.0]), plain)
    assert not np.array_equal(call(pipe, steering=v, steering_scale=1.0, steering_window=(0, 1)), plain)


@pytest.mark.parametrize(("layer", "branch"), [("transformer_blocks.1", "cond"), ("transformer_blocks.0.attn", "split"), (CONTEXT_SITE, "uncond")])
def test_site_moves_by_scale_times_v_only_in_window_and_branch(pipe, layer, branch):
    tr = pipe.transformer
    v = random_vector(pipe, [layer], seed=3)
    scale, window = 0.7, (0.25, 0.75)
    steer_kw = dict(steering=v, steering_scale=scale, steering_window=window, steering_branch=branch)
    raw, steered = capture_site(pipe, layer, lambda arm: call(pipe, callback_on_step_end=arm, **steer_kw))
    assert len(raw) == len(steered) == STEPS - 1
    first, stop = window_bounds(window, STEPS)
    delta = scale * v.directions[layer]
    sign = {"cond": (0, 1), "uncond": (1, 0), "split": (-1, 1)}[branch]
    for step, (r, s) in enumerate(zip(raw, steered, strict=True), start=1):
        if not first <= step < stop:
            assert torch.equal(s, r), f"step {step} is outside the window but moved"
            continue
        for half, k in zip((slice(0, 1), slice(1, 2)), sign, strict=True):
            if k == 0:
                assert torch.equal(s[half], r[half])
            else:
                torch.testing.assert_close(s[half] - r[half], (k * delta).expand_as(r[half]), rtol=0, atol=1e-5)
    assert no_hooks_left(tr)


# hooks and threads ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_hooks_removed_on_every_exit_path(pipe, exc):
    v = random_vector(pipe, [CONTEXT_SITE, "transformer_blocks.0"])

    def boom(p, i, t, kw):
        raise exc("stop")

    with pytest.raises(exc):
        call(pipe, steering=v, callback_on_step_end=boom)
    assert no_hooks_left(pipe.transformer)
    with pytest.raises(exc), pipe.steering(v, 1.0, window=(0, 1)):
        call(pipe, callback_on_step_end=boom)
    assert no_hooks_left(pipe.transformer)


def test_two_threads_steered_and_plain_get_their_own_results(pipe, plain):
    v = random_vector(pipe, ["transformer_blocks.0"], seed=2, scale=2.0)
    steered_alone = call(pipe, steering=v, steering_window=(0, 1))
    settings = {"steered": {"steering": v, "steering_window": (0, 1)}, "plain": {}}
    sync = step_barrier(2)  # interleave the two denoising loops step by step
    out = run_in_threads(lambda k: call(pipe, callback_on_step_end=sync, **settings[k]), settings)
    assert np.array_equal(out["plain"], plain)
    assert np.array_equal(out["steered"], steered_alone)
    assert no_hooks_left(pipe.transformer)


# pipeline surface ----------------------------------------------------------------------------------------------------
def test_call_signature_is_the_parents_plus_steering(pipe):
    params = inspect.signature(pipe.__call__).parameters
    parent = inspect.signature(StableDiffusion3Pipeline.__call__).parameters
    assert [p for p in parent if p != "self"] == [p for p in params if p in parent]
    assert set(STEERING_DEFAULTS) <= set(params)
    assert SteeringStableDiffusion3Pipeline._steering_parent is StableDiffusion3Pipeline
    assert steer.SteeringStableDiffusion3Pipeline is SteeringStableDiffusion3Pipeline


def test_pipeline_state_after_a_steered_call_is_the_parents(pipe):
    ref = tiny_sd3_pipeline(seed=0, cls=StableDiffusion3Pipeline)
    v = random_vector(pipe, ["transformer_blocks.0"])
    for p, kw in ((ref, {}), (pipe, {"steering": v})):
        p(PROMPT, num_inference_steps=3, guidance_scale=4.5, generator=torch.Generator().manual_seed(0), output_type="latent", **kw)
    for attr in ("guidance_scale", "num_timesteps", "interrupt", "do_classifier_free_guidance", "clip_skip", "joint_attention_kwargs"):
        assert getattr(pipe, attr) == getattr(ref, attr), attr
    assert pipe.num_timesteps == 3 and pipe.guidance_scale == 4.5


def test_nan_image_raises_instead_of_a_black_image(pipe):
    nan = torch.full((1, 4, 16, 16), float("nan"))
    v = random_vector(pipe, ["transformer_blocks.1"])
    for kw in ({}, {"steering": v}):  # SD3 has no safety checker: the decoded image is checked before postprocess
        with pytest.raises(NonFiniteOutputError, match="NaN or infinite"):
            call(pipe, latents=nan, **kw)
    with pytest.raises(NonFiniteOutputError, match="the generated latent contains NaN"):  # returned silently before
        call(pipe, latents=nan, output_type="latent")
    assert no_hooks_left(pipe.transformer)


def test_skip_layer_guidance_with_steering_is_refused_in_one_line(pipe, plain):
    v = random_vector(pipe, ["transformer_blocks.0"])
    with pytest.raises(ValueError, match="skip_guidance_layers") as err:
        call(pipe, steering=v, skip_guidance_layers=[0])
    assert "\n" not in str(err.value)
    # without steering (or at scale 0) skip-layer guidance is the parent's
    assert call(pipe, skip_guidance_layers=[0], steering=v, steering_scale=0.0).shape == plain.shape


# learning ------------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:calibration")  # random weights: the calibration may find no strength that helps
def test_learn_text_default_then_steer_changes_the_output(pipe, plain):
    vec = pipe.learn_direction(
        ["a red sneaker", "a red car"], ["a blue sneaker", "a blue car"], num_inference_steps=2, calibration_samples=2, progress=False,
    )
    assert vec.layers == [CONTEXT_SITE] and vec.metadata["preset"] == "text"
    assert vec.metadata["model"]["unet_class"] == "SD3Transformer2DModel"
    assert vec.directions[CONTEXT_SITE].shape == (64,)
    steered = call(pipe, steering=vec)
    assert not np.array_equal(steered, plain)
    assert np.isfinite(steered).all()


def test_learn_casteer_at_the_joint_attentions(pipe, plain):
    vec = pipe.learn_direction("a red sneaker", "a blue sneaker", preset="casteer", calibrate=False, num_samples=2, num_inference_steps=4, step_buckets=2, progress=False)
    assert vec.layers == cross_attention_sites(pipe.transformer)
    assert vec.directions["transformer_blocks.0.attn"].shape == (2, 32)
    assert not np.array_equal(call(pipe, steering=vec, steering_scale=0.5), plain)


def test_paper_extraction_needs_a_unet_and_says_so_in_one_line(pipe):
    for kw in ({"preset": "paper"}, {"mode": "reference"}):
        with pytest.raises(ValueError, match="needs a UNet pipeline; for a SD3Transformer2DModel") as err:
            pipe.learn_direction("a red sneaker", "a blue sneaker", progress=False, **kw)
        assert "\n" not in str(err.value)
    fast = pipe.learn_direction("a red sneaker", "a blue sneaker", mode="fast", num_samples=2, num_inference_steps=2, progress=False)
    assert fast.layers == default_layers(pipe.transformer) and fast.directions["transformer_blocks.0"].shape == (32,)


def test_direction_from_another_family_is_refused_by_name(pipe, tmp_path):
    from steer.testing import tiny_pipeline

    sd = tiny_pipeline(seed=0)
    # learned on the SD UNet, with a text-site vector whose width happens to fit SD3's: refused by the model class
    sd_vec = SteeringVector({CONTEXT_SITE: torch.randn(64)}, {"name": "sd", "model": steer.vectors.unet_fingerprint(sd.unet)})
    sd_vec = SteeringVector.load(sd_vec.save(tmp_path / "sd.safetensors"))
    with pytest.raises(ModelMismatchError, match="UNet2DConditionModel"):
        call(pipe, steering=sd_vec)
    sd3_vec = SteeringVector({n: d for n, d in random_vector(pipe, BLOCKS).directions.items()}, {"name": "sd3", "model": steer.vectors.unet_fingerprint(pipe.transformer)})
    sd3_vec = SteeringVector.load(sd3_vec.save(tmp_path / "sd3.safetensors"))
    with pytest.raises(ModelMismatchError, match="SD3Transformer2DModel"):
        sd(PROMPT, num_inference_steps=2, output_type="np", steering=sd3_vec)
    assert no_hooks_left(pipe.transformer) and no_hooks_left(sd.unet)


def test_steering_pipeline_and_from_pipe_share_components_and_keep_the_checks(plain):
    from steer.pipelines.factory import steering_pipeline

    base = tiny_sd3_pipeline(seed=0, cls=StableDiffusion3Pipeline)
    steered = steering_pipeline(base)
    assert type(steered) is SteeringStableDiffusion3Pipeline and steered.transformer is base.transformer
    steered.set_progress_bar_config(disable=True)
    assert np.array_equal(call(steered), plain)
    with pytest.raises(NonFiniteOutputError):
        call(steered, latents=torch.full((1, 4, 16, 16), float("nan")))


def test_components_build_offline_and_deterministically():
    a, b = tiny_sd3_components(seed=1), tiny_sd3_components(seed=1)
    for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
        pa, pb = next(a[name].parameters()), next(b[name].parameters())
        assert torch.equal(pa, pb), name
    assert not torch.equal(next(a["text_encoder"].parameters()), next(a["text_encoder_2"].parameters()))
