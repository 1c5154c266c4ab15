"""Tiny random-weight Stable Diffusion 3 components from configs (no downloads), for tests and demos."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from transformers import CLIPTextModelWithProjection

from steer.testing import clip_tokenizer
from steer.testing.parts import FLOW_VAE, tiny_clip_config, tiny_t5_encoder, tiny_vae
from steer.testing.t5 import t5_tokenizer

CLIP_WIDTH = 32  # each CLIP encoder's hidden size and projection size (pooled = 2 x 32 = 64)
T5_WIDTH = 64  # = joint_attention_dim: the two CLIP widths side by side fill it exactly (nothing is cropped)


def _clip(seed: int) -> CLIPTextModelWithProjection:
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(tiny_clip_config(CLIP_WIDTH, projection=True)).eval()


def tiny_sd3_components(seed: int = 0, sample_size: int = 16, latent_channels: int = 4) -> dict[str, Any]:
    """`SD3Transformer2DModel` (2 joint blocks, 4 heads of 8, patch 2: ``(sample_size / 2)^2`` image tokens), a x2
    VAE with ``latent_channels`` latent channels (SD3's own 16, which its inpainting pipeline requires, or 4) and
    SD3's shift/scaling factors, two CLIP-with-projection text encoders (width 32), a T5 encoder (width 64, 2 layers)
    and `FlowMatchEulerDiscreteScheduler`, randomly initialised."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=sample_size,
        patch_size=2,
        in_channels=latent_channels,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=2 * CLIP_WIDTH,
        out_channels=latent_channels,
        pos_embed_max_size=sample_size,
    )
    vae = tiny_vae((16, 32), sample_size * 2, latent_channels=latent_channels, **FLOW_VAE)
    torch.manual_seed(seed + 1)
    t5 = tiny_t5_encoder(T5_WIDTH)
    return {
        "transformer": transformer.eval(),
        "vae": vae,
        "text_encoder": _clip(seed + 2),
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": _clip(seed + 3),
        "tokenizer_2": clip_tokenizer(),
        "text_encoder_3": t5,
        "tokenizer_3": t5_tokenizer(),
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sd3_pipeline(seed: int = 0, cls: type | None = None, **kwargs: Any):
    """A `SteeringStableDiffusion3Pipeline` (or ``cls``, e.g. diffusers' own class) on `tiny_sd3_components`; fp32,
    CPU. Its default image is ``2 * sample_size`` pixels square."""
    if cls is None:
        from steer.pipelines.stable_diffusion_3 import SteeringStableDiffusion3Pipeline as cls
    pipe = cls(**tiny_sd3_components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
