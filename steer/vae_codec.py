"""The VAE in both directions the way the pipelines themselves use it, for the signals and encodings steer computes.

A pipeline's latents are not the VAE's: SD and SDXL scale them (``scaling_factor``), SD3 and Flux shift and scale them
(``shift_factor``), and some SDXL checkpoints (Playground v2.5) normalise them per channel (``latents_mean`` /
``latents_std``). An fp16 VAE whose config sets ``force_upcast`` (SDXL's) overflows in fp16, so the SDXL pipeline
decodes in float32; decoding it in fp16 gives NaN or inf, which read as no colour and no layout. `decode_latents` and
`encode_pixels` follow the pipelines' rules (diffusers' `StableDiffusionXLPipeline` decode and img2img encode), and
`codec_vae` gives the VAE to run: the pipeline's own, or a float32 copy where it would be upcast (the shared one is
never cast in place: another call may be decoding with it).

The SDXL pipelines themselves do cast the shared VAE in place (``self.vae.to(torch.float32)``, decode,
``self.vae.to(torch.float16)``; their img2img and inpainting siblings when encoding too), so a second call on the same
VAE meanwhile (threads on one pipeline, or pipelines sharing it through ``from_pipe``) decodes fp16 latents with the
float32 weights ("Input type (c10::Half) and bias type (float) should be the same") or under the other call's cast
back. `while_upcast` holds one lock per VAE for such a call, and `codec_vae` takes it to read the VAE's dtype and copy
it: calls on a VAE that is not upcast never wait for each other.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.utils.torch_utils import get_module_execution_device


def needs_upcast(vae: Any) -> bool:
    """Whether the pipelines decode with this VAE in float32: an fp16 VAE whose config sets ``force_upcast``."""
    return getattr(vae, "dtype", None) == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_REGISTRY = threading.Lock()


def vae_lock(vae: Any) -> threading.RLock:
    """The lock of calls that cast ``vae`` in place (one per VAE module, re-entrant)."""
    with _REGISTRY:
        lock = _LOCKS.get(vae)
        if lock is None:
            lock = _LOCKS[vae] = threading.RLock()
        return lock


@contextlib.contextmanager
def while_upcast(vae: Any) -> Iterator[None]:
    """Hold ``vae``'s lock for the block if it `needs_upcast` (read under the lock, so never mid-cast by another
    call): wrap a diffusers call that casts it in place (the SDXL pipelines'); else let go at once."""
    lock = vae_lock(vae)
    lock.acquire()
    held = True
    try:
        if not needs_upcast(vae):
            lock.release()
            held = False
        yield
    finally:
        if held:
            lock.release()


def codec_vae(pipe) -> torch.nn.Module:
    """The VAE to decode and encode with: the pipeline's own, or a float32 copy of it where `needs_upcast` (make it
    once per batch of calls: the copy holds the VAE's weights again)."""
    with vae_lock(pipe.vae):  # not while an SDXL call has it cast to float32 and back
        return copy.deepcopy(pipe.vae).float() if needs_upcast(pipe.vae) else pipe.vae


def _per_channel(config: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, -1, *([1] * (like.ndim - 2)))
    return (torch.tensor(mean).view(shape).to(like.device, like.dtype), torch.tensor(std).view(shape).to(like.device, like.dtype))


def to_vae_space(config: Any, latents: torch.Tensor) -> torch.Tensor:
    """A pipeline's (unpacked) latents as the VAE's decoder takes them."""
    stats = _per_channel(config, latents)
    if stats is not None:
        return latents * stats[1] / config.scaling_factor + stats[0]
    return latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)


def from_vae_space(config: Any, moments: torch.Tensor) -> torch.Tensor:
    """The VAE encoder's latents as the pipeline's latents (the inverse of `to_vae_space`)."""
    stats = _per_channel(config, moments)
    if stats is not None:
        return (moments - stats[0]) * config.scaling_factor / stats[1]
    return (moments - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, vae: torch.nn.Module | None = None) -> torch.Tensor:
    """Images (float32, about [-1, 1], not clamped: a non-finite value is the decode's own) from a pipeline's
    unpacked final latents, as the pipeline decodes them; ``vae``: `codec_vae` made once by the caller."""
    vae = codec_vae(pipe) if vae is None else vae
    param = next(vae.parameters())
    z = to_vae_space(pipe.vae.config, latents.to(get_module_execution_device(vae), torch.float32))
    return vae.decode(z.to(param.dtype)).sample.float()


@torch.no_grad()
def encode_pixels(pipe, pixels: torch.Tensor, vae: torch.nn.Module | None = None) -> torch.Tensor:
    """A pipeline's latents (the posterior mean, in the pipeline VAE's dtype) of images in [-1, 1], as the
    img2img pipelines encode them; ``vae``: `codec_vae` made once by the caller."""
    vae = codec_vae(pipe) if vae is None else vae
    param = next(vae.parameters())
    moments = vae.encode(pixels.to(get_module_execution_device(vae), param.dtype)).latent_dist.mean
    return from_vae_space(pipe.vae.config, moments.float()).to(pipe.vae.dtype)
