"""Tiny random-weight Stable Diffusion XL components from configs (no downloads), for tests and demos.

The UNet keeps SDXL's layout at toy width: three levels, no attention in the first down block and the last up block,
two transformer layers per attention block at the lowest resolution, ``addition_embed_type="text_time"`` (pooled text
plus six size / crop ids). Two CLIP text encoders (the second with a projection) whose penultimate hidden states are
concatenated into the 64-channel text tokens the cross-attentions read.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from steer.testing import clip_tokenizer
from steer.testing.parts import tiny_clip_config, tiny_vae

TEXT_WIDTH = 32  # each text encoder's width; the UNet reads both concatenated (64)
TIME_EMBED = 8  # addition_time_embed_dim: each of the 6 size / crop ids is embedded to this width


def tiny_sdxl_unet(sample_size: int = 8) -> UNet2DConditionModel:
    """An SDXL-layout `UNet2DConditionModel` (32/64/64 channels) with random weights."""
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_WIDTH,
        norm_num_groups=8,
    ).eval()


def tiny_sdxl_components(seed: int = 0, sample_size: int = 8) -> dict[str, Any]:
    """Components of `diffusers.StableDiffusionXLPipeline` (and its img2img sibling), randomly initialised."""
    torch.manual_seed(seed)
    unet = tiny_sdxl_unet(sample_size)
    vae = tiny_vae((16, 32, 32), sample_size * 4)
    text_encoder = CLIPTextModel(tiny_clip_config(TEXT_WIDTH, projection=True)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(tiny_clip_config(TEXT_WIDTH, projection=True)).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": clip_tokenizer(),
        "tokenizer_2": clip_tokenizer(),
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
        "add_watermarker": False,
    }


def tiny_sdxl_pipeline(seed: int = 0, cls: type | None = None, **kwargs: Any):
    """A `SteeringStableDiffusionXLPipeline` (or ``cls``, e.g. the plain diffusers class) on `tiny_sdxl_components`;
    fp32 on the CPU."""
    if cls is None:
        from steer.pipelines.stable_diffusion_xl import SteeringStableDiffusionXLPipeline as cls
    pipe = cls(**tiny_sdxl_components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe
