"""The VAE as the pipelines use it (steer.vae_codec): the calibration's colour and layout signals, image-set learning,
detection and image inversion decode and encode like the pipeline itself, and an fp16 VAE that the pipelines upcast
(SDXL's) is upcast here too, without casting the shared one."""

import copy
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from steer.appearance import mean_colours, structure_kept
from steer.extract import encode_images
from steer.testing import run_in_threads
from steer.testing.parts import tiny_vae
from steer.testing.sd3 import tiny_sd3_pipeline
from steer.testing.sdxl import tiny_sdxl_pipeline
from steer.vae_codec import (
    codec_vae,
    decode_latents,
    encode_pixels,
    from_vae_space,
    to_vae_space,
    upcast_in_place,
    vae_lock,
    while_upcast,
)

STATS = {"latents_mean": [0.1, -0.2, 0.3, -0.4], "latents_std": [0.5, 2.0, 1.5, 0.8]}  # Playground v2.5-style


def _with_vae(pipe, **config):
    """The pipeline with its VAE's weights under a config that adds ``config``."""
    vae = AutoencoderKL.from_config(pipe.vae.config, **config)
    vae.load_state_dict(pipe.vae.state_dict())
    return type(pipe)(**{**pipe.components, "vae": vae.eval()})


def _overflowing_fp16_vae(force_upcast: bool) -> AutoencoderKL:
    """A tiny VAE whose decoder overflows in fp16 (like SDXL's) but not in float32, stored in fp16."""
    torch.manual_seed(0)
    vae = tiny_vae((8, 16), 16, force_upcast=force_upcast)
    with torch.no_grad():
        vae.post_quant_conv.weight.fill_(6e4)  # x 4 channels x |z| ~ 1: past fp16's 65504
    return vae.half()


@pytest.mark.parametrize("family", ["sd", "sdxl-latents-stats", "sd3"])
def test_decode_latents_matches_the_pipelines_own_decode(family, tiny_pipe, gen, one_thread):
    if family == "sd":
        pipe, kw = tiny_pipe, {}
    elif family == "sdxl-latents-stats":
        pipe, kw = _with_vae(tiny_sdxl_pipeline(seed=0), **STATS), {}
        assert pipe.vae.config.latents_mean == STATS["latents_mean"]
    else:
        pipe, kw = tiny_sd3_pipeline(seed=0), {}
        assert pipe.vae.config.shift_factor  # SD3's latents are shifted
    call = dict(num_inference_steps=2, **kw)
    latents = pipe("a red bag", generator=gen(0), output_type="latent", **call).images
    own = pipe("a red bag", generator=gen(0), output_type="np", **call).images
    ours = (decode_latents(pipe, latents) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, own, atol=2e-5)
    # the colour signal reads the picture the pipeline shows, not a wrongly scaled one
    np.testing.assert_allclose(mean_colours(pipe, latents).numpy(), own.mean((1, 2)), atol=2e-5)


@pytest.mark.parametrize("config", [{"scaling_factor": 0.13025}, {"scaling_factor": 1.5035, "shift_factor": 0.0609},
                                    {"scaling_factor": 0.5, **STATS}])
def test_encoding_is_the_inverse_of_decoding_in_latent_space(config):
    cfg = SimpleNamespace(**{"latents_mean": None, "latents_std": None, "shift_factor": None, **config})
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(from_vae_space(cfg, to_vae_space(cfg, x)), x)
    assert not torch.allclose(to_vae_space(cfg, x), x)


def test_an_upcast_fp16_vae_decodes_in_float32_without_casting_the_shared_one():
    vae = _overflowing_fp16_vae(force_upcast=True)
    pipe = SimpleNamespace(vae=vae, casts_vae_in_place=True)  # an SDXL pipeline's
    assert upcast_in_place(pipe) and codec_vae(pipe) is not vae and vae.dtype == torch.float16
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    decoded = decode_latents(pipe, z)
    assert torch.isfinite(decoded).all()
    torch.testing.assert_close(decoded, vae.float().decode(z / vae.config.scaling_factor).sample)  # float32, same weights
    vae.half()
    assert next(vae.parameters()).dtype == torch.float16  # the shared VAE stays as the user loaded it
    assert torch.isfinite(mean_colours(pipe, z)).all()
    assert structure_kept(pipe, z, z.flip(-1).flip(-2)) < 0.9  # the layout is read (not "kept" by default)


def test_an_fp16_vae_that_overflows_without_upcast_warns_instead_of_reading_as_kept():
    vae = _overflowing_fp16_vae(force_upcast=False)
    pipe = SimpleNamespace(vae=vae, casts_vae_in_place=True)
    assert not upcast_in_place(pipe) and codec_vae(pipe) is vae
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    assert not torch.isfinite(decode_latents(pipe, z)).all()  # what the calibration would have read as a layout
    with pytest.warns(UserWarning, match="overflowed"):
        assert structure_kept(pipe, z, z.flip(-1)) == 1.0
    assert mean_colours(pipe, z).isnan().all()  # no colour: the window choice falls back to the latent distance


def test_an_upcast_fp16_vae_encodes_in_float32_and_other_families_keep_their_own_dtype(gen):
    torch.manual_seed(0)
    vae = tiny_vae((8, 16), 16).half()  # force_upcast: AutoencoderKL's default (SD's and SDXL's configs)
    pixels = torch.rand(2, 3, 16, 16, generator=gen(0)) * 2 - 1
    expected = (copy.deepcopy(vae).float().encode(pixels).latent_dist.mean * vae.config.scaling_factor).half()
    latents = encode_pixels(SimpleNamespace(vae=vae, casts_vae_in_place=True), pixels)
    assert latents.dtype == torch.float16 and vae.dtype == torch.float16
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    # SD 1.x/2.x, SD3, Flux and PixArt pipelines encode and decode in the VAE's own dtype whatever force_upcast says
    sd = SimpleNamespace(vae=vae)
    assert codec_vae(sd) is vae and not torch.equal(encode_pixels(sd, pixels), expected)  # fp16 arithmetic differs


def test_an_upcast_copys_latents_keep_the_dtype_the_vae_had_while_another_call_casts_it(gen):
    pipe = tiny_sdxl_pipeline(seed=0)
    pipe.vae.half()
    images = [torch.rand(3, 32, 32, generator=gen(i)) for i in range(2)]
    vae = codec_vae(pipe)
    pipe.vae.float()  # another call's in-place upcast, between the copy and the encode
    try:
        assert encode_images(pipe, images, vae=vae).dtype == torch.float16  # what the fp16 UNet takes
    finally:
        pipe.vae.half()


def test_the_float32_copy_of_an_offloaded_vae_copies_no_other_model():
    from accelerate import cpu_offload_with_hook

    torch.manual_seed(0)
    unet = torch.nn.Linear(64, 64)
    _, unet_hook = cpu_offload_with_hook(unet, "cpu")
    vae = tiny_vae((8, 16), 16).half()
    cpu_offload_with_hook(vae, "cpu", prev_module_hook=unet_hook)  # enable_model_cpu_offload's chain: text, UNet, VAE
    pipe = SimpleNamespace(vae=vae, casts_vae_in_place=True, components={"unet": unet, "vae": vae})
    copied = codec_vae(pipe)
    assert copied is not vae and vae._hf_hook.prev_module_hook is unet_hook  # the pipeline's chain untouched
    assert copied._hf_hook.prev_module_hook is None  # a plain deep copy held a copy of the UNet here
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(decode_latents(pipe, z, copied), tiny_vae_like(vae).decode(z / vae.config.scaling_factor).sample)


def tiny_vae_like(vae: AutoencoderKL) -> AutoencoderKL:
    """A float32 VAE with ``vae``'s config and weights, without its hooks."""
    plain = AutoencoderKL.from_config(vae.config)
    plain.load_state_dict({k: v.float() for k, v in vae.state_dict().items()})
    return plain.eval()


def test_a_pipeline_without_a_vae_steers_to_latents(gen, one_thread):
    base = tiny_sdxl_pipeline(seed=0)
    bare = type(base)(**{**base.components, "vae": None})
    latents = bare("a red bag", num_inference_steps=2, generator=gen(0), output_type="latent").images  # failed: no VAE to lock
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()


def test_an_fp16_sdxl_call_holds_its_vaes_lock_only_where_it_decodes(gen, one_thread):
    pipe = tiny_sdxl_pipeline(seed=0).to(torch.float16)
    free = []

    def probe(p, step, timestep, kwargs):
        free.append(_free_elsewhere(pipe.vae, timeout=0.2))
        return kwargs

    pipe("a red bag", num_inference_steps=2, generator=gen(0), output_type="latent", callback_on_step_end=probe)
    pipe("a red bag", num_inference_steps=2, generator=gen(0), output_type="np", callback_on_step_end=probe)
    assert free == [True, True, False, False]  # latents out: no decode, no wait for other calls on the VAE


def test_image_sets_encode_with_the_pipelines_latent_statistics(gen, one_thread):
    base = tiny_sdxl_pipeline(seed=0)
    stats = _with_vae(base, **STATS)
    images = [torch.rand(3, 32, 32, generator=gen(i)) for i in range(2)]
    plain, normalised = encode_images(base, images), encode_images(stats, images)
    mean = torch.tensor(STATS["latents_mean"]).view(1, 4, 1, 1)
    std = torch.tensor(STATS["latents_std"]).view(1, 4, 1, 1)
    # the same encoder moments, then the per-channel normalisation the SDXL img2img pipeline applies
    torch.testing.assert_close(normalised, (plain / base.vae.config.scaling_factor - mean) * base.vae.config.scaling_factor / std)


def test_two_fp16_sdxl_calls_at_once_do_not_decode_under_each_others_upcast(gen, monkeypatch, one_thread):
    # diffusers' SDXL pipeline casts an fp16 VAE with force_upcast to float32 and back in place around its decode; a
    # second call meanwhile decoded fp16 latents with float32 weights (RuntimeError: Input type (c10::Half) and bias
    # type (float)) before the calls on such a VAE held its lock
    pipe = tiny_sdxl_pipeline(seed=0).to(torch.float16)
    assert upcast_in_place(pipe)
    decode = pipe.vae.decode

    def slow_decode(*args, **kwargs):  # the other call finishes its two steps while this one decodes
        time.sleep(0.2)
        return decode(*args, **kwargs)

    monkeypatch.setattr(pipe.vae, "decode", slow_decode)
    call = dict(num_inference_steps=2, output_type="np")
    alone = pipe("a red bag", generator=gen(0), **call).images
    results = run_in_threads(lambda _: pipe("a red bag", generator=gen(0), **call).images, range(2))
    for images in results.values():
        np.testing.assert_array_equal(images, alone)
    assert pipe.vae.dtype == torch.float16  # cast back as the user loaded it


def _free_elsewhere(vae, timeout: float) -> bool:
    """Whether another thread can take ``vae``'s lock within ``timeout`` seconds (it lets go at once)."""
    taken = []

    def take():
        lock = vae_lock(vae)
        taken.append(lock.acquire(timeout=timeout))
        if taken[0]:
            lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    return taken[0]


def test_calls_on_a_vae_that_is_not_upcast_do_not_wait_for_each_other():
    vae = tiny_vae((8, 16), 16)  # float32: force_upcast changes nothing
    with while_upcast(SimpleNamespace(vae=vae, casts_vae_in_place=True)):
        assert _free_elsewhere(vae, timeout=5)
    half = tiny_vae((8, 16), 16).half()
    with while_upcast(SimpleNamespace(vae=half, casts_vae_in_place=True)):
        assert not _free_elsewhere(half, timeout=0.2)  # an upcast VAE's call holds it
    assert _free_elsewhere(half, timeout=5)
