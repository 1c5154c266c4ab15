"""Which denoiser a direction or detector was made on: `unet_fingerprint` (class, architecture, config hash, a hash of
a few weights and of the LoRA adapters) for `SteeringVector.check_compatible` and the memorization detector."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from steer.denoisers import layer_channels

# Config keys that decide the architecture (and hence which module paths and channel counts exist).
_ARCH_KEYS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "down_block_types",
    "up_block_types",
    "mid_block_type",
    "cross_attention_dim",
    "attention_head_dim",
    "transformer_layers_per_block",
    "norm_num_groups",
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # 0-d tensors and numpy scalars
        return value.item()
    return str(value)


def unet_fingerprint(unet: torch.nn.Module, layers: Iterable[str] | None = None) -> dict[str, Any]:
    """Identify a UNet: class, architecture summary, config hash and a hash of a few weights.

    ``layers`` adds their output channel counts (see `steer.denoisers.layer_channels`).
    """
    config = dict(getattr(unet, "config", {}) or {})
    clean = {k: _jsonable(v) for k, v in sorted(config.items()) if not k.startswith("_")}
    arch = {k: clean[k] for k in _ARCH_KEYS if k in clean}
    config_hash = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]
    fp: dict[str, Any] = {
        "unet_class": type(unet).__name__,
        "architecture": arch,
        "config_hash": config_hash,
        "weights_hash": weights_hash(unet),
    }
    if layers is not None:
        fp["channels"] = layer_channels(unet, list(layers))
    return fp


def weights_hash(unet: torch.nn.Module) -> str:
    """A cheap hash of the first and last parameters, enough to tell two checkpoints of one architecture apart; with
    LoRA adapters loaded (PEFT, `pipe.load_lora_weights`), also of which are active, their scales, whether they are
    fused, and a few of their weights (`adapter_state`), so a LoRA'd denoiser never passes for its base model. A LoRA
    fused and then unloaded leaves only changed middle weights, which this hash does not read."""
    params = [p for p in unet.parameters()]
    if not params:
        return "none"
    h = hashlib.sha256()
    for p in (params[0], params[-1]):
        h.update(_sample(p))
    adapters = adapter_state(unet)
    if adapters:  # a plain denoiser's hash is unchanged (the directions and detectors already written record it)
        h.update(json.dumps(adapters, sort_keys=True).encode())
        for module in _tuner_layers(unet):
            for kind in ("lora_A", "lora_B"):
                for name in sorted(module.active_adapters):
                    if name in getattr(module, kind, {}):
                        h.update(_sample(getattr(module, kind)[name].weight, 64))
    return h.hexdigest()[:16]


def _sample(p: torch.Tensor, count: int = 4096) -> bytes:
    # fp16 rounding makes the hash agree between fp32 and fp16 copies of the same weights
    return p.detach().flatten()[:count].to(device="cpu", dtype=torch.float16).float().numpy().tobytes()


def _tuner_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The PEFT LoRA layers in ``unet`` (duck-typed: steer does not need peft installed)."""
    return [m for m in unet.modules() if hasattr(m, "lora_A") and hasattr(m, "active_adapters") and hasattr(m, "scaling")]


def adapter_state(unet: torch.nn.Module) -> dict[str, Any]:
    """The LoRA adapters of ``unet`` as they act now: ``{adapter: {"scales": sorted distinct scales, "layers":
    count}}`` of the active ones, ``"merged"`` (fused) and ``"disabled"``; ``{}`` without adapters."""
    state: dict[str, Any] = {}
    merged: set[str] = set()
    disabled = False
    for module in _tuner_layers(unet):
        disabled = disabled or bool(getattr(module, "disable_adapters", False))
        merged.update(getattr(module, "merged_adapters", []) or [])
        for name in module.active_adapters:
            entry = state.setdefault(name, {"scales": set(), "layers": 0})
            entry["scales"].add(round(float(module.scaling.get(name, 0.0)), 6))
            entry["layers"] += 1
    if not state and not merged:
        return {}
    out: dict[str, Any] = {name: {"scales": sorted(e["scales"]), "layers": e["layers"]} for name, e in sorted(state.items())}
    return {"adapters": out, "merged": sorted(merged), "disabled": disabled}
