"""Editing pipelines with steering: image-to-image and inpainting (SD, SDXL, SD3) and ControlNet (SD, SDXL) on tiny
random-weight components (CPU, fp32): exactly the parent unsteered, the edit inside the mask only, the window over the
steps performed, the ControlNet never steered, hooks gone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel

import steer
from steer.denoisers import CONTEXT_SITE
from steer.pipelines.controlnet import (
    SteeringStableDiffusionControlNetPipeline,
    SteeringStableDiffusionXLControlNetPipeline,
)
from steer.pipelines.img2img import (
    SteeringStableDiffusion3Img2ImgPipeline,
    SteeringStableDiffusionImg2ImgPipeline,
    SteeringStableDiffusionXLImg2ImgPipeline,
)
from steer.pipelines.inpaint import (
    SteeringStableDiffusion3InpaintPipeline,
    SteeringStableDiffusionInpaintPipeline,
    SteeringStableDiffusionXLInpaintPipeline,
)
from steer.testing import no_hooks_left, random_vector, tiny_components
from steer.testing.sd3 import tiny_sd3_components
from steer.testing.sdxl import tiny_sdxl_components

PROMPT = "a red bag"
SIDE = 32  # the tiny VAE's image side (8 latents x 4)


def _pipe(cls, kind: str, **extra):
    parts = {"sd": tiny_components, "sdxl": tiny_sdxl_components}[kind](0) if kind != "sd3" else tiny_sd3_components(0, latent_channels=16)
    if "ControlNet" in cls.__name__:
        torch.manual_seed(1)
        extra["controlnet"] = ControlNetModel.from_unet(parts["unet"], conditioning_embedding_out_channels=(8, 16, 16)).eval()
    parts = {k: v for k, v in parts.items() if k in cls.__init__.__code__.co_varnames}
    pipe = cls(**parts, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def _left_half_mask() -> torch.Tensor:
    mask = torch.zeros(1, 1, SIDE, SIDE)
    mask[..., : SIDE // 2] = 1.0  # white (1) is repainted, black (0) kept
    return mask


INPAINT = [("sd", SteeringStableDiffusionInpaintPipeline), ("sdxl", SteeringStableDiffusionXLInpaintPipeline),
           ("sd3", SteeringStableDiffusion3InpaintPipeline)]
CONTROL = [("sd", SteeringStableDiffusionControlNetPipeline), ("sdxl", SteeringStableDiffusionXLControlNetPipeline)]


@pytest.mark.parametrize(("kind", "cls"), INPAINT, ids=[k for k, _ in INPAINT])
def test_inpainting_is_the_parent_unsteered_and_edits_inside_the_mask_only(kind, cls, gen):
    pipe = _pipe(cls, kind)
    v = random_vector(pipe, [CONTEXT_SITE], scale=4.0)
    kw = dict(image=_image(), mask_image=_left_half_mask(), num_inference_steps=4, strength=1.0, output_type="latent")
    plain = cls._steering_parent.__call__(pipe, PROMPT, generator=gen(0), **kw).images
    assert torch.equal(pipe(PROMPT, generator=gen(0), **kw).images, plain)
    assert torch.equal(pipe(PROMPT, generator=gen(0), steering=v, steering_scale=0.0, **kw).images, plain)
    steered = pipe(PROMPT, generator=gen(0), steering=v, steering_window=(0, 1), **kw).images
    assert no_hooks_left(pipe.denoiser)
    left, right = slice(0, plain.shape[-1] // 2), slice(plain.shape[-1] // 2, None)
    # a plain denoiser (4 latent channels; SD3's 16): the kept half is blended back from the image at every step, so
    # it ends exactly as unsteered
    assert torch.equal(steered[..., right], plain[..., right])
    assert (steered[..., left] - plain[..., left]).abs().mean() > 1e-3


EDITS = [("sd", SteeringStableDiffusionImg2ImgPipeline), ("sdxl", SteeringStableDiffusionXLImg2ImgPipeline),
         ("sd3", SteeringStableDiffusion3Img2ImgPipeline), *INPAINT]


@pytest.mark.parametrize(("kind", "cls"), EDITS, ids=[f"{k}-{c.__name__[8:]}" for k, c in EDITS])
def test_an_edits_window_is_measured_over_the_steps_the_run_performs(kind, cls, gen, monkeypatch):
    import steer.engine.steering as steering_module

    pipe = _pipe(cls, kind)
    v = random_vector(pipe, ["transformer_blocks.0" if kind == "sd3" else "up_blocks.1.resnets.0"])
    calls, applied = [0], []
    real = steering_module.apply_delta

    def counting(h, *a, **k):
        applied.append(calls[0] - 1)
        return real(h, *a, **k)

    monkeypatch.setattr(steering_module, "apply_delta", counting)
    counter = pipe.denoiser.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    kw = dict(image=_image(), strength=0.5, num_inference_steps=10, output_type="np",
              **({"mask_image": _left_half_mask()} if "Inpaint" in cls.__name__ else {}))
    try:
        steered = pipe(PROMPT, generator=gen(0), steering=v, steering_window=(0.5, 1.0), **kw).images
    finally:
        counter.remove()
    assert calls[0] == 5 and pipe.num_timesteps == 5  # strength 0.5 of 10 steps
    assert applied == [3, 4]  # the last half of the 5 run steps (window_bounds((0.5, 1), 5)), not of 10
    plain = cls._steering_parent.__call__(pipe, PROMPT, generator=gen(0), **kw).images
    assert np.array_equal(pipe(PROMPT, generator=gen(0), **kw).images, plain)
    assert not np.array_equal(steered, plain)
    assert no_hooks_left(pipe.denoiser)


def test_sdxl_controlnet_window_is_measured_over_the_steps_denoising_end_leaves(gen, monkeypatch):
    """diffusers' SDXL ControlNet pipeline counts its steps before cutting them at ``denoising_end``: the window
    (0.5, 1) of a 10-step run cut to 5 steered none of them (it does on the SDXL text-to-image pipeline)."""
    import steer.engine.steering as steering_module

    pipe = _pipe(SteeringStableDiffusionXLControlNetPipeline, "sdxl")
    v = random_vector(pipe, ["up_blocks.1.resnets.0"])
    calls, applied = [0], []
    real = steering_module.apply_delta
    monkeypatch.setattr(steering_module, "apply_delta", lambda h, *a, **k: applied.append(calls[0] - 1) or real(h, *a, **k))
    counter = pipe.denoiser.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    kw = dict(image=_image(2), num_inference_steps=10, denoising_end=0.5, output_type="latent")
    try:
        steered = pipe(PROMPT, generator=gen(0), steering=v, steering_window=(0.5, 1.0), **kw).images
    finally:
        counter.remove()
    assert calls[0] == 5 and applied == [3, 4]  # the last half of the 5 steps run
    assert not torch.equal(steered, pipe(PROMPT, generator=gen(0), **kw).images)
    assert no_hooks_left(pipe.denoiser)


@pytest.mark.parametrize(("kind", "cls"), CONTROL, ids=[k for k, _ in CONTROL])
def test_controlnet_is_the_parent_unsteered_and_only_the_unet_is_steered(kind, cls, gen):
    pipe = _pipe(cls, kind)
    v = random_vector(pipe, ["down_blocks.0.attentions.0.transformer_blocks.0.attn2" if kind == "sd" else CONTEXT_SITE], scale=4.0)
    kw = dict(image=_image(2), num_inference_steps=3, output_type="np")
    plain = cls._steering_parent.__call__(pipe, PROMPT, generator=gen(0), **kw).images
    assert np.array_equal(pipe(PROMPT, generator=gen(0), steering=v, steering_scale=0.0, **kw).images, plain)

    residuals: list[list[torch.Tensor]] = []

    def record(_m, _args, out):
        residuals.append([t.detach().clone() for t in (*out[0], out[1])])

    runs = []
    for scale in (0.0, 1.0):
        handle = pipe.controlnet.register_forward_hook(record)
        try:
            runs.append(pipe(PROMPT, generator=gen(0), steering=v, steering_scale=scale, steering_window=(0, 1), **kw).images)
        finally:
            handle.remove()
    assert not np.array_equal(runs[1], runs[0])
    first_plain, first_steered = residuals[0], residuals[len(residuals) // 2]
    # the first step's ControlNet reads the same latents and text in both runs: its residuals are untouched
    assert all(torch.equal(a, b) for a, b in zip(first_plain, first_steered, strict=True))
    assert no_hooks_left(pipe.unet) and no_hooks_left(pipe.controlnet)


def test_steering_pipeline_maps_the_editing_pipelines_and_from_pipe_shares_the_modules(gen):
    from diffusers import StableDiffusionInpaintPipeline

    plain = StableDiffusionInpaintPipeline(**{k: v for k, v in tiny_components(0).items() if k != "image_encoder"})
    plain.set_progress_bar_config(disable=True)
    pipe = steer.steering_pipeline(plain)
    assert isinstance(pipe, SteeringStableDiffusionInpaintPipeline) and pipe.unet is plain.unet
    text = steer.SteeringStableDiffusionPipeline.from_pipe(pipe)
    again = steer.SteeringStableDiffusionInpaintPipeline.from_pipe(text)
    assert again.unet is plain.unet and again.vae is plain.vae
    kw = dict(image=_image(), mask_image=_left_half_mask(), num_inference_steps=2, output_type="np")
    np.testing.assert_array_equal(again(PROMPT, generator=gen(0), **kw).images, plain(PROMPT, generator=gen(0), **kw).images)


def test_an_editing_pipeline_of_a_compiled_pipeline_steers_through_its_compiled_sites(gen):
    """`compile_unet` then `editing_pipeline` (``steer generate --compile --image``, a batch of edits): the editing
    pipeline shares the compiled denoiser and its persistent steering sites, so a steered edit runs (a compiled
    denoiser without sites refuses hooks) and equals the uncompiled edit."""
    from steer.pipelines.factory import editing_pipeline

    eager = _pipe(steer.SteeringStableDiffusionPipeline, "sd")
    compiled = _pipe(steer.SteeringStableDiffusionPipeline, "sd")
    compiled.compile_unet(backend="eager")
    v = random_vector(eager, [CONTEXT_SITE], scale=4.0)
    kw = dict(image=_image(), num_inference_steps=4, strength=0.75, output_type="np", steering=v, steering_window=(0, 1))
    edits = [editing_pipeline(p, "img2img") for p in (eager, compiled)]
    assert edits[1].unet is compiled.unet
    rows = [e(PROMPT, generator=gen(0), **kw).images for e in edits]
    np.testing.assert_allclose(rows[1], rows[0], atol=1e-6)
    assert np.abs(rows[0] - edits[0](PROMPT, generator=gen(0), **{**kw, "steering_scale": 0.0}).images).mean() > 1e-3


def test_pil_pictures_of_any_mode_edit_as_their_rgb_decoding(gen):
    """diffusers takes a 4-channel picture for ready-made latents: an RGBA or CMYK photo gave a noise texture four
    times its size, without an error; greyscale failed deep in torch. Now each edits as its RGB decoding (masks as
    greyscale), and a picture under 8 pixels a side is one line."""
    from PIL import Image

    pipe = _pipe(SteeringStableDiffusionImg2ImgPipeline, "sd")
    rgb = Image.fromarray((_image()[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    kw = dict(num_inference_steps=4, strength=0.5, output_type="np")
    for mode in ("RGBA", "CMYK", "L"):
        picture = rgb.convert(mode)
        out = pipe(PROMPT, image=picture, generator=gen(0), **kw).images
        expected = pipe(PROMPT, image=picture.convert("RGB"), generator=gen(0), **kw).images
        assert out.shape == (1, SIDE, SIDE, 3) and np.array_equal(out, expected), mode
    positional = SteeringStableDiffusionImg2ImgPipeline.__call__(pipe, PROMPT, rgb.convert("RGBA"), generator=gen(0), **kw).images
    assert np.array_equal(positional, pipe(PROMPT, image=rgb, generator=gen(0), **kw).images)
    with pytest.raises(ValueError, match="^image is 1x1 pixels: at least 8 a side$"):
        pipe(PROMPT, image=Image.new("RGB", (1, 1)), **kw)
    inpaint = _pipe(SteeringStableDiffusionInpaintPipeline, "sd")
    mask = Image.fromarray((_left_half_mask()[0, 0].numpy() * 255).astype(np.uint8))
    a = inpaint(PROMPT, image=rgb, mask_image=mask.convert("RGBA"), generator=gen(0), **kw).images
    assert np.array_equal(a, inpaint(PROMPT, image=rgb, mask_image=mask, generator=gen(0), **kw).images)


def test_a_steering_block_reaches_the_editing_and_text_pipelines_made_from_its_pipeline(gen):
    """``with pipe.steering(v, 2)`` steers calls on ``pipe``'s `with_sampler` copies, editing and text pipelines,
    made before or inside the block (`editing_pipeline` copies ignored it: their calls were unsteered); a pipeline
    made by ``from_pipe`` is one of its own, which the block leaves alone."""
    from steer.pipelines.factory import editing_pipeline, text_pipeline

    pipe = _pipe(steer.SteeringStableDiffusionPipeline, "sd")
    v = random_vector(pipe, [CONTEXT_SITE], scale=4.0)
    edit = editing_pipeline(pipe, "img2img")
    kw = dict(image=_image(), num_inference_steps=4, strength=0.75, output_type="np")
    plain = edit(PROMPT, generator=gen(0), **kw).images
    steered = edit(PROMPT, generator=gen(0), steering=v, steering_scale=2.0, steering_window=(0, 1), **kw).images
    text_kw = dict(num_inference_steps=4, output_type="np")
    text_steered = pipe(PROMPT, generator=gen(0), steering=v, steering_scale=2.0, steering_window=(0, 1), **text_kw).images
    with pipe.steering(v, 2.0, window=(0, 1)):
        np.testing.assert_array_equal(edit(PROMPT, generator=gen(0), **kw).images, steered)
        np.testing.assert_array_equal(editing_pipeline(pipe, "img2img")(PROMPT, generator=gen(0), **kw).images, steered)
        np.testing.assert_array_equal(text_pipeline(edit)(PROMPT, generator=gen(0), **text_kw).images, text_steered)
        own = SteeringStableDiffusionImg2ImgPipeline.from_pipe(pipe)
        np.testing.assert_array_equal(own(PROMPT, generator=gen(0), **kw).images, plain)
    assert not np.array_equal(plain, steered)
