"""Tiny random-weight pipelines built from configs (no downloads), for tests, benchmarks and demos."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from steer.assets import ASSETS  # noqa: E402

TOKENIZER_DIR = ASSETS / "clip-tokenizer"


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer committed under ``assets/clip-tokenizer``."""
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), model_max_length=model_max_length)


def tiny_components(seed: int = 0, sample_size: int = 8, text_width: int = 32) -> dict:
    """UNet (32->64 channels, SD-style block layout), VAE (x4), CLIP text encoder and DDIM, randomly initialised."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=text_width,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=sample_size * 4,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=text_width,
            intermediate_size=2 * text_width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": clip_tokenizer(),
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def tiny_pipeline(seed: int = 0, cls=None, **kwargs):
    """A `SteeringStableDiffusionPipeline` (or ``cls``) on `tiny_components`; fp32 on the CPU."""
    if cls is None:
        from steer.pipelines.stable_diffusion import SteeringStableDiffusionPipeline as cls
    pipe = cls(**tiny_components(seed, **kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_one_line_error(rc: object, err: str, *needles: str, prefix: str = "") -> str:
    """A command line's refusal as the project promises it: exit status 2, exactly one stderr line (starting with
    ``prefix`` and containing every needle), no traceback. Returns the line."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), f"expected one '{prefix}...' line on stderr, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
