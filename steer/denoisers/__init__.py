"""Denoiser adapters: one per denoiser family behind one protocol (`steer.denoisers.base.DenoiserAdapter`).

`adapter_for(model)` picks the family's adapter; the module-level functions below are the engine's way in and take
the denoiser itself (a compiled wrapper is unwrapped), so callers never branch on the family.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from steer.denoisers.base import (
    CONTEXT_SITE,
    GLOB_CHARS,
    DenoiserAdapter,
    channel_dim,
    main_tensor,
    replace_main_tensor,
)
from steer.denoisers.flux import FluxAdapter
from steer.denoisers.pixart import PixArtAdapter
from steer.denoisers.sd3 import SD3Adapter
from steer.denoisers.unet import UNetAdapter
from steer.errors import LayerError

ADAPTERS: list[type[DenoiserAdapter]] = [UNetAdapter, PixArtAdapter, SD3Adapter, FluxAdapter]

__all__ = [
    "ADAPTERS",
    "CONTEXT_SITE",
    "DenoiserAdapter",
    "GLOB_CHARS",
    "LayerError",
    "adapter_for",
    "channel_dim",
    "cross_attention_sites",
    "default_layers",
    "denoiser_of",
    "denoiser_use",
    "layer_channels",
    "list_layers",
    "main_tensor",
    "native_size",
    "register_site_hook",
    "replace_main_tensor",
    "resolve_layers",
    "sites_lock",
    "text_readers",
    "unwrap",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind a `torch.compile` wrapper (diffusers' `unwrap_module`)."""
    from diffusers.utils.torch_utils import unwrap_module

    return unwrap_module(model)


def _denoiser_attribute(pipe: object) -> str:
    return getattr(pipe, "denoiser_name", None) or ("unet" if getattr(pipe, "unet", None) is not None else "transformer")


def denoiser_of(pipe: object) -> nn.Module:
    """A pipeline's denoiser (its ``denoiser_name`` component, else ``unet`` / ``transformer``), uncompiled."""
    return unwrap(getattr(pipe, _denoiser_attribute(pipe)))


# per uncompiled denoiser: the lock of the persistent steering sites `compile_unet` put on it (weak: a dropped model
# takes its lock along; not in the module's ``__dict__``, which would stop it being deep-copied)
_SITE_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_SITE_LOCKS_GUARD = threading.Lock()


def sites_lock(model: nn.Module) -> threading.RLock:
    """The lock serialising every use of ``model`` (uncompiled) once persistent steering sites are on it (made on
    first asking, then kept: a recompile shares it)."""
    with _SITE_LOCKS_GUARD:
        return _SITE_LOCKS.setdefault(unwrap(model), threading.RLock())


@contextlib.contextmanager
def denoiser_use(pipe: Any, eager: bool = False) -> Iterator[Any]:
    """Use ``pipe``'s denoiser: holding its sites' lock (`sites_lock`) while `compile_unet`'s persistent sites are on
    it, whose buffers every call through it, compiled or not, shares. Yields ``pipe``; with ``eager``, a shallow copy
    whose denoiser is the uncompiled module where ``pipe``'s is compiled: hooks added now (recorders) fire there, a
    warm compiled graph ignores them."""
    name = _denoiser_attribute(pipe)
    model = unwrap(getattr(pipe, name))
    with _SITE_LOCKS_GUARD:
        lock = _SITE_LOCKS.get(model)
    with lock if lock is not None else contextlib.nullcontext():
        if eager and getattr(pipe, name) is not model:
            pipe = copy.copy(pipe)
            pipe.__dict__[name] = model
        yield pipe


def native_size(pipe: object) -> int:
    """The image side, in pixels, a pipeline's denoiser was trained for: the pipeline's ``default_sample_size``
    (Flux's transformer has no ``sample_size`` of its own), else the denoiser's, times the VAE scale factor."""
    sample = getattr(pipe, "default_sample_size", None) or denoiser_of(pipe).config.sample_size
    sample = sample if isinstance(sample, int) else sample[0]
    return int(sample) * int(pipe.vae_scale_factor)


def adapter_for(model: nn.Module) -> DenoiserAdapter:
    """The adapter of ``model``'s family (cached on the model). Raises `LayerError` for an unknown denoiser."""
    model = unwrap(model)
    cached = model.__dict__.get("_steer_adapter")
    if cached is not None:
        return cached
    for cls in ADAPTERS:
        if cls.handles(model):
            adapter = cls(model)
            model.__dict__["_steer_adapter"] = adapter
            return adapter
    known = sorted(c for a in ADAPTERS for c in a.model_classes)
    raise LayerError(f"steer does not know the denoiser {type(model).__name__}; supported: {', '.join(known)}")


def list_layers(model: nn.Module, kinds: Iterable[str] | None = None) -> list[str]:
    """Hookable sites of ``model``, from the input side to the output side (``kinds`` as the family defines)."""
    return adapter_for(model).list_layers(kinds)


def default_layers(model: nn.Module) -> list[str]:
    """The family's default steering layers (the paper's, mapped to this layout)."""
    return adapter_for(model).default_layers()


def cross_attention_sites(model: nn.Module) -> list[str]:
    """Every cross-attention module: where the text enters."""
    return adapter_for(model).cross_attention_sites()


def resolve_layers(model: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Expand module paths and glob patterns into site names; `LayerError` names unknown ones."""
    return adapter_for(model).resolve_layers(patterns)


def layer_channels(model: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Output channel count of each named site."""
    return adapter_for(model).layer_channels(names)


def register_site_hook(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None], readers: Sequence[str] | None = None):
    """Hook ``fn(h) -> new h | None`` on site ``name`` (the text site: only where ``readers`` read it, if given);
    returns the removable handle."""
    return adapter_for(model).register_site_hook(name, fn, readers)


def text_readers(model: nn.Module, readers: Sequence[str]) -> list[str]:
    """The cross-attentions ``readers`` (`steering_readers`) names; `LayerError` for none or an unsupported family."""
    return adapter_for(model).text_readers(readers)
