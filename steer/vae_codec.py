"""The VAE in both directions as the pipelines use it, for the signals and encodings steer computes.

A pipeline's latents are not the VAE's: SD and SDXL scale them (``scaling_factor``), SD3 and Flux shift and scale them
(``shift_factor``), and some SDXL checkpoints (Playground v2.5) normalise them per channel (``latents_mean`` /
``latents_std``). `decode_latents` and `encode_pixels` follow the pipelines' rules (diffusers'
`StableDiffusionXLPipeline` decode and img2img encode).

The SDXL pipelines (`casts_vae_in_place` on the steered class) run a VAE whose config sets ``force_upcast`` in float32
by casting the shared VAE in place: the text-to-image decode an fp16 one (``self.vae.to(torch.float32)``, decode,
``self.vae.to(torch.float16)``: SDXL's VAE overflows in fp16, to NaN or inf, which would read as no colour and no
layout), the img2img and inpainting encodes any that is not float32. So `codec_vae` gives such a VAE as a float32 copy
(the shared one is never cast here), and a second call on the same VAE while one casts it (threads on one pipeline, or
pipelines sharing it through ``from_pipe``) decoded fp16 latents with the float32 weights ("Input type (c10::Half) and
bias type (float) should be the same") or under the other call's cast back: `while_upcast` holds one lock per VAE for
such a call, and `codec_vae` takes it to read the VAE's dtype and copy it. Calls on other VAEs never wait; every other
family (SD 1.x/2.x, SD3, Flux, PixArt) decodes and encodes in the VAE's own dtype, as its pipelines do.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch

try:
    from diffusers.utils.torch_utils import get_module_execution_device
except ImportError:  # diffusers before 0.41: the offload hook's device, else the weights'
    def get_module_execution_device(module: torch.nn.Module) -> torch.device:
        for submodule in module.modules():
            device = getattr(getattr(submodule, "_hf_hook", None), "execution_device", None)
            if device is not None:
                return torch.device(device)
        return next(module.parameters()).device


def upcast_in_place(pipe) -> bool:
    """Whether ``pipe``'s calls run its VAE in float32 by casting it in place (the SDXL pipelines', where the VAE's
    config sets ``force_upcast`` and it is not float32): steer then decodes and encodes with a float32 copy."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not getattr(pipe, "casts_vae_in_place", False):
        return False
    return getattr(vae, "dtype", torch.float32) != torch.float32 and bool(getattr(vae.config, "force_upcast", False))


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
def while_upcast(pipe) -> Iterator[None]:
    """Hold the lock of ``pipe``'s VAE for the block where the call may cast it in place (`upcast_in_place`, read
    under the lock, so never mid-cast by another call); else let go at once."""
    if getattr(pipe, "vae", None) is None:  # a pipeline without a VAE (latents out): nothing is cast
        yield
        return
    lock = vae_lock(pipe.vae)
    lock.acquire()
    held = True
    try:
        if not upcast_in_place(pipe):
            lock.release()
            held = False
        yield
    finally:
        if held:
            lock.release()


def codec_vae(pipe) -> torch.nn.Module:
    """The VAE to decode and encode with: the pipeline's own, or a float32 copy of it where `upcast_in_place` (make it
    once for many calls: the copy holds the VAE's weights again). The copy shares nothing with the other components:
    under ``enable_model_cpu_offload`` the VAE's offload hook links to the previous model's (the UNet's), which a
    plain deep copy would copy too."""
    with vae_lock(pipe.vae):  # not while an SDXL call has it cast to float32 and back
        if not upcast_in_place(pipe):
            return pipe.vae
        memo: dict[int, Any] = {}
        for module in (getattr(pipe, "components", None) or {}).values():
            if isinstance(module, torch.nn.Module) and module is not pipe.vae:
                memo[id(module)] = module  # never copied (shared, as they are)
        for module in pipe.vae.modules():
            previous = getattr(getattr(module, "_hf_hook", None), "prev_module_hook", None)
            if previous is not None:
                memo[id(previous)] = None  # the copy offloads no other model before it runs
        dtype = pipe.vae.dtype
        vae = copy.deepcopy(pipe.vae, memo).float()
    vae.steer_latents_dtype = dtype  # what the pipeline's latents are in (encode_pixels gives them back so)
    return vae


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
    # a float32 copy's latents in the dtype the VAE had when copied (the shared one may be cast by another call now)
    return from_vae_space(pipe.vae.config, moments.float()).to(getattr(vae, "steer_latents_dtype", param.dtype))
