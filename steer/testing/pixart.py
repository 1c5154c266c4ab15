"""A tiny random-weight PixArt-Sigma pipeline built from configs (no downloads), for tests and demos.

The transformer has sample_size 8 (not one of PixArt's resolution bins): call it with
``use_resolution_binning=False`` (`TINY_CALL`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

from steer.testing.parts import tiny_t5_encoder, tiny_vae
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
    vae = tiny_vae((16, 32), sample_size * 2)
    tokenizer = t5_tokenizer()
    # unlike the SD3 / Flux encoders: T5Config's default dropout (0.1, inactive in eval mode) and a decoder start id
    text_encoder = tiny_t5_encoder(
        text_width, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, dropout_rate=0.1,
    )
    scheduler = DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    return {
        "transformer": transformer.eval(),
        "vae": vae,
        "text_encoder": text_encoder,
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
