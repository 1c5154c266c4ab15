"""Limits and checks shared by the files, the command line and the pipeline.

- Schemas of the JSON headers of direction and detector files: every field that code reads is type-checked on load, so
  a hand-edited or hostile file fails with one line naming the field, never an `AttributeError` deep inside.
- Numeric limits: steering scales, direction entries and the delta a call adds must stay finite in the UNet's dtype.
- `FiniteOutputMixin`: the pipeline refuses to return an image with NaN or infinite pixels (which would otherwise be
  written as an all-black PNG).
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from steer.config import BRANCHES, MODES
from steer.errors import NonFiniteOutputError, SchemaError  # noqa: F401  (re-exported)

# ----------------------------------------------------------------------------------------------------------------------
# Limits (documented in docs/reliability.md)
# ----------------------------------------------------------------------------------------------------------------------
MAX_SCALE = 1e4  # |steering_scale|; the app allows 50, useful scales are < 10 (normalized) or < 100 (raw)
MAX_VECTOR_ENTRY = 1e6  # |entry| of a direction; learned directions are differences of activations (< 1e3)
MAX_METADATA_DEPTH = 32  # nesting of the JSON header (combinations flatten their components)
MAX_HEADER_CHARS = 16 * 2**20  # JSON header of a direction or detector file
MAX_LAYER_NAME = 256
MAX_WEIGHTS_SAMPLE = 4096  # values of a fingerprint's weights sample (steer writes 64, and 16 per LoRA adapter)
MAX_STEPS = 1000  # num_inference_steps (the schedulers' training steps); also a direction's step buckets
MAX_CHANNELS = 65_536  # width of one direction's layer (SD3/Flux 4096 at the text tokens, SDXL 2048, SD1.5 1280)
MAX_CALIBRATION_SAMPLES = 4096  # samples a calibration or fit draws (learn_direction's calibration_samples, fits' num_samples)
MAX_TOKENS = 4096  # text tokens of a reference level (CLIP 77, T5 up to 512)
MAX_SWEEP = 64  # scales of one --sweep (the app's strip is 9)
MAX_IMAGES = 10_000  # --num-images of one command
MAX_SIZE = 8192  # height / width in pixels
MAX_GUIDANCE = 1000.0
MAX_SEED = 2**63 - 1

_LAYER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")
_LAYER_PATTERN = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+")


def did_you_mean(name: Any, choices: Iterable[str], max_len: int = 200) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``name`` (difflib), else ``""``; names longer than
    ``max_len`` are not compared (bounded time)."""
    close = difflib.get_close_matches(name, list(choices), n=1) if isinstance(name, str) and len(name) < max_len else []
    return f"; did you mean {close[0]!r}?" if close else ""


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (error messages never echo a whole hostile value)."""
    text = repr(value) if not isinstance(value, Mapping | list | tuple) else _short_container(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_container(value: Any) -> str:
    kind = "object" if isinstance(value, Mapping) else "list"
    return f"a {kind} of {len(value)} item(s)"


def kind_of(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------------
def nesting_depth(value: Any, limit: int = MAX_METADATA_DEPTH) -> int:
    """Depth of nested lists / dicts, computed without recursion; stops counting past ``limit`` + 1."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping | list | tuple):
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((v, depth) for v in (item.values() if isinstance(item, Mapping) else item))
    return deepest


def check_depth(value: Any, where: str, limit: int = MAX_METADATA_DEPTH) -> None:
    if nesting_depth(value, limit) > limit:
        raise SchemaError(f"{where} is nested more than {limit} levels deep")


def check_dict(value: Any, where: str, optional: bool = True) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise SchemaError(f"{where} must be an object, got {kind_of(value)}")
    return value


def check_str(value: Any, where: str, optional: bool = True, choices: Sequence[str] | None = None) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise SchemaError(f"{where} must be a string, got {kind_of(value)}")
    if choices is not None and value not in choices:
        raise SchemaError(f"{where} must be one of {list(choices)}, got {short(value)}")
    return value


def check_number(value: Any, where: str, low: float = -math.inf, high: float = math.inf, optional: bool = True) -> float | None:
    """A finite int/float (not a boolean) within ``[low, high]``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{where} must be a number, got {kind_of(value)}")
    number = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
    if not math.isfinite(number):
        raise SchemaError(f"{where} must be a finite number, got {short(value)}")
    if not low <= number <= high:
        raise SchemaError(f"{where} must be between {low:g} and {high:g}, got {number:g}")
    return number


def check_int(value: Any, where: str, low: int, high: int, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(f"{where} must be an integer, got {kind_of(value)}")
    if not low <= value <= high:
        raise SchemaError(f"{where} must be between {low} and {high}, got {short(value)}")
    return value


def check_bool(value: Any, where: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise SchemaError(f"{where} must be true or false, got {kind_of(value)}")
    return value


def check_layer_name(name: Any, where: str) -> str:
    """An exact UNet module path (``up_blocks.0.resnets.1``): no glob characters, spaces or control characters."""
    if not isinstance(name, str):
        raise SchemaError(f"{where} must be a layer name (string), got {kind_of(name)}")
    if len(name) > MAX_LAYER_NAME or not _LAYER_NAME.fullmatch(name):
        raise SchemaError(f"{where} {short(name)} is not a module path like 'up_blocks.0.resnets.1' (globs are not allowed here)")
    return name


def check_layer_names(value: Any, where: str, patterns: bool = False) -> list[str]:
    """A non-empty list of layer names (or, with ``patterns``, names / glob patterns)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise SchemaError(f"{where} must be a non-empty list of layer names, got {kind_of(value)}")
    out = []
    for i, name in enumerate(value):
        if patterns:
            if not isinstance(name, str) or len(name) > MAX_LAYER_NAME or not _LAYER_PATTERN.fullmatch(name):
                raise SchemaError(f"{where}[{i}] {short(name)} is not a layer name or glob pattern")
            out.append(name)
        else:
            out.append(check_layer_name(name, f"{where}[{i}]"))
    return out


def check_window(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise SchemaError(f"{where} must be [start, end], got {kind_of(value)}")
    start = check_number(value[0], f"{where} start", 0.0, 1.0, optional=False)
    end = check_number(value[1], f"{where} end", 0.0, 1.0, optional=False)
    if not start < end:
        raise SchemaError(f"{where} must satisfy start < end, got [{start:g}, {end:g}]")
    return start, end


def check_fingerprint(value: Any, where: str) -> dict[str, Any]:
    """The base-model fingerprint written by `steer.vectors.unet_fingerprint` (every field optional)."""
    fp = check_dict(value, where)
    for key in ("unet_class", "config_hash", "weights_hash", "name_or_path"):
        check_str(fp.get(key), f"{where}.{key}")
    check_dict(fp.get("architecture"), f"{where}.architecture")
    sample = check_dict(fp.get("weights_sample"), f"{where}.weights_sample")
    check_str(sample.get("dtype"), f"{where}.weights_sample.dtype")
    check_str(sample.get("adapters"), f"{where}.weights_sample.adapters")
    values = sample.get("values", [])
    if not isinstance(values, list) or len(values) > MAX_WEIGHTS_SAMPLE:
        raise SchemaError(f"{where}.weights_sample.values must be a list of at most {MAX_WEIGHTS_SAMPLE} numbers, got {kind_of(values)}")
    for i, v in enumerate(values):
        check_number(v, f"{where}.weights_sample.values[{i}]", optional=False)
    for name, channels in check_dict(fp.get("channels"), f"{where}.channels").items():
        check_layer_name(name, f"{where}.channels key")
        check_int(channels, f"{where}.channels[{name!r}]", 1, 2**31, optional=False)
    return fp


# ----------------------------------------------------------------------------------------------------------------------
# File headers
# ----------------------------------------------------------------------------------------------------------------------
def check_header_common(header: Any, format_version: int) -> dict[str, Any]:
    """The fields every checked file has: an object with an integer ``format_version`` and a string ``digest``."""
    if not isinstance(header, dict):
        raise SchemaError(f"the header must be an object, got {kind_of(header)}")
    check_depth(header, "the header", MAX_METADATA_DEPTH + 1)
    version = check_int(header.get("format_version", 1), "format_version", 0, 2**31)
    if version is not None and version > format_version:
        raise SchemaError(f"written by a newer steer (format {version} > {format_version})")
    check_str(header.get("digest"), "digest")
    return header


def check_direction_metadata(value: Any) -> dict[str, Any]:
    """The ``metadata`` object of a direction file (see `steer.vectors.SteeringVector`)."""
    meta = check_dict(value, "metadata")
    check_depth(meta, "metadata")
    for key in ("name", "method", "source", "pooling"):
        check_str(meta.get(key), f"metadata.{key}")
    check_int(meta.get("timestep"), "metadata.timestep", 0, 100_000)
    for name, norm in check_dict(meta.get("activation_norm"), "metadata.activation_norm").items():
        check_number(norm, f"metadata.activation_norm[{short(name)}]", 0.0, MAX_VECTOR_ENTRY, optional=False)
    check_fingerprint(meta.get("model"), "metadata.model")
    check_recommended(meta.get("recommended"), "metadata.recommended")
    for name, level in check_dict(meta.get("reference_level"), "metadata.reference_level").items():
        check_layer_name(name, "metadata.reference_level key")
        where = f"metadata.reference_level[{short(name)}]"
        if not isinstance(level, list) or not 0 < len(level) <= MAX_TOKENS:
            raise SchemaError(f"{where} must be a non-empty list of at most {MAX_TOKENS} numbers, got {kind_of(level)}")
        for i, x in enumerate(level):
            check_number(x, f"{where}[{i}]", -1.0, 1.0, optional=False)
    for name, count in check_dict(meta.get("fixed_tokens"), "metadata.fixed_tokens").items():
        check_layer_name(name, "metadata.fixed_tokens key")
        check_int(count, f"metadata.fixed_tokens[{short(name)}]", 0, MAX_TOKENS, optional=False)
    components = meta.get("components")
    if components is not None and not isinstance(components, list):
        raise SchemaError(f"metadata.components must be a list, got {kind_of(components)}")
    for side, prompts in check_dict(meta.get("two_sided"), "metadata.two_sided").items():  # a slider's two prompt sets
        if side in ("positive", "negative") and (not isinstance(prompts, list) or not all(isinstance(x, str) for x in prompts)):
            raise SchemaError(f"metadata.two_sided.{side} must be a list of prompts, got {kind_of(prompts)}")
    return meta


def check_recommended(value: Any, where: str) -> dict[str, Any]:
    """A direction's recommended settings, as `steer generate` and the app apply them."""
    rec = check_dict(value, where)
    check_window(rec.get("window"), f"{where}.window")
    check_window(rec.get("removal_window"), f"{where}.removal_window")
    check_str(rec.get("branch"), f"{where}.branch", choices=BRANCHES)
    check_str(rec.get("mode"), f"{where}.mode", choices=MODES)
    check_bool(rec.get("normalize"), f"{where}.normalize")
    check_bool(rec.get("preserve_norm"), f"{where}.preserve_norm")
    if rec.get("layers") is not None:
        check_layer_names(rec["layers"], f"{where}.layers", patterns=True)
    if rec.get("readers") is not None:
        check_layer_names(rec["readers"], f"{where}.readers", patterns=True)
    check_number(rec.get("scale"), f"{where}.scale", -MAX_SCALE, MAX_SCALE)
    scales = rec.get("scales")
    if scales is not None:
        if not isinstance(scales, list):
            raise SchemaError(f"{where}.scales must be a list, got {kind_of(scales)}")
        for i, s in enumerate(scales):
            check_number(s, f"{where}.scales[{i}]", -MAX_SCALE, MAX_SCALE, optional=False)
    return rec


def check_direction_tensors(tensors: Mapping[str, torch.Tensor]) -> None:
    """Layer names are module paths; each tensor is (channels,) or (step buckets, channels), at most `MAX_STEPS`
    buckets of at most `MAX_CHANNELS`, floating point, finite and within `MAX_VECTOR_ENTRY`."""
    if not tensors:
        raise SchemaError("contains no layers")
    for name, t in tensors.items():
        check_layer_name(name, "tensor name")
        # the step limit is on a (steps, channels) tensor's first axis only (it refused every (channels,) one over 1000)
        too_big = t.ndim == 2 and t.shape[0] > MAX_STEPS or t.ndim in (1, 2) and t.shape[-1] > MAX_CHANNELS
        if t.ndim not in (1, 2) or not t.is_floating_point() or t.numel() == 0 or too_big:
            raise SchemaError(f"layer {name!r} holds a {tuple(t.shape)} {t.dtype} tensor, expected (channels,) or (steps, channels) float")
        check_vector_values(t, f"layer {name!r}")


def check_vector_values(t: torch.Tensor, where: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise SchemaError(f"{where} is not a tensor, got {kind_of(t)}")
    if not t.is_floating_point():  # an integer cast truncates the direction (to 0 for unit-norm ones): nothing steers
        raise SchemaError(f"{where} holds {str(t.dtype).replace('torch.', '')} values; directions are floating point")
    if t.numel() == 0:
        raise SchemaError(f"{where} is empty")
    values = t.detach().float()
    if not torch.isfinite(values).all():
        raise SchemaError(f"{where} contains NaN or infinite values")
    peak = float(values.abs().max()) if values.numel() else 0.0
    if peak > MAX_VECTOR_ENTRY:
        raise SchemaError(f"{where} has an entry of magnitude {peak:.3g}, above the limit {MAX_VECTOR_ENTRY:g}")


def check_detector_header(header: dict[str, Any], score_kinds: Iterable[str], choices: Mapping[str, Sequence[str]]) -> None:
    """A detector file's ``config``, ``thresholds``, ``fpr`` and ``model`` (see `steer.detect.detector.MemorizationDetector`)."""
    cfg = check_dict(header.get("config"), "config", optional=False)
    missing = [k for k in ("layers", "pooling", "statistic", "timestep", "prompt") if k not in cfg]
    if missing:
        raise SchemaError(f"the detector settings lack {missing}")
    check_layer_names(cfg["layers"], "config.layers")
    if cfg.get("inline_layers") is not None:
        check_layer_names(cfg["inline_layers"], "config.inline_layers")
    for key, allowed in choices.items():  # pooling, statistic and prompt are required, inline_score optional
        check_str(cfg.get(key), f"config.{key}", optional=key not in ("pooling", "statistic", "prompt"), choices=allowed)
    check_int(cfg["timestep"], "config.timestep", 0, 100_000, optional=False)
    check_int(cfg.get("seed"), "config.seed", 0, MAX_SEED)
    check_int(cfg.get("early_steps"), "config.early_steps", 1, MAX_STEPS)
    check_window(cfg.get("inline_window"), "config.inline_window")
    kinds = tuple(score_kinds)
    for key, value in check_dict(header.get("thresholds"), "thresholds").items():
        if key not in kinds:
            raise SchemaError(f"thresholds has an unknown key {short(key)} (known: {list(kinds)})")
        check_number(value, f"thresholds.{key}")
    check_number(header.get("fpr"), "fpr", 0.0, 1.0)
    sampling = check_dict(header.get("sampling"), "sampling")  # files before 2026-12-03 have none
    check_int(sampling.get("num_inference_steps"), "sampling.num_inference_steps", 1, MAX_STEPS)
    check_number(sampling.get("guidance_scale"), "sampling.guidance_scale", 0.0, MAX_GUIDANCE)
    check_str(sampling.get("sampler"), "sampling.sampler")
    check_fingerprint(header.get("model"), "model")


def check_detector_tensors(tensors: Mapping[str, torch.Tensor], score_kinds: Iterable[str]) -> None:
    kinds = tuple(score_kinds)
    for name, t in tensors.items():
        prefix, _, kind = name.partition(".")
        if prefix != "calibration" or kind not in kinds:
            raise SchemaError(f"unexpected tensor {short(name)} (expected calibration.<{'|'.join(kinds)}>)")
        if t.ndim != 1 or not t.is_floating_point() or t.numel() == 0:
            raise SchemaError(f"calibration scores {name!r} are a {tuple(t.shape)} {t.dtype} tensor, expected 1-D float")
        if not torch.isfinite(t).all():
            raise SchemaError(f"calibration scores {name!r} contain NaN or infinite values")


# ----------------------------------------------------------------------------------------------------------------------
# Command-line argument types (argparse turns their ArgumentTypeError into a one-line usage error, exit status 2)
# ----------------------------------------------------------------------------------------------------------------------
def bounded_int(low: int, high: int, multiple: int = 1) -> Callable[[str], int]:
    """An argparse type: a whole number in ``[low, high]`` (and a multiple of ``multiple``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {short(text)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        if value % multiple:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple}, got {value}")
        return value

    return parse


def bounded_float(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {short(text)}") from None
        above = value > low if low_open else value >= low
        if not math.isfinite(value) or not above or value > high:
            side = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be a finite number in {side}{low:g}, {high:g}], got {short(text)}")
        return value

    return parse


# ----------------------------------------------------------------------------------------------------------------------
# Steering calls
# ----------------------------------------------------------------------------------------------------------------------
def check_scale_range(scales: torch.Tensor) -> None:
    """A one-line ValueError for a ``steering_scale`` (the call's, as parsed) beyond ``MAX_SCALE``."""
    peak_scale = float(scales.abs().max())
    if peak_scale > MAX_SCALE:
        raise ValueError(f"steering_scale {peak_scale:g} is out of range: |scale| must be at most {MAX_SCALE:g}")


def check_steering_request(vectors: Sequence[Any], scales: torch.Tensor | None, settings: Mapping[str, Any], dtype: torch.dtype) -> None:
    """Refuse a steering call whose inputs are out of range, before any compute.

    ``steering_layers`` must not be empty; every direction entry finite and within `MAX_VECTOR_ENTRY`; and the
    largest delta the call can add to one activation must be finite in ``dtype``. (The call's own scales are held to
    ``|scale| <= MAX_SCALE`` by `check_scale_range` before a slider's flip multiplies them by its fitted strength.)
    """
    layers = settings.get("steering_layers")
    if layers is not None:
        items = [layers] if isinstance(layers, str) else list(layers) if isinstance(layers, Iterable) else [layers]
        if not all(isinstance(x, str) for x in items):
            raise ValueError(f"steering_layers must be None, a layer name / glob pattern or a list of them, got {short(layers)}")
        if not any(x.strip() for x in items):
            raise ValueError("steering_layers is empty: pass None to steer every layer of the direction(s), or name at least one layer")
    if not vectors or scales is None:
        return
    per_vector = scales.abs().amax(0).tolist()
    limit = torch.finfo(dtype).max / 2 if dtype.is_floating_point else math.inf
    deltas: dict[str, float] = {}
    for vector, scale in zip(vectors, per_vector, strict=False):
        norms = vector.activation_norm if settings.get("steering_normalize") else {}
        for name, v in vector.directions.items():
            try:
                check_vector_values(v, f"direction {vector.name!r} layer {name!r}")
            except SchemaError as err:
                raise ValueError(str(err)) from None
            rows = v.detach().float().reshape(-1, v.shape[-1])  # (step buckets, channels)
            peak = float(rows.abs().max())
            if settings.get("steering_normalize"):  # each bucket is unit-normed, then scaled by the activation norm
                ratio = rows.abs().amax(-1) / rows.norm(dim=-1).clamp_min(1e-12)
                peak = float(ratio.max()) * float(norms.get(name, 0.0))
            deltas[name] = deltas.get(name, 0.0) + scale * peak
    worst = max(deltas, key=deltas.get, default=None)
    if worst is not None and not deltas[worst] <= limit:
        raise ValueError(
            f"steering would add up to {deltas[worst]:.3g} to layer {worst!r}, beyond what {str(dtype).replace('torch.', '')} "
            f"holds ({limit:.3g}): lower steering_scale"
        )


def refuse_non_finite(image: torch.Tensor, what: str = "the generated image") -> None:
    """Raise `NonFiniteOutputError` if ``image`` holds NaN or infinite values."""
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        return
    bad = ~torch.isfinite(image)
    if bool(bad.any()):
        raise NonFiniteOutputError(
            f"{what} contains NaN or infinite values ({int(bad.sum())} of {bad.numel()}) in {str(image.dtype).replace('torch.', '')}; "
            "refusing it instead of writing a black image: lower the steering scale or the guidance scale"
        )


class FiniteOutputMixin:
    """Pipeline mixin: check the decoded image (before it becomes uint8 pixels, where NaN turns black)."""

    def run_safety_checker(self, image, device, dtype):  # noqa: D401 - diffusers' hook between decode and postprocess
        refuse_non_finite(image)
        return super().run_safety_checker(image, device, dtype)


HELPER_SET = ("prompt", "generator", "output_type", "latents", "num_images_per_prompt", "return_dict")  # per sample


def check_call_kwargs(pipe: Any, call_kwargs: Mapping[str, Any], function: Callable[..., Any], sets: Iterable[str] = ()) -> None:
    """The keyword arguments ``function`` (`learn_direction`, `fit_take_away`, ...) passes on to ``pipe``'s calls: one
    it sets itself (`HELPER_SET` and ``sets``) or one no call takes (``num_sample=``: the pipeline's ``**kwargs``
    would swallow it and the helper run with its default) is a one-line TypeError naming it and the name meant."""
    name = getattr(function, "__name__", "the helper")
    own = [*HELPER_SET, *sets]
    taken = inspect.signature(type(pipe).__call__).parameters
    for key in call_kwargs:
        if key in own:
            raise TypeError(f"{name}() sets {key} itself")
        if key not in taken:
            raise TypeError(f"{name}() got an unknown argument {short(key)}"
                            f"{did_you_mean(key, [*inspect.signature(function).parameters, *taken])}")


def safetensors_path(path: str | os.PathLike) -> Path:
    """Where a direction or detector saved as ``path`` lands: ``path`` itself when it ends in ``.safetensors``, else
    with that suffix added (``blue`` -> ``blue.safetensors``, ``v1.2`` -> ``v1.2.safetensors``)."""
    path = Path(path)
    if not path.name:  # "." or "/": a folder, refused by the callers as one
        return path
    return path if path.suffix == ".safetensors" else path.with_name(path.name + ".safetensors")
