"""Stable Diffusion XL and image-to-image (SD, SDXL) steering on tiny random-weight components (CPU, fp32)."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

import steer
from steer import ModelMismatchError, NonFiniteOutputError, SteeringVector
from steer.denoisers import CONTEXT_SITE, adapter_for, layer_channels
from steer.engine import window_bounds
from steer.pipelines.img2img import SteeringStableDiffusionImg2ImgPipeline, SteeringStableDiffusionXLImg2ImgPipeline
from steer.testing import capture_site, no_hooks_left, random_vector, run_in_threads, step_barrier
from steer.testing.sdxl import tiny_sdxl_components, tiny_sdxl_pipeline

STEPS = 4
PROMPT = "a red bag"


@pytest.fixture(scope="module")
def xl():
    return tiny_sdxl_pipeline(seed=0)


def run(pipe, gen, prompt=PROMPT, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=gen(0), output_type="np", **kw).images


# bit-identity -------------------------------------------------------------------------------------------------------
def test_unsteered_and_zero_scale_are_bit_identical_to_the_diffusers_parent(xl, gen):
    parent = StableDiffusionXLPipeline.__call__(xl, PROMPT, num_inference_steps=STEPS, generator=gen(0), output_type="np").images
    v = random_vector(xl, ["up_blocks.0.resnets.1", CONTEXT_SITE], scale=3.0)
    assert np.array_equal(run(xl, gen), parent)
    assert np.array_equal(run(xl, gen, steering=v, steering_scale=0.0), parent)
    assert not np.array_equal(run(xl, gen, steering=v, steering_scale=1.0), parent)
    assert no_hooks_left(xl.unet)


# exact deltas -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("layer", "branch"), [("up_blocks.0.attentions.1", "cond"), (CONTEXT_SITE, "split")])
def test_site_moves_by_exactly_scale_times_v_on_the_steered_half_inside_the_window(xl, gen, layer, branch):
    v = random_vector(xl, [layer], seed=3)
    scale, window = 0.7, (0.25, 0.75)
    steer_kw = dict(steering=v, steering_scale=scale, steering_window=window, steering_branch=branch)
    raw, seen = capture_site(xl, layer, lambda arm: run(xl, gen, callback_on_step_end=arm, **steer_kw))
    assert len(raw) == len(seen) == STEPS - 1
    first, stop = window_bounds(window, STEPS)
    assert (first, stop) == (1, 3)
    d = scale * v.directions[layer]
    half = raw[0].shape[0] // 2
    for step, (r, s) in enumerate(zip(raw, seen, strict=True), start=1):
        moved = s - r
        shape = (1, -1, 1, 1) if r.ndim == 4 else (1, 1, -1)
        if not first <= step < stop:
            assert torch.equal(s, r), f"step {step} is outside the window but moved"
            continue
        torch.testing.assert_close(moved[half:], d.reshape(shape).expand_as(moved[half:]), rtol=0, atol=1e-5)
        if branch == "split":
            torch.testing.assert_close(moved[:half], (-d).reshape(shape).expand_as(moved[:half]), rtol=0, atol=1e-5)
        else:
            assert torch.equal(s[:half], r[:half])


# hooks and threads --------------------------------------------------------------------------------------------------
def test_hooks_are_removed_after_an_exception_mid_call(xl, gen):
    v = random_vector(xl, ["up_blocks.1.resnets.0", CONTEXT_SITE])

    def boom(_pipe, i, t, k):
        if i == 1:
            raise RuntimeError("stop here")
        return {}

    with pytest.raises(RuntimeError, match="stop here"):
        run(xl, gen, steering=v, steering_window=(0, 1), callback_on_step_end=boom)
    assert no_hooks_left(xl.unet)
    with pytest.raises(ModelMismatchError):  # a failure while entering (wrong channels) leaves nothing either
        run(xl, gen, steering=SteeringVector({"up_blocks.1.resnets.0": torch.ones(7)}))
    assert no_hooks_left(xl.unet)


def test_a_steered_thread_does_not_touch_an_unsteered_one(xl, gen):
    plain = run(xl, gen)
    v = random_vector(xl, [CONTEXT_SITE, "up_blocks.0.resnets.0"], scale=2.0)
    settings = {"steered": {"steering": v, "steering_window": (0, 1)}, "plain": {}}
    lockstep = step_barrier(2, timeout=60)  # both runs alternate UNet calls
    out = run_in_threads(lambda k: run(xl, gen, callback_on_step_end=lockstep, **settings[k]), settings)
    assert np.array_equal(out["plain"], plain)
    assert not np.array_equal(out["steered"], plain)
    assert no_hooks_left(xl.unet)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_prompt_encoding_is_serialized_across_threads_and_pipelines_sharing_a_tokenizer(kind, xl, tiny_pipe, monkeypatch):
    # transformers 5's CLIP tokenizer keeps padding settings on one shared backend: unserialized, two threads get
    # each other's padding (shape errors, or other text tokens)
    base = xl if kind == "sdxl" else tiny_pipe
    other = (SteeringStableDiffusionXLImg2ImgPipeline if kind == "sdxl" else SteeringStableDiffusionImg2ImgPipeline).from_pipe(base)
    assert other.tokenizer is base.tokenizer
    prompts = ["a red bag on a wooden table in the morning light, photographed from above", "x"]
    encode = dict(device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    expected = [base.encode_prompt(p, **encode)[0] for p in prompts]
    inside, overlaps, errors = [0], [0], []
    tokenize = type(base.tokenizer).__call__

    def watched(self, *args, **kwargs):  # a widened race window: two threads in here at once is the bug
        inside[0] += 1
        overlaps[0] += inside[0] > 1
        time.sleep(0.002)
        try:
            return tokenize(self, *args, **kwargs)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(type(base.tokenizer), "__call__", watched)

    def work(pipe, index):
        for _ in range(15):
            try:
                if not torch.equal(pipe.encode_prompt(prompts[index], **encode)[0], expected[index]):
                    errors.append("other tokens")
            except Exception as err:  # noqa: BLE001 - collected
                errors.append(repr(err)[:80])

    threads = [threading.Thread(target=work, args=(base, 0)), threading.Thread(target=work, args=(other, 1))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert errors == [] and overlaps[0] == 0


# learning -----------------------------------------------------------------------------------------------------------
def test_learn_then_steer_changes_the_output_with_the_default_text_preset(xl, gen):
    v = xl.learn_direction([PROMPT] * 2, ["a blue bag"] * 2, calibrate=False, progress=False)
    assert v.layers == [CONTEXT_SITE] and v.metadata["preset"] == "text"
    assert v.directions[CONTEXT_SITE].shape == (64,)  # both text encoders' widths
    # the direction is the difference of the two prompt sets' SDXL text tokens (prompt_embeds, not the pooled ones)
    pos, neg = xl.steering_text_embeddings([PROMPT]), xl.steering_text_embeddings(["a blue bag"])
    diff = (pos.mean(1) - neg.mean(1))[0]
    torch.testing.assert_close(v.directions[CONTEXT_SITE], diff / diff.norm())
    base = run(xl, gen, "a bag", num_inference_steps=2)
    steered = run(xl, gen, "a bag", num_inference_steps=2, steering=v)
    assert np.abs(steered - base).max() > 1e-3
    assert np.array_equal(run(xl, gen, "a bag", num_inference_steps=2, steering=v, steering_scale=0.0), base)


def test_learn_with_calibration(xl, gen):
    v = xl.learn_direction([PROMPT] * 2, ["a blue bag"] * 2, num_inference_steps=2, calibration_samples=2, progress=False)
    cal = v.metadata["calibration"]
    # the window choice (the default) on Euler discrete, which resumes mid-run: the windows share the first step
    assert v.metadata["window_choice"]["chosen"] == v.metadata["recommended"]["window"] and cal["branched_at"] == 1
    grid = len(cal["grid"])  # positives and open samples, 2 steps; the grid's first step once, its second twice
    assert cal["strength"] > 0 and cal["unet_rows"] == (2 * 2 + grid + 2 * grid) * 2 * 2  # x samples x CFG rows
    assert not np.array_equal(run(xl, gen, "a bag", num_inference_steps=2, steering=v), run(xl, gen, "a bag", num_inference_steps=2))


def test_learn_from_images_with_the_papers_extraction(xl, gen, monkeypatch):
    images = [torch.rand(3, 32, 32, generator=gen(i)) for i in range(2)]
    passes, real = [], type(xl).steering_denoiser_kwargs

    def spy(self, prompts, latents):
        passes.append(real(self, prompts, latents))
        return passes[-1]

    monkeypatch.setattr(type(xl), "steering_denoiser_kwargs", spy)
    v = xl.learn_direction(images, method="mean", progress=False)  # VAE-encode, noise, one UNet pass, pool
    assert v.layers == steer.default_layers(xl.unet) and v.metadata["source"] == "images"
    added = passes[0]["added_cond_kwargs"]  # SDXL's pooled text and size / crop ids for a 32 px image
    assert added["text_embeds"].shape == (2, 32) and added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    assert not np.array_equal(run(xl, gen, "a bag", steering=v), run(xl, gen, "a bag"))


def test_a_direction_from_another_unet_family_is_refused_by_name(xl, tiny_pipe, tmp_path):
    sd_path = random_vector(tiny_pipe, ["up_blocks.0.resnets.0"], fingerprint=True).save(tmp_path / "sd.safetensors")
    loaded = SteeringVector.load(sd_path)
    assert layer_channels(xl.unet, ["up_blocks.0.resnets.0"]) == layer_channels(tiny_pipe.unet, ["up_blocks.0.resnets.0"])
    with pytest.raises(ModelMismatchError, match="different UNet"):  # same channels there: the architecture tells
        xl("a bag", num_inference_steps=1, output_type="latent", steering=loaded)
    xl_path = random_vector(xl, [CONTEXT_SITE], fingerprint=True).save(tmp_path / "xl.safetensors")
    with pytest.raises(ModelMismatchError, match="channel mismatch"):  # 64 text channels vs SD's 32
        tiny_pipe("a bag", num_inference_steps=1, output_type="latent", steering=SteeringVector.load(xl_path))
    assert no_hooks_left(xl.unet) and no_hooks_left(tiny_pipe.unet)


# sites --------------------------------------------------------------------------------------------------------------
def test_sites_of_the_tiny_sdxl_unet(xl):
    layers = steer.list_layers(xl.unet)
    assert "down_blocks.0.resnets.0" in layers and "up_blocks.2.resnets.2" in layers
    assert not any(n.startswith(("down_blocks.0.attentions", "up_blocks.2.attentions")) for n in layers)
    attn2 = steer.list_layers(xl.unet, ["attn2"])
    assert "up_blocks.0.attentions.0.transformer_blocks.1.attn2" in attn2  # two transformer layers per block
    assert steer.list_layers(xl.unet, ["context"]) == [CONTEXT_SITE]
    # attn2 has no out_channels: counted by one probe forward, which needs SDXL's added_cond_kwargs
    assert layer_channels(xl.unet, [attn2[-1], CONTEXT_SITE]) == {attn2[-1]: 64, CONTEXT_SITE: 64}


SDXL_BASE_UNET = dict(
    addition_embed_type="text_time", addition_time_embed_dim=256, attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280], cross_attention_dim=2048, layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    projection_class_embeddings_input_dim=2816, sample_size=128, transformer_layers_per_block=[1, 2, 10],
    use_linear_projection=True,
)


def test_default_layers_on_the_real_sdxl_layout_are_the_papers_up_block_resnets():
    with torch.device("meta"):  # SDXL base's UNet config, no weights
        unet = UNet2DConditionModel(**SDXL_BASE_UNET)
    defaults = steer.default_layers(unet)
    # the lowest-resolution up block (1280 channels, 32x32 latents at 1024 px) and all but the last resnet of the next,
    # as on SD 1.x
    assert defaults == [f"up_blocks.0.resnets.{i}" for i in range(3)] + ["up_blocks.1.resnets.0", "up_blocks.1.resnets.1"]
    assert layer_channels(unet, defaults) == {**{f"up_blocks.0.resnets.{i}": 1280 for i in range(3)},
                                              "up_blocks.1.resnets.0": 640, "up_blocks.1.resnets.1": 640}
    assert adapter_for(unet).context_dim() == 2048
    attn2 = steer.list_layers(unet, ["attn2"])
    assert len(attn2) == 2 * 2 + 2 * 10 + 10 + 3 * 10 + 3 * 2  # down 1 + 2, mid, up 0 + 1
    _, kwargs = adapter_for(unet).probe_inputs()
    added = kwargs["added_cond_kwargs"]
    assert added["text_embeds"].shape == (1, 1280) and added["time_ids"].shape == (1, 6)


def test_inline_memorization_detection_on_sdxl_scores_every_image_and_changes_nothing(xl, gen):
    prompts = [PROMPT, "a green hat"]
    out = xl(prompts, num_inference_steps=3, generator=gen(0), output_type="np", detect_memorization=True)
    assert out.memorization_scores.shape == (2,) and torch.isfinite(out.memorization_scores).all()
    assert out.memorization_step_scores.shape == (3, 2) and out.nsfw_content_detected is None  # SDXL has no checker
    np.testing.assert_array_equal(out.images, run(xl, gen, prompts, num_inference_steps=3))
    assert no_hooks_left(xl.unet)


# NaN ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_type", ["np", "pil"])
def test_a_nan_image_raises_instead_of_turning_black(xl, gen, output_type):
    def poison(_pipe, i, t, k):
        return {"latents": torch.full_like(k["latents"], float("nan"))}

    for kw in ({}, {"steering": random_vector(xl, [CONTEXT_SITE])}):
        with pytest.raises(NonFiniteOutputError):
            xl(PROMPT, num_inference_steps=2, generator=gen(0), output_type=output_type, callback_on_step_end=poison, **kw)
    assert no_hooks_left(xl.unet)
    assert type(StableDiffusionXLPipeline(**tiny_sdxl_components()).image_processor).__name__ == "VaeImageProcessor"
    assert type(pickle.loads(pickle.dumps(xl.image_processor))) is type(xl.image_processor)  # the checked copy pickles


# image-to-image -----------------------------------------------------------------------------------------------------
