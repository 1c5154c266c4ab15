"""Tiny random-weight Flux.1 components from configs (no downloads), for tests and demos."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextModel

from steer.testing import clip_tokenizer
from steer.testing.parts import FLOW_VAE, tiny_clip_config, tiny_t5_encoder, tiny_vae
from steer.testing.t5 import t5_tokenizer

WIDTH = 32  # CLIP hidden size (= pooled_projection_dim) and T5 width (= joint_attention_dim)
LATENT_CHANNELS = 4  # packed 2x2: the transformer reads 16 channels per token


def tiny_flux_components(seed: int = 0, guidance_embeds: bool = True) -> dict[str, Any]:
    """`FluxTransformer2DModel` (2 double-stream + 2 single-stream blocks, 2 heads of 16, rotary axes (4, 4, 8)), a
    x2 VAE with 4 latent channels and Flux-style shift/scaling factors, a CLIP text encoder (width 32, pooled output
    only), a T5 encoder (width 32, 2 layers) and `FlowMatchEulerDiscreteScheduler`, randomly initialised.

    A ``height`` x ``width`` image has ``(height / 4) * (width / 4)`` image tokens (16 at 16 x 16 pixels).
    """
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH,
        pooled_projection_dim=WIDTH,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    vae = tiny_vae((16, 32), 32, latent_channels=LATENT_CHANNELS, **FLOW_VAE)
    torch.manual_seed(seed + 1)
    clip = CLIPTextModel(tiny_clip_config(WIDTH)).eval()
    torch.manual_seed(seed + 2)
    t5 = tiny_t5_encoder(WIDTH)
    return {
        "transformer": transformer.eval(),
        "vae": vae,
        "text_encoder": clip,
        "tokenizer": clip_tokenizer(),
        "text_encoder_2": t5,
        "tokenizer_2": t5_tokenizer(),
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_flux_pipeline(seed: int = 0, cls: type | None = None, **kwargs: Any):
    """A `SteeringFluxPipeline` (or ``cls``, e.g. diffusers' own `FluxPipeline`) on `tiny_flux_components`; fp32, CPU.
    Pass ``height=16, width=16`` (and a short ``max_sequence_length``) to calls: the pipeline's default size is 256."""
    if cls is None:
        from steer.pipelines.flux import SteeringFluxPipeline as cls
    pipe = cls(**tiny_flux_components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
