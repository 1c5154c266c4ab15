"""Component configurations and builders of the lab's small Stable Diffusion pipelines.

Every part is a standard diffusers / transformers class (AutoencoderKL, CLIPTextModel + CLIPTokenizer with the
real 49,408-token CLIP vocabulary, UNet2DConditionModel, DDIMScheduler), only much smaller, so the saved
directory loads with ``StableDiffusionPipeline.from_pretrained`` like any other Stable Diffusion checkpoint.
Also here: the device a lab command runs on, and sampling a pipeline into an image array.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

TEXT_WIDTH = 64
MAX_LENGTH = 16  # captions are at most ~10 tokens ("a purple ankle boot, catalog item 17")

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=32,
    scaling_factor=1.0,  # replaced by the measured 1/std of the latents after VAE training
    mid_block_add_attention=False,
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=TEXT_WIDTH,
    intermediate_size=4 * TEXT_WIDTH,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    projection_dim=TEXT_WIDTH,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=2,  # diffusers reads this as the number of heads
    norm_num_groups=16,
    transformer_layers_per_block=1,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


def build_vae(**overrides):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{**VAE_CONFIG, **overrides})


def build_text_encoder(**overrides):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**{**TEXT_CONFIG, **overrides}))


def build_unet(**overrides):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**{**UNET_CONFIG, **overrides})


def parse_unet_channels(text: str) -> tuple[int, int, int]:
    """``"64,128,128"`` -> the UNet's three block widths (argparse type: a bad value is a one-line usage error)."""
    try:
        widths = tuple(int(x) for x in text.split(","))
    except ValueError:
        widths = ()
    if len(widths) != 3 or any(w < 16 or w > 4096 or w % UNET_CONFIG["norm_num_groups"] for w in widths):
        raise argparse.ArgumentTypeError(f"expected three block widths, multiples of 16 from 16 to 4096, like 64,128,128; got {text!r}")
    return widths


def unet_overrides(channels) -> dict:
    """``build_unet`` keyword arguments for a run's ``--unet-channels`` (None: the demo model's widths)."""
    return {} if channels is None else {"block_out_channels": tuple(int(c) for c in channels)}


def recorded_unet_widths(folder: str | Path) -> list[int] | None:
    """The UNet widths a run folder (its ``checkpoint.json``) or an exported pipeline (``unet/config.json``) was built
    with; None for the demo model's."""
    folder = Path(folder)
    if (folder / "checkpoint.json").is_file():
        return (json.loads((folder / "checkpoint.json").read_text()).get("args") or {}).get("unet_channels")
    if (folder / "unet" / "config.json").is_file():
        widths = json.loads((folder / "unet" / "config.json").read_text()).get("block_out_channels")
        return None if widths is None or list(widths) == list(UNET_CONFIG["block_out_channels"]) else list(widths)
    return None


def build_scheduler(kind: str = "ddim"):
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind == "ddpm":
        cfg = {k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one",)}
        return DDPMScheduler(**cfg)
    return DDIMScheduler(**SCHEDULER_CONFIG)


def build_tokenizer(out_dir: str | Path | None = None, model_max_length: int = MAX_LENGTH):
    """The real CLIP tokenizer (49,408 tokens), written to ``out_dir`` (a temporary folder when None)."""
    import tempfile

    from .tokenizer import write_clip_tokenizer

    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="steer-tok-")
    return write_clip_tokenizer(out_dir, model_max_length=model_max_length)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def assemble_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler if scheduler is not None else build_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_pipeline(pipe, out_dir: str | Path, fp16: bool = True) -> Path:
    """Save as a standard diffusers folder with fp16 safetensors weights (the modules are not changed)."""
    import copy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fp16:
        pipe = copy.deepcopy(pipe)
        for name in ("vae", "text_encoder", "unet"):
            getattr(pipe, name).to(torch.float16)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def load_pipeline(path: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """Load a lab pipeline offline (no hub access) in ``dtype``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path),
        torch_dtype=dtype,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def resolve_device(name: str | None) -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else the CPU."""
    if name in (None, "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int = 0, steps: int = 25, guidance: float = 5.0, batch_size: int = 100) -> np.ndarray:
    """Generate one image per prompt with the pipeline; float32 [N,3,32,32] in [0,1]."""
    outs = []
    for i in range(0, len(prompts), batch_size):
        g = torch.Generator(pipe.device).manual_seed(seed + i)
        res = pipe(prompts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                   output_type="np")
        outs.append(np.asarray(res.images, dtype=np.float32).transpose(0, 3, 1, 2))
    return np.concatenate(outs)

