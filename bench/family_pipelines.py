"""Pipelines of every supported family for the benchmarks: tiny ones (`steer.testing`) and real-size denoisers with
random weights built from the published configs (same FLOPs; nothing downloaded).

A real-size pipeline here is the denoiser at its real size, a VAE of the real depth but few channels (only its scale
factor matters: the benchmarks ask for latents), no text encoders, and random text embeddings of the real shapes
passed as ``prompt_embeds`` (the denoising loop is what steering touches; text encoding is the same in both arms).
"""

from __future__ import annotations

from typing import Any

import torch

FAMILIES = ("sd", "sdxl", "sd3", "pixart", "flux")

# Real-size denoiser configs (diffusers config.json of the public checkpoints, the fields that set the size).
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
                  joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
PIXART_SIGMA = dict(sample_size=128, num_layers=28, attention_head_dim=72, num_attention_heads=16, in_channels=4, out_channels=8,
                    patch_size=2, cross_attention_dim=1152, caption_channels=4096, norm_type="ada_norm_single",
                    norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False, interpolation_scale=2)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
# Text-embedding shapes the real text encoders produce: (tokens, width), pooled width.
TEXT_SHAPES = {"sd": ((77, 768), None), "sdxl": ((77, 2048), 1280), "sd3": ((333, 4096), 2048), "pixart": ((300, 4096), None),
               "flux": ((512, 4096), 768)}


def tiny(family: str) -> Any:
    """The family's tiny random pipeline from `steer.testing` (fp32, CPU)."""
    import importlib

    module, fn = {"sd": ("steer.testing", "tiny_pipeline"), "sdxl": ("steer.testing.sdxl", "tiny_sdxl_pipeline"),
                  "sd3": ("steer.testing.sd3", "tiny_sd3_pipeline"), "pixart": ("steer.testing.pixart", "tiny_pixart_pipeline"),
                  "flux": ("steer.testing.flux", "tiny_flux_pipeline")}[family]
    return getattr(importlib.import_module(module), fn)(seed=0)


def tiny_call_kwargs(family: str) -> dict[str, Any]:
    """Call options the tiny pipelines need (their sizes are not the families' defaults)."""
    return {"pixart": {"use_resolution_binning": False}, "flux": {"height": 16, "width": 16, "max_sequence_length": 16}}.get(family, {})


def real_denoiser(family: str) -> torch.nn.Module:
    """The family's denoiser at real size with random weights (built on the current default device)."""
    from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel

    if family == "sd":
        return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    if family == "sdxl":
        return UNet2DConditionModel(**SDXL_UNET)
    if family == "sd3":
        return SD3Transformer2DModel(**SD3_MEDIUM)
    if family == "pixart":
        return PixArtTransformer2DModel(**PIXART_SIGMA)
    if family == "flux":
        return FluxTransformer2DModel(**FLUX_DEV)
    raise ValueError(f"unknown family {family!r}; one of {FAMILIES}")


def real_size(family: str, device: str, dtype: torch.dtype) -> Any:
    """A steered pipeline of ``family`` with a real-size random denoiser (see the module docstring)."""
    from diffusers import AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler

    from steer.pipelines.factory import STEERED_PIPELINES, steering_class

    with torch.device(device):  # built where it runs: a 12 B transformer is built in seconds on a GPU, minutes on a CPU
        denoiser = real_denoiser(family)
    latent = {"sd3": 16, "flux": 16}.get(family, 4)
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=latent, norm_num_groups=8)
    name = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
            "pixart": "PixArtSigmaPipeline", "flux": "FluxPipeline"}[family]
    assert name in STEERED_PIPELINES, name
    cls = steering_class(name)
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0 if family == "sd3" else 1.0)
    ddim = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    parts: dict[str, Any] = {"vae": vae, "scheduler": flow if family in ("sd3", "flux") else ddim}
    parts["unet" if family in ("sd", "sdxl") else "transformer"] = denoiser
    for comp in ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3",
                 "safety_checker", "feature_extractor", "image_encoder"):
        if comp in cls.__init__.__code__.co_varnames:
            parts[comp] = None
    if "requires_safety_checker" in cls.__init__.__code__.co_varnames:
        parts["requires_safety_checker"] = False
    pipe = cls(**parts).to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def real_call_kwargs(family: str, batch: int, device: str, dtype: torch.dtype, cfg: bool = True) -> dict[str, Any]:
    """Random text embeddings of the real shapes, as the pipeline's ``prompt_embeds`` arguments."""
    (tokens, width), pooled = TEXT_SHAPES[family]
    g = torch.Generator("cpu").manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    kw: dict[str, Any] = {"prompt_embeds": rand(batch, tokens, width)}
    if pooled:
        kw["pooled_prompt_embeds"] = rand(batch, pooled)
    if family == "pixart":
        kw["prompt_attention_mask"] = torch.ones(batch, tokens, device=device, dtype=torch.long)
    if cfg and family != "flux":
        kw["negative_prompt_embeds"] = rand(batch, tokens, width)
        if pooled:
            kw["negative_pooled_prompt_embeds"] = rand(batch, pooled)
        if family == "pixart":
            kw["negative_prompt_attention_mask"] = torch.ones(batch, tokens, device=device, dtype=torch.long)
            kw["negative_prompt"] = None  # PixArt's default "" would be encoded next to the given embeddings
    if family == "pixart":
        kw["use_resolution_binning"] = False
    return kw
