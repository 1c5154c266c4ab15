"""Learning steering vectors training-free: forward passes only.

Three ways to get pooled representations of a set (the paper's extraction is the ``"images"`` one):

- ``images``: VAE-encode, noise to a small DDPM timestep (default t = 10), one UNet pass conditioned on the image's
  prompt (or the empty prompt), spatial-mean pooling of the chosen module outputs.
- ``reference`` (prompts): generate samples with the pipeline, then extract as for images (the paper's recipe).
- ``fast`` (prompts): record the pooled conditional-branch activations *during* sampling, over the last part of the
  run, without decoding or re-encoding.

Aggregation: ``"mean"`` (the paper: mean of the positive set), ``"mean_diff"`` (positive − negative) or ``"pca"``
(first principal direction of paired differences, signed toward the positive set, scaled to their mean projection).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler
from PIL import Image
from tqdm.auto import tqdm

from steer.hooks import ActivationRecorder, default_layers, resolve_layers
from steer.vectors import SteeringVector, unet_fingerprint

Method = Literal["mean", "mean_diff", "pca"]
METHODS = ("mean", "mean_diff", "pca")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
FAST_WINDOW = (0.8, 1.0)

Progress = bool | Callable[[float, str], None]


def _unet(pipe):
    return getattr(pipe.unet, "_orig_mod", pipe.unet)


def _is_image_item(item: Any) -> bool:
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


def _load_image(item: Any) -> Image.Image | torch.Tensor:
    if isinstance(item, Image.Image | torch.Tensor):
        return item
    try:
        with Image.open(item) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {item}: {err}") from None


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
def encode_images(pipe, images: Sequence[Any], height: int | None = None, width: int | None = None) -> torch.Tensor:
    """VAE-encode images (PIL, paths, or tensors in [0, 1]) to scaled latents (posterior mean, deterministic)."""
    vae = pipe.vae
    size = (pipe.unet.config.sample_size if isinstance(pipe.unet.config.sample_size, int) else pipe.unet.config.sample_size[0]) * pipe.vae_scale_factor
    loaded = []
    for item in images:
        im = _load_image(item)
        if isinstance(im, torch.Tensor):
            im = im.float().clamp(0, 1) * 2 - 1
        loaded.append(im)
    x = pipe.image_processor.preprocess(loaded, height=height or size, width=width or size) if not isinstance(loaded[0], torch.Tensor) else torch.stack(loaded)
    x = x.to(device=vae.device, dtype=vae.dtype)
    if x.shape[1] != vae.config.in_channels:
        raise ValueError(f"images have {x.shape[1]} channels; the VAE expects {vae.config.in_channels}")
    return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


@torch.no_grad()
def encode_text(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """Conditional text embeddings, one row per prompt."""
    embeds, _ = pipe.encode_prompt(list(prompts), pipe._execution_device, 1, False)
    return embeds


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
    unet = _unet(pipe)
    noiser = DDPMScheduler.from_config(pipe.scheduler.config)
    if not 0 <= timestep < noiser.config.num_train_timesteps:
        raise ValueError(f"timestep must be in [0, {noiser.config.num_train_timesteps}), got {timestep}")
    recorder = ActivationRecorder(unet, layers, pooling, cfg=False, branch="both")
    bar = _Progress(progress, len(latents), "extract")
    try:
        with recorder:
            for i in range(0, len(latents), batch_size):
                z0 = latents[i : i + batch_size]
                noise = torch.randn(z0.shape, generator=generator, device=generator.device if generator else "cpu").to(z0)
                t = torch.full((len(z0),), timestep, device=z0.device, dtype=torch.long)
                zt = noiser.add_noise(z0, noise, t)
                cond = encode_text(pipe, prompts[i : i + batch_size]).to(zt.dtype)
                pipe.unet(zt, t, encoder_hidden_states=cond, return_dict=False)
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
    latents = torch.cat([encode_images(pipe, images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    gen = torch.Generator(device=latents.device).manual_seed(seed)
    return extract_from_latents(pipe, latents, prompts, layers, timestep=timestep, pooling=pooling, generator=gen, batch_size=batch_size, progress=progress)


def _prompt_batches(prompts: Sequence[str], num_samples: int, batch_size: int, seed: int):
    """Cycle prompts to ``num_samples`` items and yield (prompts, generators) batches with one seed per sample."""
    items = [(prompts[i % len(prompts)], seed + i) for i in range(num_samples)]
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        yield [p for p, _ in chunk], [s for _, s in chunk]


def _generators(pipe, seeds: Sequence[int]) -> list[torch.Generator]:
    dev = pipe._execution_device
    gen_device = "cpu" if dev.type == "mps" else dev
    return [torch.Generator(device=gen_device).manual_seed(s) for s in seeds]


def generate_samples(pipe, prompts: Sequence[str], num_samples: int, *, seed: int = 0, batch_size: int = 8, progress: Progress = False, **call_kwargs: Any) -> tuple[torch.Tensor, list[str]]:
    """Generate ``num_samples`` images (tensors in [0, 1]) cycling through ``prompts``, with seeds ``seed + i``."""
    out, used = [], []
    bar = _Progress(progress, num_samples, "generate")
    try:
        for batch_prompts, seeds in _prompt_batches(prompts, num_samples, batch_size, seed):
            images = pipe(list(batch_prompts), generator=_generators(pipe, seeds), output_type="pt", **call_kwargs).images
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
    unet = _unet(pipe)
    per_layer: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    norms: dict[str, list[float]] = {n: [] for n in layers}
    bar = _Progress(progress, num_samples, "sample+record")
    try:
        for batch_prompts, seeds in _prompt_batches(prompts, num_samples, batch_size, seed):
            call_pipe = pipe._call_copy() if hasattr(pipe, "_call_copy") else pipe
            recorder = ActivationRecorder(
                unet,
                layers,
                pooling,
                window=window,
                num_steps=lambda cp=call_pipe: len(cp.scheduler.timesteps),
                cfg=lambda cp=call_pipe: cp.do_classifier_free_guidance,
                branch="cond",
            )
            with recorder:
                _plain_call(call_pipe, list(batch_prompts), generator=_generators(pipe, seeds), output_type="latent", **call_kwargs)
            for n in layers:
                steps = recorder.by_step(n)
                if not steps:
                    raise RuntimeError(f"no steps fell inside the capture window {window}; widen it")
                per_layer[n].append(torch.stack(list(steps.values())).mean(0))
            for n, v in recorder.activation_norms().items():
                norms[n].append(v)
            bar.update(len(batch_prompts))
    finally:
        bar.close()
    return {n: torch.cat(v) for n, v in per_layer.items()}, {n: sum(v) / len(v) for n, v in norms.items()}


def _plain_call(pipe, *args: Any, **kwargs: Any):
    """Call the parent `StableDiffusionPipeline.__call__` (no steering from an enclosing `pipe.steering` block)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.__call__(pipe, *args, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation
# ----------------------------------------------------------------------------------------------------------------------
def aggregate(positive: torch.Tensor, negative: torch.Tensor | None, method: Method) -> torch.Tensor:
    """Combine pooled representations (N, C) of the two sets into one direction (C,)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    pos = positive.double()
    if method == "mean":
        return pos.mean(0).float()
    if negative is None or len(negative) == 0:
        raise ValueError(f"method={method!r} needs a negative set; pass negative=... or use method='mean' (the paper)")
    neg = negative.double()
    diff_of_means = pos.mean(0) - neg.mean(0)
    if method == "mean_diff":
        return diff_of_means.float()
    n = min(len(pos), len(neg))
    if n < 2:
        raise ValueError("method='pca' needs at least 2 paired samples per set")
    diffs = pos[:n] - neg[:n]
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    pc = vh[0]
    if torch.dot(pc, diff_of_means) < 0:
        pc = -pc
    return (pc * (diffs @ pc).mean()).float()


# ----------------------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------------------
def _describe(items: list) -> dict[str, Any]:
    if items and isinstance(items[0], str) and not _is_image_item(items[0]):
        return {"prompts": list(dict.fromkeys(items))}
    return {"images": len(items)}


def learn_direction(
    pipe,
    positive: Any,
    negative: Any = None,
    *,
    layers: str | Sequence[str] | None = None,
    method: Method = "mean_diff",
    mode: Literal["fast", "reference"] = "reference",
    num_samples: int = 16,
    batch_size: int = 8,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    timestep: int = 10,
    image_prompts: str | Sequence[str] | None = "",
    capture_window: tuple[float, float] = FAST_WINDOW,
    seed: int = 0,
    name: str | None = None,
    progress: Progress = True,
    **call_kwargs: Any,
) -> SteeringVector:
    """Learn a `SteeringVector` from two prompt sets or two image sets, with forward passes only.

    ``positive`` / ``negative``: a prompt, a list of prompts, or a list of images (PIL, tensors in [0, 1], or paths).
    Prompts: ``mode="reference"`` (default) generates ``num_samples`` images per set and extracts from them (the
    paper); ``mode="fast"`` records during sampling, skipping decode and re-encode. On the demo model the fast-mode
    colour direction, although its cosine with the reference one is > 0.9, moved colour the *wrong* way at every
    site tested (docs/benchmarks.md), so it is not the default. Images: encoded, noised to ``timestep``, one UNet pass conditioned on
    ``image_prompts`` (``""`` = empty prompt; or one prompt per image / one for all).
    """
    unet = _unet(pipe)
    layer_names = resolve_layers(unet, layers) if layers is not None else default_layers(unet)
    pos_items, neg_items = _as_items(positive), _as_items(negative)
    if not pos_items:
        raise ValueError("the positive set is empty")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "mean" and not neg_items:
        raise ValueError(f"method={method!r} needs a negative set; pass negative=... or use method='mean' (the paper)")
    image_input = _is_image_item(pos_items[0])
    for label, items in (("positive", pos_items), ("negative", neg_items)):
        kinds = {_is_image_item(i) for i in items}
        if len(kinds) > 1:
            raise ValueError(f"the {label} set mixes prompts and images")
        if items and kinds != {image_input}:
            raise ValueError("positive and negative must both be prompts or both be images")
        for item in items:
            if isinstance(item, str | os.PathLike) and not _is_image_item(item) and Path(item).suffix.lower() in IMAGE_SUFFIXES:
                raise FileNotFoundError(f"image file not found: {item}")

    sample_kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **call_kwargs)
    sets: list[dict[str, torch.Tensor]] = []
    norms: list[dict[str, float]] = []
    for index, items in enumerate((pos_items, neg_items)):
        if not items:
            continue
        set_seed = seed + 1_000_003 * index
        if image_input:
            if image_prompts is None or isinstance(image_prompts, str):
                prompts = image_prompts or ""
            else:
                prompts = list(image_prompts)
                prompts = prompts[: len(items)] if index == 0 else prompts[len(pos_items) :]
            pooled, act = extract_from_images(pipe, items, layer_names, prompts=prompts, timestep=timestep, seed=set_seed, batch_size=batch_size, progress=progress)
        elif mode == "reference":
            images, used = generate_samples(pipe, items, num_samples, seed=set_seed, batch_size=batch_size, progress=progress, **sample_kwargs)
            pooled, act = extract_from_images(pipe, list(images), layer_names, prompts=used, timestep=timestep, seed=set_seed, batch_size=batch_size, progress=progress)
        elif mode == "fast":
            pooled, act = extract_during_sampling(pipe, items, num_samples, layer_names, window=capture_window, seed=set_seed, batch_size=batch_size, progress=progress, **sample_kwargs)
        else:
            raise ValueError(f"mode must be 'fast' or 'reference', got {mode!r}")
        sets.append(pooled)
        norms.append(act)

    directions = {n: aggregate(sets[0][n], sets[1][n] if len(sets) > 1 else None, method) for n in layer_names}
    act_norm = {n: sum(a[n] for a in norms) / len(norms) for n in layer_names}
    source = "images" if image_input else f"prompts-{mode}"
    meta: dict[str, Any] = {
        "name": name or _default_name(pos_items, neg_items, image_input),
        "method": method,
        "source": source,
        "pooling": "mean",
        "timestep": timestep if source != "prompts-fast" else None,
        "capture_window": list(capture_window) if source == "prompts-fast" else None,
        "positive": _describe(pos_items),
        "negative": _describe(neg_items) if neg_items else None,
        "num_samples": num_samples if not image_input else None,
        "sampling": {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale} if not image_input else None,
        "image_prompts": image_prompts if image_input and isinstance(image_prompts, str) else None,
        "seed": seed,
        "activation_norm": act_norm,
        "model": {**unet_fingerprint(unet, layer_names), "name_or_path": str(getattr(pipe, "name_or_path", "") or "")},
    }
    return SteeringVector(directions, meta)


def _default_name(pos: list, neg: list, images: bool) -> str:
    if images:
        return f"images({len(pos)})" + (f" vs images({len(neg)})" if neg else "")
    first = str(pos[0])
    return first if not neg else f"{first} <- {neg[0]}"
