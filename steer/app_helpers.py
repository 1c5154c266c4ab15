"""UI-independent logic of the Gradio demo (``app.py``): validation, direction catalog, generation, learning.

Everything here takes plain Python values and a `SteeringStableDiffusionPipeline`, raises `UserError` with a
readable message for anything the user can fix, and never imports gradio, so it is testable without a server.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from steer.hooks import BRANCHES, MODES, PAPER_WINDOW, LayerError, default_layers, list_layers
from steer.vectors import ModelMismatchError, SteeringFileError, SteeringVector

ProgressFn = Callable[[float, str], None]

NONE_CHOICE = "(none)"
LAYER_SCOPES = ("all layers", "paper default", "chosen layers")
LEARN_METHODS = ("mean_diff", "mean", "pca")
LEARN_MODES = ("fast", "reference")


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (the app is meant to be shared)."""

    max_steps: int = 100
    max_strip: int = 9
    max_size: int = 1024
    min_size: int = 16
    max_prompt_chars: int = 300
    max_guidance: float = 30.0
    max_strength: float = 50.0
    max_seed: int = 2**31 - 1
    max_learn_prompts: int = 32
    max_learn_samples: int = 64
    max_learn_images: int = 64
    max_learn_steps: int = 50
    max_upload_bytes: int = 64 * 2**20


LIMITS = Limits()


class UserError(ValueError):
    """Something the user can fix; the message is shown as is in the UI."""


# Errors whose message is meant for people: shown in the UI as is.
READABLE_ERRORS = (UserError, SteeringFileError, ModelMismatchError, LayerError, ValueError, FileNotFoundError)


def readable(err: BaseException) -> str:
    """A one-paragraph message for ``err`` (no traceback)."""
    if isinstance(err, READABLE_ERRORS):
        return str(err) or type(err).__name__
    return f"internal error ({type(err).__name__}): {err}"


# ----------------------------------------------------------------------------------------------------------------------
# Small validators
# ----------------------------------------------------------------------------------------------------------------------
def check_prompt(text: str | None, what: str = "prompt", required: bool = True) -> str:
    """Strip ``text``; enforce the length cap and (if ``required``) non-emptiness."""
    text = (text or "").strip()
    if required and not text:
        raise UserError(f"the {what} is empty")
    if len(text) > LIMITS.max_prompt_chars:
        raise UserError(f"the {what} has {len(text)} characters; at most {LIMITS.max_prompt_chars} are allowed")
    return text


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """``value`` as an int within ``[low, high]``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise UserError(f"{what} must be between {low} and {high}, got {int(number)}")
    return int(number)


def check_float(value: Any, what: str, low: float, high: float) -> float:
    """``value`` as a finite float within ``[low, high]``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise UserError(f"{what} must be between {low} and {high}, got {value!r}")
    return number


def check_size(value: Any, what: str) -> int:
    """An image side: a multiple of 8 within the caps."""
    size = check_int(value, what, LIMITS.min_size, LIMITS.max_size)
    if size % 8:
        raise UserError(f"{what} must be a multiple of 8, got {size}")
    return size


def check_choice(value: Any, what: str, options: Sequence[str]) -> str:
    if value not in options:
        raise UserError(f"{what} must be one of {list(options)}, got {value!r}")
    return str(value)


# ----------------------------------------------------------------------------------------------------------------------
# Pipeline facts
# ----------------------------------------------------------------------------------------------------------------------
def plain_unet(pipe) -> torch.nn.Module:
    return getattr(pipe.unet, "_orig_mod", pipe.unet)


def layer_names(pipe) -> list[str]:
    """The hookable layers, input side to output side (the layer slider walks these)."""
    return list_layers(plain_unet(pipe))


def native_size(pipe) -> int:
    """The image side the UNet was trained for."""
    sample = plain_unet(pipe).config.sample_size
    sample = sample if isinstance(sample, int) else sample[0]
    return int(sample * pipe.vae_scale_factor)


def model_name(pipe) -> str:
    return str(getattr(pipe, "name_or_path", "") or getattr(pipe.config, "_name_or_path", "") or "in-memory pipeline")


def make_generators(pipe, seed: int, count: int) -> list[torch.Generator]:
    """``count`` generators all seeded with ``seed`` (same starting noise for every row)."""
    device = pipe._execution_device
    device = torch.device("cpu") if device.type == "mps" else device
    return [torch.Generator(device=device).manual_seed(seed) for _ in range(count)]


# ----------------------------------------------------------------------------------------------------------------------
# Directions: bundled files, uploads and learned ones (per user session)
# ----------------------------------------------------------------------------------------------------------------------
def unique_name(name: str, taken: Sequence[str] | set[str]) -> str:
    """``name``, or ``name #2``, ``name #3``... whichever is free."""
    if name not in taken:
        return name
    i = 2
    while f"{name} #{i}" in taken:
        i += 1
    return f"{name} #{i}"


@dataclass
class DirectionCatalog:
    """The bundled directions (shared, loaded lazily) and helpers over a session's own ones."""

    bundled: dict[str, Path] = field(default_factory=dict)
    _cache: dict[str, SteeringVector] = field(default_factory=dict, repr=False)

    @classmethod
    def from_assets(cls) -> DirectionCatalog:
        from steer.loading import bundled_directions

        return cls({name: Path(path) for name, path in bundled_directions().items()})

    def choices(self, session: dict[str, SteeringVector] | None) -> list[str]:
        """Dropdown choices: none, the bundled directions, then the session's uploads and learned ones."""
        return [NONE_CHOICE, *self.bundled, *(session or {})]

    def get(self, name: str | None, session: dict[str, SteeringVector] | None) -> SteeringVector | None:
        """The vector called ``name`` (None for no steering)."""
        if not name or name == NONE_CHOICE:
            return None
        if session and name in session:
            return session[name]
        if name in self.bundled:
            if name not in self._cache:
                self._cache[name] = SteeringVector.load(self.bundled[name])
            return self._cache[name]
        raise UserError(f"unknown direction {name!r}; pick one from the list, upload a file, or learn one")


def load_direction_file(path: str | os.PathLike, pipe, strict: bool = True) -> SteeringVector:
    """Load an uploaded direction and check it fits ``pipe``'s UNet; raise `UserError` with the reason if not."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{path.name!r} is not a direction file: upload a .safetensors file saved by steer")
    if path.stat().st_size > LIMITS.max_upload_bytes:
        raise UserError(f"{path.name!r} is {path.stat().st_size / 2**20:.0f} MiB; direction files are far smaller")
    try:
        vector = SteeringVector.load(path)
    except SteeringFileError as err:
        raise UserError(f"cannot use {path.name!r}: {str(err).replace(str(path), 'the file')}") from None
    check_fits(vector, pipe, strict)
    return vector


def check_fits(vector: SteeringVector, pipe, strict: bool = True) -> None:
    """Raise `UserError` if ``vector`` was learned on another model than ``pipe``."""
    try:
        vector.check_compatible(plain_unet(pipe), strict=strict)
    except LayerError as err:
        raise UserError(f"direction {vector.name!r} is from another model: {err}") from None
    except ModelMismatchError as err:
        hint = " (untick 'strict model check' to use it on a fine-tune)" if "other weights" in str(err) else ""
        raise UserError(f"direction {vector.name!r} does not fit this model: {err}{hint}") from None


def save_direction(vector: SteeringVector, folder: str | os.PathLike) -> Path:
    """Write ``vector`` to ``folder`` under a file name derived from its name."""
    return vector.save(Path(folder) / f"{slug(vector.name)}.safetensors")


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe version of ``text``."""
    return (re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.") or "direction")[:limit]


# ----------------------------------------------------------------------------------------------------------------------
# Layer selection
# ----------------------------------------------------------------------------------------------------------------------
def layer_at(pipe, index: Any) -> str | None:
    """The slider's layer: 0 means all of the direction's layers (None); ``k`` is the k-th hookable layer."""
    names = layer_names(pipe)
    index = check_int(index, "the layer slider", 0, len(names))
    return None if index == 0 else names[index - 1]


def selected_layers(pipe, vector: SteeringVector | None, index: Any, chosen: Sequence[str] | None) -> list[str] | None:
    """The layers to steer: the multi-select if non-empty, else the slider's layer, else the direction's layers.

    Raises `UserError` naming the direction's layers when a chosen layer is not one of them.
    """
    names = layer_names(pipe)
    wanted = [n for n in (chosen or []) if n]
    if not wanted:
        single = layer_at(pipe, index)
        wanted = [single] if single else []
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise UserError(f"unknown layer(s) {unknown}; this UNet's hookable layers are listed in the layer picker")
    if not wanted:
        return None
    if vector is not None:
        missing = [n for n in wanted if n not in vector.layers]
        if missing:
            raise UserError(
                f"direction {vector.name!r} has no vector for layer {', '.join(missing)} - it was learned on "
                f"{len(vector.layers)} layer(s): {', '.join(vector.layers)}. Move the layer slider to 0 (all of its "
                "layers) or to one of those, or learn a direction with 'all layers' in the Learn tab."
            )
    return wanted


def describe_layer(pipe, vector: SteeringVector | None, index: Any) -> str:
    """Markdown for the layer slider's current position."""
    try:
        name = layer_at(pipe, index)
    except UserError as err:
        return f"⚠ {err}"
    total = len(layer_names(pipe))
    if name is None:
        have = f" ({len(vector.layers)} layers)" if vector is not None else ""
        return f"**Layer:** all of the direction's layers{have}"
    where = f"{int(index)}/{total}, input side → output side"
    if vector is not None and name not in vector.layers:
        return f"**Layer:** `{name}` ({where}) - ⚠ not in direction {vector.name!r}"
    return f"**Layer:** `{name}` ({where})"


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateSettings:
    """One generate request, validated by `validated`."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0
    strength: float = 1.0
    layer_index: int = 0
    layers: tuple[str, ...] = ()
    window_start: float = PAPER_WINDOW[0]
    window_end: float = PAPER_WINDOW[1]
    branch: str = "cond"
    normalize: bool = False
    mode: str = "add"
    strict: bool = True
    height: int | None = None
    width: int | None = None

    def validated(self, pipe) -> GenerateSettings:
        """A copy with checked and normalised fields; raises `UserError`."""
        size = native_size(pipe)
        start = check_float(self.window_start, "the window start", 0.0, 1.0)
        end = check_float(self.window_end, "the window end", 0.0, 1.0)
        if start >= end:
            raise UserError(f"the timestep window is empty: start {start:g} must be below end {end:g}")
        return replace(
            self,
            prompt=check_prompt(self.prompt),
            negative_prompt=check_prompt(self.negative_prompt, "negative prompt", required=False),
            seed=check_int(self.seed, "the seed", 0, LIMITS.max_seed),
            steps=check_int(self.steps, "steps", 1, LIMITS.max_steps),
            guidance=check_float(self.guidance, "guidance", 0.0, LIMITS.max_guidance),
            strength=check_float(self.strength, "the strength", -LIMITS.max_strength, LIMITS.max_strength),
            layers=tuple(self.layers or ()),
            window_start=start,
            window_end=end,
            branch=check_choice(self.branch, "the CFG branch", BRANCHES),
            mode=check_choice(self.mode, "the mode", MODES),
            normalize=bool(self.normalize),
            strict=bool(self.strict),
            height=check_size(self.height or size, "the height"),
            width=check_size(self.width or size, "the width"),
        )

    def call_kwargs(self, rows: int) -> dict[str, Any]:
        """Keyword arguments of the pipeline call for ``rows`` images of this prompt."""
        return {
            "prompt": [self.prompt] * rows,
            "negative_prompt": [self.negative_prompt] * rows if self.negative_prompt else None,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "height": self.height,
            "width": self.width,
        }

    def steering_kwargs(self, pipe, vector: SteeringVector | None) -> dict[str, Any]:
        """The ``steering_*`` arguments (without the scale)."""
        return {
            "steering": vector,
            "steering_layers": selected_layers(pipe, vector, self.layer_index, self.layers),
            "steering_window": (self.window_start, self.window_end),
            "steering_branch": self.branch,
            "steering_normalize": self.normalize,
            "steering_mode": self.mode,
            "steering_strict": self.strict,
        }

    def recipe(self, pipe, vector: SteeringVector | None, scale: float) -> dict[str, Any]:
        """Everything needed to reproduce one image."""
        return {
            "model": model_name(pipe),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
            "height": self.height,
            "width": self.width,
            "scheduler": type(pipe.scheduler).__name__,
            "steering": None
            if vector is None
            else {
                "name": vector.name,
                "digest": vector.digest(),
                "scale": scale,
                "layers": selected_layers(pipe, vector, self.layer_index, self.layers) or vector.layers,
                "window": [self.window_start, self.window_end],
                "branch": self.branch,
                "normalize": self.normalize,
                "mode": self.mode,
            },
        }


def step_callback(progress: ProgressFn | None, steps: int, desc: str = "denoising"):
    """A diffusers ``callback_on_step_end`` that reports progress (or None)."""
    if progress is None:
        return None

    def callback(_pipe, i: int, _t, kwargs: dict) -> dict:
        progress((i + 1) / steps, desc)
        return kwargs

    return callback


def run_rows(
    pipe,
    vector: SteeringVector | None,
    settings: GenerateSettings,
    scales: Sequence[float],
    progress: ProgressFn | None = None,
) -> list[Image.Image]:
    """One batched call: row ``i`` is steered at ``scales[i]``; every row starts from the same seed."""
    return run_rows_scored(pipe, vector, settings, scales, progress)[0]


def inline_detector_for(detector, settings: GenerateSettings):
    """``detector`` when its inline score can be read during this generation (calibrated inline threshold; CFG on
    for the CFG distance), else None."""
    if detector is None or detector.inline_threshold is None or "inline" not in detector.calibration:
        return None
    if getattr(detector, "inline_score", "spikiness") == "cfg_distance" and settings.guidance <= 1.0:
        return None
    return detector


def run_rows_scored(
    pipe,
    vector: SteeringVector | None,
    settings: GenerateSettings,
    scales: Sequence[float],
    progress: ProgressFn | None = None,
    detector=None,
) -> tuple[list[Image.Image], list[float] | None]:
    """`run_rows`, plus each row's inline memorization score when ``detector`` can read one (hooks during the same
    sampling: no extra UNet evaluation, identical images)."""
    rows = len(scales)
    kwargs = settings.call_kwargs(rows)
    steering = settings.steering_kwargs(pipe, vector) if vector is not None else {}
    if vector is not None:
        check_fits(vector, pipe, settings.strict)
        steering["steering_scale"] = [float(s) for s in scales] if rows > 1 else float(scales[0])
    detector = inline_detector_for(detector, settings)
    extra = {"memorization_detector": detector} if detector is not None else {}
    out = pipe(
        **kwargs,
        **steering,
        **extra,
        generator=make_generators(pipe, settings.seed, rows),
        output_type="pil",
        callback_on_step_end=step_callback(progress, settings.steps),
    )
    scores = [float(v) for v in out.memorization_scores] if detector is not None else None
    return list(out.images), scores


def run_pair(
    pipe, vector: SteeringVector | None, settings: GenerateSettings, progress: ProgressFn | None = None, detector=None
) -> tuple[Image.Image, Image.Image, list[float] | None]:
    """(original, steered, inline scores or None) from the same seed in one batched call with per-row scales [0, s]."""
    (original, steered), scores = run_rows_scored(pipe, vector, settings, [0.0, settings.strength], progress, detector)
    return original, steered, scores


def strip_scales(strength: float, count: int) -> list[float]:
    """``count`` evenly spaced scales from ``-|strength|`` to ``+|strength|``."""
    count = check_int(count, "the strip length", 2, LIMITS.max_strip)
    top = abs(float(strength))
    if top == 0:
        raise UserError("set a non-zero strength: the strip spans -|strength| .. +|strength|")
    return [round(float(v), 6) for v in np.linspace(-top, top, count)]


def upscale_for_display(image: Image.Image, min_side: int = 256) -> Image.Image:
    """Nearest-neighbour upscale by an integer factor so small images are visible (pixel values unchanged)."""
    factor = max(1, math.ceil(min_side / max(1, min(image.size))))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def save_with_recipe(image: Image.Image, recipe: dict[str, Any], folder: str | os.PathLike, stem: str) -> Path:
    """A PNG carrying ``recipe`` (see `steer.recipe`), in a fresh sub-folder of ``folder``."""
    from steer.recipe import recipe_hash, save_png

    target = Path(tempfile.mkdtemp(dir=folder)) / f"{slug(stem)}-{recipe_hash(recipe)[:8]}.png"
    return save_png(image, target, recipe)


# ----------------------------------------------------------------------------------------------------------------------
# Learning
# ----------------------------------------------------------------------------------------------------------------------
def parse_prompt_lines(text: str | None, what: str) -> list[str]:
    """Non-empty lines of ``text``, each within the prompt cap; at most ``max_learn_prompts``."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if len(lines) > LIMITS.max_learn_prompts:
        raise UserError(f"the {what} prompts have {len(lines)} lines; at most {LIMITS.max_learn_prompts} are allowed")
    return [check_prompt(line, f"{what} prompt") for line in lines]


def load_images(files: Sequence[Any] | None, what: str) -> list[Image.Image]:
    """Open uploaded image files as RGB; raise `UserError` naming an unreadable one."""
    files = [f for f in (files or []) if f]
    if len(files) > LIMITS.max_learn_images:
        raise UserError(f"{len(files)} {what} images uploaded; at most {LIMITS.max_learn_images} are allowed")
    images = []
    for item in files:
        path = Path(getattr(item, "name", None) or item)
        try:
            with Image.open(path) as im:
                im.load()
                images.append(im.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError):
            raise UserError(f"{path.name!r} ({what}) is not a readable image") from None
    return images


@dataclass(frozen=True)
class LearnSettings:
    """One learn request."""

    positive: str = ""
    negative: str = ""
    positive_files: tuple[Any, ...] = ()
    negative_files: tuple[Any, ...] = ()
    method: str = "mean_diff"
    mode: str = "fast"
    scope: str = "all layers"
    layers: tuple[str, ...] = ()
    num_samples: int = 8
    steps: int = 20
    guidance: float = 5.0
    seed: int = 0
    name: str = ""
    image_prompt: str = ""

    def sets(self) -> tuple[list, list]:
        """(positive, negative) items: images if any were uploaded for the positive set, else prompt lines."""
        if self.positive_files:
            pos = load_images(self.positive_files, "positive")
            neg = load_images(self.negative_files, "negative")
        else:
            if self.negative_files:
                raise UserError("negative images need positive images too (or use prompts for both sets)")
            pos = parse_prompt_lines(self.positive, "positive")
            neg = parse_prompt_lines(self.negative, "negative")
        if not pos:
            raise UserError("the positive set is empty: write at least one prompt (or upload images)")
        if self.method != "mean" and not neg:
            raise UserError(f"method {self.method!r} needs a negative set; add negative prompts/images or use 'mean'")
        return pos, neg

    def layer_list(self, pipe) -> list[str]:
        scope = check_choice(self.scope, "the layer scope", LAYER_SCOPES)
        if scope == "all layers":
            return layer_names(pipe)
        if scope == "paper default":
            return default_layers(plain_unet(pipe))
        chosen = [n for n in self.layers if n]
        if not chosen:
            raise UserError("pick at least one layer, or choose 'all layers'")
        unknown = [n for n in chosen if n not in layer_names(pipe)]
        if unknown:
            raise UserError(f"unknown layer(s) {unknown}")
        return chosen

    def kwargs(self, pipe) -> dict[str, Any]:
        """Keyword arguments for `learn_direction` (after validation)."""
        return {
            "layers": self.layer_list(pipe),
            "method": check_choice(self.method, "the method", LEARN_METHODS),
            "mode": check_choice(self.mode, "the mode", LEARN_MODES),
            "num_samples": check_int(self.num_samples, "samples per set", 1, LIMITS.max_learn_samples),
            "num_inference_steps": check_int(self.steps, "learning steps", 1, LIMITS.max_learn_steps),
            "guidance_scale": check_float(self.guidance, "learning guidance", 0.0, LIMITS.max_guidance),
            "seed": check_int(self.seed, "the learning seed", 0, LIMITS.max_seed),
            "name": check_prompt(self.name, "name", required=False) or None,
            "image_prompts": check_prompt(self.image_prompt, "image prompt", required=False),
        }


class StagedProgress:
    """Map `learn_direction`'s per-stage fractions (each stage runs 0 -> 1) onto one 0 -> 1 bar."""

    def __init__(self, report: ProgressFn, stages: int):
        self.report, self.stages, self.stage, self.last = report, max(stages, 1), 0, 0.0

    def __call__(self, fraction: float, desc: str) -> None:
        if fraction < self.last:
            self.stage = min(self.stage + 1, self.stages - 1)
        self.last = fraction
        self.report(min((self.stage + fraction) / self.stages, 1.0), desc)


def learn(pipe, settings: LearnSettings, progress: ProgressFn | None = None) -> SteeringVector:
    """Validate ``settings`` and learn a direction (forward passes only)."""
    kwargs = settings.kwargs(pipe)
    pos, neg = settings.sets()
    images = isinstance(pos[0], Image.Image)
    stages = (1 if images or kwargs["mode"] == "fast" else 2) * (2 if neg else 1)
    report: Any = StagedProgress(progress, stages) if progress else False
    return pipe.learn_direction(pos, neg or None, progress=report, **kwargs)


def direction_summary(vector: SteeringVector) -> str:
    """Markdown describing a direction."""
    meta = vector.metadata
    layers = vector.layers
    shown = ", ".join(f"`{n}`" for n in layers[:4]) + (f" … (+{len(layers) - 4})" if len(layers) > 4 else "")
    return (
        f"**{vector.name}** - method `{meta.get('method', '?')}`, source `{meta.get('source', '?')}`, "
        f"{len(layers)} layer(s): {shown}; digest `{vector.digest()[:12]}`"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Memorization (steer.detect): the calibrated detector of the model, its verdict and its histogram
# ----------------------------------------------------------------------------------------------------------------------
DETECTOR_FILES = ("detector.safetensors", "memorization_detector.safetensors", "detector/detector.safetensors")


def detector_candidates(pipe) -> list[Path]:
    """Where a calibrated detector for ``pipe``'s model is looked for: ``$STEER_DETECTOR``, next to the model,
    then ``assets/detectors/<model name>.safetensors``."""
    from steer.loading import ASSETS

    out = [Path(os.environ["STEER_DETECTOR"])] if os.environ.get("STEER_DETECTOR") else []
    name = model_name(pipe)
    folder = Path(name)
    if name and folder.is_dir():
        out += [folder / f for f in DETECTOR_FILES]
    out.append(ASSETS / "detectors" / f"{slug(folder.name or 'model')}.safetensors")
    return out


def load_detector(pipe, path: str | os.PathLike | None = None):
    """The calibrated `MemorizationDetector` at ``path`` (or the first candidate that exists), or None.

    Raises `UserError` when steer.detect is missing or the file is damaged / from another model.
    """
    try:
        from steer.detect import MemorizationDetector
    except ImportError:
        raise UserError("memorization detection is not available: steer.detect is missing from this install") from None
    paths = [Path(path)] if path else [p for p in detector_candidates(pipe) if p.is_file()]
    if not paths:
        return None
    try:
        detector = MemorizationDetector.load(paths[0], pipe)
    except (SteeringFileError, ModelMismatchError, ValueError, OSError) as err:
        raise UserError(f"cannot use the detector file {paths[0].name!r}: {err}") from None
    return detector


def calibrate_detector(
    pipe,
    prompts: Sequence[str],
    samples: int,
    fpr: float,
    steps: int,
    guidance: float,
    progress: ProgressFn | None = None,
):
    """A fresh detector calibrated on ``samples`` ordinary images of ``prompts`` (thresholds at ``fpr``)."""
    try:
        from steer.detect import MemorizationDetector
    except ImportError:
        raise UserError("memorization detection is not available: steer.detect is missing from this install") from None
    prompts = [check_prompt(p, "calibration prompt") for p in prompts if p.strip()]
    if not prompts:
        raise UserError("write at least one ordinary prompt to calibrate on")
    samples = check_int(samples, "calibration samples", 4, 256)
    fpr = check_float(fpr, "the false-positive rate", 0.001, 0.5)
    items = [prompts[i % len(prompts)] for i in range(samples)]
    if progress:
        progress(0.0, "calibrating")
    from steer.detect import RECOMMENDED_INLINE

    try:  # the inline score that worked best (docs/detection.md); it needs the layer and classifier-free guidance
        detector = MemorizationDetector(pipe, **RECOMMENDED_INLINE) if guidance > 1.0 else MemorizationDetector(pipe)
    except KeyError:
        detector = MemorizationDetector(pipe)
    detector.calibrate(
        items,
        fpr=fpr,
        seed=1_000_000,
        num_inference_steps=check_int(steps, "steps", 1, LIMITS.max_steps),
        guidance_scale=guidance,
    )
    return detector


@dataclass
class MemorizationView:
    """What the Memorization panel shows: a verdict (markdown) and the histogram with the image's score."""

    markdown: str
    plot: Image.Image | None = None


def _verdict_view(score: float, ordinary, threshold: float, fpr: float | None, described: str, xlabel: str) -> MemorizationView:
    """Verdict text and histogram of ``score`` against the ``ordinary`` calibration scores; ``described`` names the
    score after the verdict (e.g. ``"score **1.2**"``)."""
    ordinary = ordinary.double()
    percentile = float((ordinary < score).double().mean() * 100)
    verdict = "⚠ **likely memorized**" if score > threshold else "✓ **ordinary** (not flagged)"
    rate = f" at a {fpr:.0%} false-positive rate" if fpr is not None else ""
    text = (
        f"{verdict} - {described}, threshold {threshold:.4g}{rate}. Higher than {percentile:.0f}% of "
        f"{len(ordinary)} ordinary samples of this model."
    )
    return MemorizationView(text, histogram(ordinary.float().numpy(), score, threshold, xlabel))


def inline_view(detector, score: float) -> MemorizationView:
    """The verdict of an inline score read while the image was generated, on the ordinary-sample histogram."""
    what = "CFG distance" if getattr(detector, "inline_score", "spikiness") == "cfg_distance" else "spikiness"
    described = f"inline {what} **{score:.4g}**, read while this image was generated (no extra UNet evaluation)"
    return _verdict_view(score, detector.calibration["inline"], float(detector.inline_threshold), detector.fpr,
                         described, f"inline {what} (higher = more memorized)")


def score_image(detector, image: Image.Image, prompt: str) -> MemorizationView:
    """Score ``image`` (the paper's re-encode score) and place it on the ordinary-sample histogram."""
    score = float(detector.score([image], [prompt])[0])
    ordinary = detector.calibration.get("reencode")
    threshold = detector.threshold
    if threshold is None or ordinary is None or len(ordinary) == 0:
        return MemorizationView(
            f"Score **{score:.4g}** (higher = more memorized). The detector is not calibrated: no verdict."
        )
    return _verdict_view(score, ordinary, threshold, detector.fpr, f"score **{score:.4g}**",
                         "re-encode score (higher = more memorized)")


def histogram(
    ordinary: np.ndarray, score: float, threshold: float, xlabel: str = "re-encode score (higher = more memorized)"
) -> Image.Image | None:
    """The ordinary-sample score histogram with the threshold and this image's score marked (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    ax.hist(ordinary, bins=min(30, max(5, len(ordinary) // 3)), color="#88aacc", label="ordinary samples")
    ax.axvline(threshold, color="#cc3311", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.axvline(score, color="#222222", linewidth=2.5, label=f"this image {score:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
