"""A tiny random-weight PixArt-Sigma pipeline built from configs (no downloads), for tests and demos.

The transformer has sample_size 8 (not one of PixArt's resolution bins): call it with
``use_resolution_binning=False`` (`TINY_CALL`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel
from transformers import T5Config, T5EncoderModel

from steer.testing.t5 import t5_tokenizer

# Arguments every call of the tiny pipeline takes: its sample size has no resolution bin; captions are not cleaned
# (cleaning needs bs4 and ftfy and warns twice per call without them).
TINY_CALL: dict[str, Any] = {"use_resolution_binning": False, "clean_caption": False}


def tiny_pixart_components(seed: int = 0, sample_size: int = 8, text_width: int = 32) -> dict[str, Any]:
    """PixArt transformer (3 blocks, 3 heads x 8, patch 2, learned sigma), T5 encoder (2 layers, d_model
    ``text_width``), VAE (x2) and DPM-Solver++, randomly initialised from ``seed``."""
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=3,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=text_width,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size * 2,
    )
    tokenizer = t5_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=text_width,
            d_kv=8,
            d_ff=2 * text_width,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    return {
        "transformer": transformer.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def tiny_pixart_pipeline(seed: int = 0, cls: type | None = None, **kwargs: Any):
    """A `SteeringPixArtSigmaPipeline` (or ``cls``) on `tiny_pixart_components`; fp32 on the CPU."""
    if cls is None:
        from steer.pipelines.pixart import SteeringPixArtSigmaPipeline as cls
    pipe = cls(**tiny_pixart_components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
