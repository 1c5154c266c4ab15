"""Denoiser sites: find the hookable layers of a UNet, their channel counts, and hook one site.

A *site* is a module path whose output (a (B, C, H, W) feature map, a (B, L, C) token sequence, or an output object
holding one) is read or changed, or `CONTEXT_SITE`: the text tokens the denoiser's cross-attentions read.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from steer.errors import LayerError  # noqa: F401  (re-exported)

# The text tokens as every cross-attention of the denoiser reads them (the UNet's ``encoder_hidden_states`` input):
# a site of its own, steered by a pre-forward hook, with one channel per text-embedding dimension.
CONTEXT_SITE = "encoder_hidden_states"


# ----------------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------------
def _block_layers(prefix: str, block: nn.Module) -> list[str]:
    """A block's sites in execution order: resnet, attention, resnet, attention, ..., then resamplers."""
    resnets = list(getattr(block, "resnets", None) or [])
    attentions = list(getattr(block, "attentions", None) or [])
    names: list[str] = []
    is_mid = prefix.startswith("mid_block")
    for i in range(len(resnets)):
        if is_mid:  # mid: resnet0, (attn0, resnet1), ...
            if i > 0 and i - 1 < len(attentions):
                names.append(f"{prefix}.attentions.{i - 1}")
            names.append(f"{prefix}.resnets.{i}")
        else:
            names.append(f"{prefix}.resnets.{i}")
            if i < len(attentions):
                names.append(f"{prefix}.attentions.{i}")
    for sampler in ("downsamplers", "upsamplers"):
        for j, _ in enumerate(getattr(block, sampler, None) or []):
            names.append(f"{prefix}.{sampler}.{j}")
    return names


def list_layers(unet: nn.Module, kinds: Iterable[str] = ("resnets", "attentions")) -> list[str]:
    """Hookable block-level sites of a UNet, ordered from the input side to the output side.

    ``kinds`` filters by the path component (``"resnets"``, ``"attentions"``, ``"downsamplers"``, ``"upsamplers"``).
    """
    kinds = set(kinds)
    names: list[str] = [CONTEXT_SITE] if "context" in kinds and _context_dim(unet) else []
    for i, block in enumerate(getattr(unet, "down_blocks", [])):
        names += _block_layers(f"down_blocks.{i}", block)
    if getattr(unet, "mid_block", None) is not None:
        names += _block_layers("mid_block", unet.mid_block)
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        names += _block_layers(f"up_blocks.{i}", block)
    out = [n for n in names if n == CONTEXT_SITE or n.split(".")[-2] in kinds]
    if "attn2" in kinds:  # the cross-attention outputs inside each attention block, in the same order
        modules = dict(unet.named_modules())
        for block in [n for n in names if n != CONTEXT_SITE and n.split(".")[-2] == "attentions"]:
            inner = [m for m in modules if m.startswith(block + ".") and m.endswith(".attn2")]
            at = out.index(block) + 1 if block in out else len(out)
            out[at:at] = inner
    return out


def _context_dim(unet: nn.Module) -> int | None:
    dim = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
    if isinstance(dim, list | tuple):  # per-block dims: the context site needs one
        dim = dim[0] if len(set(dim)) == 1 else None
    return int(dim) if isinstance(dim, int) else None


def cross_attention_sites(unet: nn.Module) -> list[str]:
    """Every cross-attention (``attn2``) module of a UNet, from the input side to the output side.

    These are where the text enters the denoiser; their outputs are token sequences (B, H*W, C) added to the
    residual stream of each transformer block.
    """
    return list_layers(unet, ("attn2",))


def default_layers(unet: nn.Module) -> list[str]:
    """The paper's steering layers mapped to this UNet's layout.

    SD1.x: ``up_blocks.0.resnets.0-2`` and ``up_blocks.1.resnets.0-1``. In general: every resnet of the
    lowest-resolution up block plus all but the last resnet of the next one.
    """
    ups = list(getattr(unet, "up_blocks", []))
    if not ups:
        raise LayerError("this UNet has no up_blocks; pass layers explicitly (see steer.hooks.list_layers)")
    names = [f"up_blocks.0.resnets.{i}" for i in range(len(ups[0].resnets))]
    if len(ups) > 1:
        names += [f"up_blocks.1.resnets.{i}" for i in range(max(len(ups[1].resnets) - 1, 1))]
    return names


def resolve_layers(unet: nn.Module, patterns: str | Iterable[str]) -> list[str]:
    """Expand exact module paths and glob patterns (``"up_blocks.0.resnets.*"``) into module paths.

    Raises `LayerError` naming the unknown entry and its closest matches.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    modules = dict(unet.named_modules())
    candidates = [n for n in modules if n]
    out: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            hits = [n for n in list_layers(unet, ("resnets", "attentions", "downsamplers", "upsamplers")) if fnmatch.fnmatchcase(n, pattern)]
            hits = hits or [n for n in candidates if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise LayerError(f"layer pattern {pattern!r} matches no module of this UNet; e.g. {list_layers(unet)[:6]}")
        elif (pattern in modules and pattern) or (pattern == CONTEXT_SITE and _context_dim(unet)):
            hits = [pattern]
        else:
            close = difflib.get_close_matches(pattern, candidates, n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; hookable layers include {list_layers(unet)[:8]}"
            raise LayerError(f"unknown layer {pattern!r}{hint}")
        out += [h for h in hits if h not in out]
    return out


def _main_tensor(output: Any) -> torch.Tensor:
    """The hidden-state tensor inside a module output (a tensor, a tuple, or an output object with ``.sample``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise TypeError(f"cannot find a hidden-state tensor in a module output of type {type(output).__name__}")


def register_site_hook(unet: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Hook ``fn(h) -> new h | None`` on site ``name``: a module's output, or (`CONTEXT_SITE`) the UNet's text input.

    Returns the removable handle.
    """
    if name == CONTEXT_SITE:
        def pre(_module: nn.Module, args: tuple, kwargs: dict) -> Any:
            if "encoder_hidden_states" in kwargs:
                h = kwargs["encoder_hidden_states"]
                new = fn(h) if isinstance(h, torch.Tensor) else None
                return None if new is None else (args, {**kwargs, "encoder_hidden_states": new})
            if len(args) > 2 and isinstance(args[2], torch.Tensor):
                new = fn(args[2])
                return None if new is None else ((*args[:2], new, *args[3:]), kwargs)
            return None

        return unet.register_forward_pre_hook(pre, with_kwargs=True)

    def post(_module: nn.Module, _args: Any, output: Any) -> Any:
        new = fn(_main_tensor(output))
        return None if new is None else _replace_main_tensor(output, new)

    return dict(unet.named_modules())[name].register_forward_hook(post)


def _replace_main_tensor(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    output.sample = new  # diffusers BaseOutput
    return output


def _channel_dim(h: torch.Tensor) -> int:
    """Channel axis: 1 for (B, C, H, W) and (B, C); -1 for token sequences (B, L, C)."""
    return -1 if h.ndim == 3 else 1


def _probe_channels(unet: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Run one tiny forward to read output channel counts (for modules without an ``out_channels`` attribute)."""
    modules = dict(unet.named_modules())
    seen: dict[str, int] = {}
    handles = []
    for name in names:
        def hook(_m, _a, out, name=name):
            h = _main_tensor(out)
            seen[name] = int(h.shape[_channel_dim(h)])
        handles.append(modules[name].register_forward_hook(hook))
    cfg = unet.config
    param = next(unet.parameters())
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    size = max(8, min(int(size), 2 ** (len(cfg.block_out_channels) - 1) * 4))
    try:
        with torch.no_grad():
            unet(
                torch.zeros(1, cfg.in_channels, size, size, device=param.device, dtype=param.dtype),
                torch.tensor([10], device=param.device),
                encoder_hidden_states=torch.zeros(1, 1, cfg.cross_attention_dim, device=param.device, dtype=param.dtype),
            )
    finally:
        for h in handles:
            h.remove()
    return seen


def layer_channels(unet: nn.Module, names: Sequence[str]) -> dict[str, int]:
    """Output channel count of each named module (cached on the UNet)."""
    cache: dict[str, int] = unet.__dict__.setdefault("_steer_channels", {})
    modules = dict(unet.named_modules())
    resolve_layers(unet, [n for n in names if n not in modules])  # raises a helpful error for unknown names
    todo = []
    for name in names:
        if name in cache:
            continue
        if name == CONTEXT_SITE:
            cache[name] = _context_dim(unet)
            continue
        out_ch = getattr(modules[name], "out_channels", None)
        if isinstance(out_ch, int):
            cache[name] = out_ch
        else:
            todo.append(name)
    if todo:
        cache.update(_probe_channels(unet, todo))
    return {n: cache[n] for n in names}
