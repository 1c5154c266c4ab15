"""Representations of a set of prompts or images, from forward passes only (what `steer.learn` aggregates).

- ``images``: VAE-encode, noise to a small DDPM timestep, one denoiser pass conditioned on each image's prompt (or the
  empty prompt), spatial-mean pooling of the chosen module outputs (`extract_from_images`, `extract_from_latents`).
- ``reference`` (prompts): `generate_samples`, then extract as for images (the paper's recipe).
- ``fast`` (prompts): the pooled conditional-branch activations recorded *during* sampling, over the last part of the
  run (`extract_during_sampling`).
- ``trajectory`` (prompts): the activations at every step of each prompt's own run, averaged per step bucket
  (`extract_trajectories`; CASteer's recipe).

Every sampling or encoding call holds at most ``batch_size`` images; each sample has its own seed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler
from PIL import Image
from tqdm.auto import tqdm

from steer.calibrate import rows_of, seeded_generators
from steer.denoisers import denoiser_of, denoiser_use, native_size
from steer.engine import ActivationRecorder, step_bucket
from steer.images import open_image, pipeline_picture
from steer.text_tokens import encode_text
from steer.vae_codec import codec_vae, encode_pixels

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
FAST_WINDOW = (0.8, 1.0)

Progress = bool | Callable[[float, str], None]


def is_image_item(item: Any) -> bool:
    if isinstance(item, Image.Image | torch.Tensor):
        return True
    if isinstance(item, str | os.PathLike):
        p = Path(item)
        return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    return False


def _as_items(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, str | os.PathLike | Image.Image) or (isinstance(x, torch.Tensor) and x.ndim == 3):
        return [x]
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return list(x)
    return list(x)


def _as_model_input(image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
    """A PIL image in RGB as files are decoded (greyscale, RGBA, palette and 16-bit were refused as "1 channels");
    a tensor as (3, H, W) in [-1, 1]: uint8 (what torchvision reads) scaled from 0-255 (it was clamped to white), a
    float one within [0, 1] and finite, else one line."""
    if isinstance(image, Image.Image):
        return pipeline_picture(image, "RGB", "an image")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image tensors are (3, height, width) (channels first), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        if image.dtype != torch.uint8:
            raise ValueError(f"image tensors are floats in [0, 1] or uint8 in [0, 255], got {str(image.dtype).replace('torch.', '')}")
        image = image.float() / 255.0
    image = image.float()
    if not bool(torch.isfinite(image).all()):
        raise ValueError("an image tensor holds NaN or infinite values")
    low, high = float(image.min()), float(image.max())
    if low < -1e-3 or high > 1 + 1e-3:  # 0-255 floats were clamped to white
        raise ValueError(f"float image tensors are in [0, 1], got values from {low:g} to {high:g} (uint8 is read as 0-255)")
    return image.clamp(0, 1).expand(3, *image.shape[1:]) * 2 - 1


def _load_image(item: Any) -> Image.Image | torch.Tensor:
    """An image set's item: PIL images and tensors as they are; a path decoded as `steer.images.open_image` does
    (16-bit greyscale scaled, not saturated white; upright by EXIF; bounded in bytes and pixels; one-line ValueError)."""
    if isinstance(item, Image.Image | torch.Tensor):
        return item
    return open_image(item, "image")


def pixel_digest(item: Any) -> str:
    """A digest of what an image set's item gives the VAE (its RGB pixels, or the tensor as read): items with the same
    pixels have the same digest."""
    image = _as_model_input(_load_image(item))
    if isinstance(image, Image.Image):
        shape, data = (image.mode, image.size), image.tobytes()
    else:
        shape, data = tuple(image.shape), image.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(repr(shape).encode() + data).hexdigest()


class _Progress:
    def __init__(self, progress: Progress, total: int, desc: str):
        self.callback = progress if callable(progress) else None
        self.bar = tqdm(total=total, desc=desc, disable=not progress or callable(progress))
        self.total, self.done, self.desc = max(total, 1), 0, desc

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.callback:
            self.callback(min(self.done / self.total, 1.0), self.desc)

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def encode_images(pipe, images: Sequence[Any], height: int | None = None, width: int | None = None,
                  vae: torch.nn.Module | None = None) -> torch.Tensor:
    """VAE-encode images (PIL, paths, or tensors in [0, 1]) to the pipeline's latents (posterior mean, deterministic;
    `steer.vae_codec.encode_pixels`; ``vae``: its `codec_vae`, made once for many calls)."""
    size = native_size(pipe)
    loaded = [_as_model_input(_load_image(item)) for item in images]
    if len({isinstance(im, torch.Tensor) for im in loaded}) > 1:
        raise ValueError("an image set mixes tensors with PIL images or files: give one kind")
    if isinstance(loaded[0], torch.Tensor) and len({tuple(im.shape) for im in loaded}) > 1:
        raise ValueError(f"image tensors must share one size, got {sorted({tuple(im.shape) for im in loaded})[:3]}")
    x = pipe.image_processor.preprocess(loaded, height=height or size, width=width or size) if not isinstance(loaded[0], torch.Tensor) else torch.stack(loaded)
    if x.shape[1] != pipe.vae.config.in_channels:
        raise ValueError(f"images have {x.shape[1]} channels; the VAE expects {pipe.vae.config.in_channels}")
    return encode_pixels(pipe, x, vae)


@torch.no_grad()
def extract_from_latents(
    pipe,
    latents: torch.Tensor,
    prompts: Sequence[str],
    layers: Sequence[str],
    *,
    timestep: int = 10,
    pooling: Literal["mean", "max"] = "mean",
    generator: torch.Generator | None = None,
    batch_size: int = 16,
    progress: Progress = False,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Noise clean latents to ``timestep`` and run one UNet pass; return pooled (N, C) per layer and act norms."""
    unet = denoiser_of(pipe)
    noiser = DDPMScheduler.from_config(pipe.scheduler.config)
    if not 0 <= timestep < noiser.config.num_train_timesteps:
        raise ValueError(f"timestep must be in [0, {noiser.config.num_train_timesteps}), got {timestep}")
    recorder = ActivationRecorder(unet, layers, pooling, cfg=False, branch="both")
    bar = _Progress(progress, len(latents), "extract")
    try:
        with denoiser_use(pipe), recorder:  # the uncompiled module, where the recorder's hooks fire
            for i in range(0, len(latents), batch_size):
                z0 = latents[i : i + batch_size]
                noise = torch.randn(z0.shape, generator=generator, device=generator.device if generator else "cpu").to(z0)
                t = torch.full((len(z0),), timestep, device=z0.device, dtype=torch.long)
                zt = noiser.add_noise(z0, noise, t)
                cond = encode_text(pipe, prompts[i : i + batch_size]).to(zt.dtype)
                extra = pipe.steering_denoiser_kwargs(prompts[i : i + batch_size], zt) if hasattr(pipe, "steering_denoiser_kwargs") else {}
                unet(zt, t, encoder_hidden_states=cond, return_dict=False, **extra)  # extra: e.g. SDXL's added_cond_kwargs
                bar.update(len(z0))
    finally:
        bar.close()
    return {n: recorder.stacked(n) for n in layers}, recorder.activation_norms()


def extract_from_images(
    pipe,
    images: Sequence[Any],
    layers: Sequence[str],
    *,
    prompts: str | Sequence[str] = "",
    timestep: int = 10,
    pooling: Literal["mean", "max"] = "mean",
    seed: int = 0,
    batch_size: int = 16,
    progress: Progress = False,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The paper's extraction on images: encode, noise to t, one UNet pass with the given (or empty) prompt, pool."""
    images = list(images)
    prompts = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts for {len(images)} images")
    vae = codec_vae(pipe)
    latents = torch.cat([encode_images(pipe, images[i : i + batch_size], vae=vae) for i in range(0, len(images), batch_size)])
    gen = torch.Generator(device=latents.device).manual_seed(seed)
    return extract_from_latents(pipe, latents, prompts, layers, timestep=timestep, pooling=pooling, generator=gen, batch_size=batch_size, progress=progress)


def _prompt_batches(prompts: Sequence[str], num_samples: int, batch_size: int, seed: int):
    """Cycle prompts to ``num_samples`` items and yield (prompts, generators) batches with one seed per sample."""
    items = [(prompts[i % len(prompts)], seed + i) for i in range(num_samples)]
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        yield [p for p, _ in chunk], [s for _, s in chunk]


def generate_samples(pipe, prompts: Sequence[str], num_samples: int, *, seed: int = 0, batch_size: int = 8, progress: Progress = False, **call_kwargs: Any) -> tuple[torch.Tensor, list[str]]:
    """Generate ``num_samples`` images (tensors in [0, 1]) cycling through ``prompts``, with seeds ``seed + i``."""
    out, used = [], []
    bar = _Progress(progress, num_samples, "generate")
    try:
        for batch_prompts, seeds in _prompt_batches(prompts, num_samples, batch_size, seed):
            images = pipe(list(batch_prompts), generator=seeded_generators(pipe, seeds), output_type="pt", **rows_of(call_kwargs, len(batch_prompts))).images
            out.append(images.float().cpu())
            used += batch_prompts
            bar.update(len(batch_prompts))
    finally:
        bar.close()
    return torch.cat(out), used


@torch.no_grad()
def extract_during_sampling(
    pipe,
    prompts: Sequence[str],
    num_samples: int,
    layers: Sequence[str],
    *,
    window: tuple[float, float] = FAST_WINDOW,
    pooling: Literal["mean", "max"] = "mean",
    seed: int = 0,
    batch_size: int = 8,
    progress: Progress = False,
    **call_kwargs: Any,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Fast mode: pooled conditional-branch activations recorded while sampling (no decode / re-encode).

    Each sample's representation is the mean over the steps in ``window`` of its pooled activation.
    """
    per_layer: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    norms: dict[str, list[float]] = {n: [] for n in layers}
    bar = _Progress(progress, num_samples, "sample+record")
    try:
        for batch_prompts, seeds in _prompt_batches(prompts, num_samples, batch_size, seed):
            steps, batch_norms = record_steps(pipe, batch_prompts, seeds, layers, pooling, window, **call_kwargs)
            for n in layers:
                if not steps[n]:
                    raise RuntimeError(f"no steps fell inside the capture window {window}; widen it")
                per_layer[n].append(torch.stack(list(steps[n].values())).mean(0))
                norms[n].append(batch_norms[n])
            bar.update(len(batch_prompts))
    finally:
        bar.close()
    return {n: torch.cat(v) for n, v in per_layer.items()}, {n: sum(v) / len(v) for n, v in norms.items()}


@torch.no_grad()
def record_steps(
    pipe, prompts: Sequence[str], seeds: Sequence[int], layers: Sequence[str], pooling: Literal["mean", "max"] = "mean",
    window: tuple[float, float] | None = None, **call_kwargs: Any,
) -> tuple[dict[str, dict[int, torch.Tensor]], dict[str, float]]:
    """Sample ``prompts`` (one seed each, unsteered) and record the pooled conditional-branch activations of ``layers``
    at every step in ``window``: per layer ``{step: (B, C)}``, and each layer's activation norm."""
    call_pipe = pipe._call_copy() if hasattr(pipe, "_call_copy") else pipe
    with denoiser_use(call_pipe, eager=True) as run:  # a compiled graph would not run the recorder's hooks
        recorder = ActivationRecorder(
            denoiser_of(pipe), layers, pooling, window=window,
            num_steps=getattr(run, "steering_num_steps", lambda: len(run.scheduler.timesteps)),
            cfg=getattr(run, "steering_cfg", lambda: run.do_classifier_free_guidance), branch="cond",
        )
        with recorder:
            _plain_call(run, list(prompts), generator=seeded_generators(pipe, seeds), output_type="latent", **rows_of(call_kwargs, len(prompts)))
    return {n: recorder.by_step(n) for n in layers}, recorder.activation_norms()


def _plain_call(pipe, *args: Any, **kwargs: Any):
    """Call the diffusers pipeline's own ``__call__`` (no steering from an enclosing `pipe.steering` block)."""
    parent = getattr(type(pipe), "_steering_parent", type(pipe))
    return parent.__call__(pipe, *args, **kwargs)


@torch.no_grad()
def extract_trajectories(
    pipe, prompts: Sequence[str], seeds: Sequence[int], layers: Sequence[str], buckets: int, batch_size: int = 8, **call_kwargs: Any
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Trajectory mode: conditional-branch activations (mean over positions) at every step of each prompt's own run.

    Returns per layer a (buckets, N, C) tensor (the steps of each bucket averaged) and each layer's activation norm.
    """
    per_layer: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    norms: dict[str, list[float]] = {n: [] for n in layers}
    for i in range(0, len(prompts), batch_size):
        steps, batch_norms = record_steps(pipe, prompts[i : i + batch_size], seeds[i : i + batch_size], layers, **call_kwargs)
        for n in layers:
            total = len(steps[n])
            groups: list[list[torch.Tensor]] = [[] for _ in range(buckets)]
            for k in sorted(steps[n]):  # the same step -> bucket mapping the steering hooks use
                groups[step_bucket(k, buckets, total)].append(steps[n][k])
            if any(not g for g in groups):
                raise ValueError(f"step_buckets={buckets} is more than the {total} sampling steps can fill: the trajectory mode needs "
                                 f"num_inference_steps >= step_buckets ({buckets})")
            per_layer[n].append(torch.stack([torch.stack(g).mean(0) for g in groups]))
            norms[n].append(batch_norms[n])
    return {n: torch.cat(v, 1) for n, v in per_layer.items()}, {n: sum(v) / len(v) for n, v in norms.items()}
