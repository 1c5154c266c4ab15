"""Tiny random-weight Flux.1 components from configs (no downloads), for tests and demos."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from steer.testing import clip_tokenizer
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
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    torch.manual_seed(seed + 1)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=WIDTH, intermediate_size=2 * WIDTH, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    ).eval()
    torch.manual_seed(seed + 2)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=1000, d_model=WIDTH, d_kv=8, d_ff=2 * WIDTH, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
        )
    ).eval()
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
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
