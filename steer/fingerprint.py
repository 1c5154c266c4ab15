"""Which denoiser a direction or detector was made on: `unet_fingerprint` writes it, `weights_verdict` checks the weights
and `check_weights` acts on its answer.

The weights are read at the denoiser's first and last *base* parameters: by name, those an IP-Adapter (its image
projection and attention processors) or a PEFT LoRA layer (``lora_A``/``lora_B``; a wrapped layer's ``base_layer`` is
the base parameter) did not add. Under sequential CPU offload (parameters on the ``meta`` device) their values are read
from accelerate's offload map; when they cannot be read, the weights are not checked (one-line warning), never a
torch error. A fingerprint records the weights twice:

- ``weights_hash``: a hash of up to 4096 values of each, rounded to fp16 (fp32 and fp16 copies agree), and of the
  active LoRA adapters. Every steer version wrote it; it is compared exactly, as before, between fp32/fp16 copies.
- ``weights_sample``: a few evenly spaced values of each (and of each active LoRA adapter) with the coarsest dtype
  they were read in, compared within the rounding of both dtypes: a bf16 copy's fp16 rounding differs from its fp32
  weights' (bf16 keeps 8 significant bits), so only this tells a bf16 copy of the same weights from a fine-tune. Files
  written before it was recorded are checked on a bf16 copy by nothing: a warning says so.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch

from steer.denoisers import layer_channels
from steer.errors import ModelMismatchError

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
_LORA_PARTS = frozenset({"lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"})
BASE_SAMPLE = 32  # values of each base parameter in ``weights_sample``
LORA_SAMPLE = 8  # values of an adapter's first lora_A and last lora_B
# dtypes whose fp16 rounding of the same weights agrees (the fp16-rounded ``weights_hash`` is exact between them)
_FP16_EXACT = frozenset({"float32", "float16"})
OFFLOADED = "the denoiser's weights are offloaded where steer cannot read them (sequential CPU offload without accelerate's weights map)"


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


def unet_fingerprint(unet: torch.nn.Module, layers: Iterable[str] | None = None, weights: bool = True) -> dict[str, Any]:
    """Identify a UNet: class, architecture summary, config hash and (``weights``) `weights_hash` and `weights_sample`.

    ``layers`` adds their output channel counts (see `steer.denoisers.layer_channels`). Weights that cannot be read
    (`OFFLOADED`) are left out of the fingerprint with a warning: whatever is made from it is then checked on the
    architecture only.
    """
    config = dict(getattr(unet, "config", {}) or {})
    clean = {k: _jsonable(v) for k, v in sorted(config.items()) if not k.startswith("_")}
    arch = {k: clean[k] for k in _ARCH_KEYS if k in clean}
    config_hash = hashlib.sha256(json.dumps(clean, sort_keys=True).encode()).hexdigest()[:16]
    fp: dict[str, Any] = {"unet_class": type(unet).__name__, "architecture": arch, "config_hash": config_hash}
    if weights:
        base = _base_values(unet)
        if base is None:
            warnings.warn(f"{OFFLOADED}: the fingerprint records no weights, so they will not be checked", UserWarning, stacklevel=2)
        else:
            fp["weights_hash"] = _hash(unet, base)
            sample = _weights_sample(unet, base)
            if sample is not None:
                fp["weights_sample"] = sample
    if layers is not None:
        fp["channels"] = layer_channels(unet, list(layers))
    return fp


def weights_hash(unet: torch.nn.Module) -> str:
    """A cheap hash of the first and last base parameters, enough to tell two checkpoints of one architecture apart
    (fp32 and fp16 copies agree; see `weights_verdict` for bf16); with LoRA adapters loaded (PEFT,
    `pipe.load_lora_weights`), also of which are active, their scales, whether they are fused, and a few of their
    weights (`adapter_state`), so a LoRA'd denoiser never passes for its base model. A LoRA fused and then unloaded
    leaves only changed middle weights, which this hash does not read. ``"offloaded"`` when the weights cannot be read."""
    base = _base_values(unet)
    return "offloaded" if base is None else _hash(unet, base)


def _hash(unet: torch.nn.Module, values: list[torch.Tensor]) -> str:
    if not values:
        return "none"
    h = hashlib.sha256()
    for v in values:
        h.update(_sample(v))
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


def _is_adapter(name: str, adapter_prefixes: list[str]) -> bool:
    parts = name.split(".")
    return "processor" in parts or bool(_LORA_PARTS.intersection(parts)) or any(name.startswith(p) for p in adapter_prefixes)


def _base_parameters(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The first and last parameters that adapters did not add (none if the denoiser has none).
    Adapter-added: attention processors' parameters (IP-Adapter's ``to_k_ip``...), modules whose class is an
    IP-Adapter's (``encoder_hid_proj``, SD3's ``image_proj``) and PEFT's LoRA weights."""
    prefixes = [f"{n}." for n, m in unet.named_modules() if n and "IPAdapter" in type(m).__name__]
    first = last = None
    for name, p in unet.named_parameters():
        if not _is_adapter(name, prefixes):
            first = first or (name, p)
            last = (name, p)
    return [] if first is None else [first, last]  # the same one twice in a one-parameter denoiser, as always


def _value(unet: torch.nn.Module, name: str, p: torch.Tensor) -> torch.Tensor | None:
    """``p``'s values; for a parameter on the meta device (sequential CPU offload), the copy in accelerate's hook's
    ``weights_map`` on its module; None when there is none."""
    if not p.is_meta:
        return p.detach()
    owner, _, local = name.rpartition(".")
    try:
        module = unet.get_submodule(owner)
    except AttributeError:
        return None
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", ())]:  # accelerate's SequentialHook holds several
        weights = getattr(h, "weights_map", None)
        try:
            value = weights[local] if weights is not None else None
        except (KeyError, TypeError, RuntimeError, OSError):
            value = None
        if isinstance(value, torch.Tensor) and not value.is_meta and value.shape == p.shape:
            return value.detach()
    return None


def _base_values(unet: torch.nn.Module) -> list[torch.Tensor] | None:
    values = [_value(unet, name, p) for name, p in _base_parameters(unet)]
    return None if any(v is None for v in values) else values


def _raw_hash(unet: torch.nn.Module) -> str | None:
    """The hash as steer wrote it before it read base parameters (of the very first and last parameters, an
    IP-Adapter's or a LoRA's among them); None where that is the base hash already or cannot be read."""
    params = list(unet.named_parameters())
    base = [name for name, _ in _base_parameters(unet)]
    ends = [params[0], params[-1]] if params else []
    if [n for n, _ in ends] == base:
        return None
    values = [_value(unet, n, p) for n, p in ends]
    return None if any(v is None for v in values) else _hash(unet, values)


def _spread(t: torch.Tensor, count: int) -> list[float]:
    flat = t.flatten()
    n = flat.numel()
    k = min(count, n)
    index = [i * (n - 1) // (k - 1) for i in range(k)] if k > 1 else [0] * k
    values = flat[torch.tensor(index, dtype=torch.long, device=flat.device)].to("cpu", torch.float64) if k else flat[:0].double()
    return [float(f"{v:.9g}") for v in values.tolist()]  # 9 digits hold a float32 exactly


def _weights_sample(unet: torch.nn.Module, base: list[torch.Tensor]) -> dict[str, Any] | None:
    """``{"dtype", "values"[, "adapters"]}``: `BASE_SAMPLE` values of each base parameter, `LORA_SAMPLE` of each active
    adapter's first ``lora_A`` and last ``lora_B``, the coarsest dtype they were read in, and a hash of
    `adapter_state`; None when a value is not finite or a dtype not a float one."""
    tensors = [(t, BASE_SAMPLE) for t in base]
    tuners = _tuner_layers(unet)
    for name in sorted({n for m in tuners for n in m.active_adapters}):
        holders = [m for m in tuners if name in getattr(m, "lora_A", {}) and name in getattr(m, "lora_B", {})]
        if holders:
            tensors += [(holders[0].lora_A[name].weight.detach(), LORA_SAMPLE), (holders[-1].lora_B[name].weight.detach(), LORA_SAMPLE)]
    if not tensors or not all(t.dtype.is_floating_point for t, _ in tensors):
        return None
    values = [v for t, count in tensors for v in _spread(t, count)]
    if not all(abs(v) < float("inf") for v in values):  # NaN fails too
        return None
    dtype = max((t.dtype for t, _ in tensors), key=lambda d: torch.finfo(d).eps)
    out: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "values": values}
    adapters = adapter_state(unet)
    if adapters:
        out["adapters"] = hashlib.sha256(json.dumps(adapters, sort_keys=True).encode()).hexdigest()[:16]
    return out


def _rounding(dtype_name: Any) -> tuple[float, float] | None:
    """(relative, absolute) rounding of a float dtype named like ``"bfloat16"``; None for any other name."""
    dtype = getattr(torch, dtype_name, None) if isinstance(dtype_name, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        return None
    info = torch.finfo(dtype)
    return info.eps / 2, info.tiny * info.eps  # half an ulp; a subnormal step


def samples_agree(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> bool | None:
    """Whether two `weights_sample` records are of the same weights within the rounding of both dtypes (None: a dtype
    steer does not know)."""
    a, b = _rounding(recorded.get("dtype")), _rounding(current.get("dtype"))
    if a is None or b is None:
        return None
    # plus an fp16 rounding between: a bf16 copy is often cast from a checkpoint's fp16 files (bf16(fp16(x)): 1 in 5
    # such copies of the learned-on weights fell outside the two dtypes' own rounding and was refused as other weights)
    half = _rounding("float16")
    assert half is not None
    rel, tiny = (a[0] + b[0] + half[0]) * 1.01, a[1] + b[1] + half[1]
    old, new = recorded.get("values") or [], current.get("values") or []
    if recorded.get("adapters") != current.get("adapters") or len(old) != len(new):
        return False
    return all(abs(x - y) <= rel * max(abs(x), abs(y)) + tiny for x, y in zip(old, new, strict=True))


class Verdict(NamedTuple):
    """`weights_verdict`'s answer: ``same`` True (the recorded weights), False (other weights: a fine-tune, another
    checkpoint or LoRA) or None (not checkable: ``why`` says why); ``current`` the denoiser's weights hash for messages."""

    same: bool | None
    current: str
    why: str = ""


def weights_verdict(recorded: Mapping[str, Any], unet: torch.nn.Module) -> Verdict:
    """Whether ``unet`` has the weights a fingerprint ``recorded`` (`unet_fingerprint`): its `weights_hash` (or the one
    steer wrote before it read base parameters) is an exact match; between fp32/fp16 copies a different hash is
    other weights, as it always was; with a bf16 (or coarser) copy on either side the `weights_sample`s decide, and a
    record without one (written before it existed) cannot be checked."""
    want, sample = recorded.get("weights_hash"), recorded.get("weights_sample")
    base = _base_values(unet)
    if base is None:
        return Verdict(None, "offloaded", OFFLOADED)
    current = _hash(unet, base)
    if want is None and not isinstance(sample, Mapping):
        return Verdict(True, current)
    if want is not None and (want == current or want == _raw_hash(unet)):
        return Verdict(True, current)
    mine = _weights_sample(unet, base)
    dtypes = {str(t.dtype).removeprefix("torch.") for t in base}
    learned_dtype = sample.get("dtype") if isinstance(sample, Mapping) else None
    if want is not None and dtypes <= _FP16_EXACT and learned_dtype in (None, *_FP16_EXACT):
        return Verdict(False, current)  # the fp16-rounded hash reproduces here: exact, as before
    if isinstance(sample, Mapping) and mine is not None:
        agree = samples_agree(sample, mine)
        if agree is not None:
            return Verdict(agree, current)
        return Verdict(None, current, f"its weights were recorded in a dtype steer does not know ({learned_dtype!r})")
    return Verdict(None, current, f"it records its weights only as the fp16-rounded hash steer wrote before, which a "
                                  f"{'/'.join(sorted(dtypes))} copy cannot reproduce (check it on a float32 or float16 copy)")


def check_weights(
    recorded: Mapping[str, Any], unet: torch.nn.Module, unchecked: str, other: Callable[[str], str], stacklevel: int = 2
) -> None:
    """Act on `weights_verdict`: warn ``"{unchecked}: {why}"`` when the weights cannot be checked, raise
    `ModelMismatchError` with ``other(current weights hash)`` when they are other weights; the same ones pass.
    ``stacklevel`` is the warning's as seen from the caller (as if it warned itself)."""
    verdict = weights_verdict(recorded, unet)
    if verdict.same is None:
        warnings.warn(f"{unchecked}: {verdict.why}", UserWarning, stacklevel=stacklevel + 1)
    elif not verdict.same:
        raise ModelMismatchError(other(verdict.current))


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
