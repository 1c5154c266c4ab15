"""Files the Gradio demo reads: bundled and uploaded directions, the memorization detector, and uploads to discard.

Every way a file can be bad (damaged, foreign, hand-edited metadata of the wrong type, nesting the JSON parser cannot
follow, layer names that are not this UNet's) ends as a `UserError` with one readable line naming the file, never as
an "internal error". Never imports gradio.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer.app.base import (
    LIMITS,
    MALFORMED_FILE_ERRORS,
    UserError,
    clean_text,
    md_code,
    md_text,
    model_name,
    shown,
    slug,
)
from steer.calibrate import calibrated_for, fit_advice, full_edit_scale
from steer.config import BRANCHES, MODES
from steer.denoisers import LayerError, denoiser_of
from steer.learn import IMAGE_SET_ADVICE, UNCALIBRATED_ADVICE
from steer.vectors import ModelMismatchError, SteeringFileError, SteeringVector
from steer.window_choice import read_window_choice

NONE_CHOICE = "(none)"


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
    def from_assets(cls, model: str | os.PathLike | None = None, pipe: Any = None) -> DirectionCatalog:
        """The directions shipped for ``model`` (a model folder's own ``directions/``, else the demo model's); with
        ``pipe``, only those whose model fits it (architecture and layers; fine-tunes of the same UNet kept), so a
        model that ships none offers none instead of files that fail when picked."""
        from steer.assets import DIRECTIONS_DIR, bundled_directions, directions_dir

        catalog = cls({name: Path(path) for name, path in bundled_directions(model).items()})
        if pipe is not None:
            for name in list(catalog.bundled):
                try:
                    check_fits(catalog.get(name, None), pipe, strict=False)
                except UserError as err:
                    if model is not None and directions_dir(model) != DIRECTIONS_DIR:  # the model's own: say why
                        logging.getLogger("steer.app").warning("left out the bundled direction %s: %s", name, err)
                    del catalog.bundled[name]
                    catalog._cache.pop(name, None)
        return catalog

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
                self._cache[name] = read_direction(self.bundled[name], f"the bundled direction {name!r}")
            return self._cache[name]
        raise UserError(f"unknown direction {shown(name)}; pick one from the list, upload a file, or learn one")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def recommended_problem(rec: Any) -> str | None:
    """Why ``metadata["recommended"]`` cannot be applied to the app's controls (None when it can)."""
    if not isinstance(rec, Mapping):
        return f"its recommended settings are {_kind(rec)}, not an object"
    scale, window, mode, normalize, branch = (rec.get(k) for k in ("scale", "window", "mode", "normalize", "branch"))
    if scale is not None and not _finite(scale):
        return f"its recommended scale is {shown(scale, 40)}, not a finite number"
    if window is not None and not (
        isinstance(window, list | tuple) and len(window) == 2 and all(_finite(w) for w in window)
        and 0.0 <= window[0] < window[1] <= 1.0
    ):
        return f"its recommended window is {shown(window, 40)}, not [start, end] with 0 <= start < end <= 1"
    if mode is not None and mode not in MODES:
        return f"its recommended mode is {shown(mode, 40)}, not one of {list(MODES)}"
    if normalize is not None and not isinstance(normalize, bool):
        return f"its recommended 'normalize' is {_kind(normalize)}, not true/false"
    if branch is not None and branch not in BRANCHES:
        return f"its recommended branch is {shown(branch, 40)}, not one of {list(BRANCHES)}"
    return None


def metadata_problem(meta: Any) -> str | None:
    """Why the app cannot use a direction's metadata (None when it can): the fields the app reads must have the
    types it expects. (`SteeringVector.load` may check more; this is the app's own guard.)"""
    if not isinstance(meta, Mapping):
        return f"its metadata is {_kind(meta)}, not an object"
    if "name" in meta and not isinstance(meta["name"], str):
        return f"its name is {_kind(meta['name'])}, not text"
    model = meta.get("model")
    if model is not None:
        if not isinstance(model, Mapping):
            return f"its model fingerprint is {_kind(model)}, not an object"
        if not isinstance(model.get("architecture", {}), Mapping):
            return "its model fingerprint's architecture is not an object"
        for key in ("unet_class", "config_hash", "weights_hash", "name_or_path"):
            if model.get(key) is not None and not isinstance(model[key], str):
                return f"its model fingerprint's {key} is {_kind(model[key])}, not text"
    norms = meta.get("activation_norm")
    if norms is not None:
        if not isinstance(norms, Mapping):
            return f"its activation norms are {_kind(norms)}, not an object"
        bad = [k for k, v in norms.items() if not (_finite(v) and v > 0)]
        if bad:
            return f"its activation norm for layer {shown(bad[0], 60)} is not a positive finite number"
    if meta.get("recommended") is not None:
        return recommended_problem(meta["recommended"])
    return None


def _without_path(err: BaseException, path: Path) -> str:
    """``err``'s message without the (temporary, server-side) path of the file: the caller names the file."""
    text = str(err).replace(f"{path}: ", "")
    if text.endswith(f": {path}"):  # "... file not found: PATH": the caller's label names it
        return text[: -len(f": {path}")]
    return text.replace(str(path), "the file")


def read_direction(path: str | os.PathLike, label: str) -> SteeringVector:
    """`SteeringVector.load` for the app: any problem with the file becomes a `UserError` naming ``label``;
    the vector's name comes back cleaned (no control characters, at most `Limits.max_shown_chars`)."""
    path = Path(path)
    try:
        vector = SteeringVector.load(path)
    except SteeringFileError as err:
        raise UserError(f"cannot use {label}: {_without_path(err, path)}") from None
    except MALFORMED_FILE_ERRORS as err:  # a header field of an unexpected type, nesting too deep to parse, ...
        detail = _without_path(err, path)
        raise UserError(f"cannot use {label}: its header is malformed ({type(err).__name__}: {detail})") from None
    problem = metadata_problem(vector.metadata)
    if not problem and vector.opposite is not None:  # a two-sided direction: its opposite's header too
        problem = metadata_problem(vector.opposite.metadata)
    if problem:
        raise UserError(f"cannot use {label}: {problem}")
    name = clean_text(vector.metadata.get("name", "direction")) or "direction"
    if name != vector.metadata.get("name", "direction"):
        vector = SteeringVector(vector.directions, {**vector.metadata, "name": name}, vector.opposite)
    return vector


def load_direction_file(path: str | os.PathLike, pipe, strict: bool = True) -> SteeringVector:
    """Load an uploaded direction and check it fits ``pipe``'s UNet; raise `UserError` with the reason if not."""
    path = Path(path)
    label = shown(path.name)
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{label} is not a direction file: upload a .safetensors file saved by steer")
    try:
        size = path.stat().st_size
    except OSError:
        raise UserError(f"{label} is gone: upload it again") from None
    if size > LIMITS.max_direction_bytes:
        raise UserError(
            f"{label} is {size / 2**20:.1f} MiB; direction files are far smaller "
            f"(at most {LIMITS.max_direction_bytes / 2**20:.0f} MiB)"
        )
    vector = read_direction(path, label)
    try:
        check_fits(vector, pipe, strict)
    except UserError as err:
        raise UserError(f"cannot use {label}: {err}") from None
    return vector


def check_fits(vector: SteeringVector, pipe, strict: bool = True) -> None:
    """Raise `UserError` if ``vector`` was learned on another model than ``pipe`` (or its file's layer names or
    fingerprint cannot be read)."""
    name = shown(vector.name)
    try:
        vector.check_compatible(denoiser_of(pipe), strict=strict)
    except LayerError as err:
        raise UserError(f"direction {name} is from another model: {err}") from None
    except ModelMismatchError as err:
        hint = " (untick 'strict model check' to use it on a fine-tune)" if "other weights" in str(err) else ""
        raise UserError(f"direction {name} does not fit this model: {err}{hint}") from None
    except MALFORMED_FILE_ERRORS as err:  # e.g. a layer name with glob characters, a fingerprint of the wrong type
        raise UserError(f"direction {name} cannot be checked against this model ({type(err).__name__}: {err})") from None


def save_direction(vector: SteeringVector, folder: str | os.PathLike) -> Path:
    """Write ``vector`` to ``folder`` under a file name derived from its name."""
    return vector.save(Path(folder) / f"{slug(vector.name)}.safetensors")


def direction_summary(vector: SteeringVector) -> str:
    """Markdown describing a direction (every field from the file escaped and cut)."""
    meta = vector.metadata
    layers = vector.layers
    shown_layers = ", ".join(md_code(n) for n in layers[:4]) + (f" … (+{len(layers) - 4})" if len(layers) > 4 else "")
    recommended = meta.get("recommended")
    readers = recommended.get("readers") if isinstance(recommended, dict) else None
    routed = f", read by {', '.join(md_code(str(r), 40) for r in readers[:4])} only" if isinstance(readers, list) and readers else ""
    sampling, full = calibrated_for(meta), full_edit_scale(meta)
    calibrated = f"; strength {full:.3g} is the full edit calibrated for {md_text(sampling, 200)}" if sampling and full else ""
    slider = ""
    if vector.opposite is not None:  # what each end of a two-sided direction edits toward
        two = meta.get("two_sided") if isinstance(meta.get("two_sided"), dict) else {}
        ends = [(two.get(k) or ["?"])[0] for k in ("positive", "negative")]
        slider = f"; a two-sided slider: +1 toward *{md_text(str(ends[0]), 80)}*, -1 toward *{md_text(str(ends[1]), 80)}*"
        if meta.get("flip") and vector.opposite.metadata.get("flip"):  # steer.sliders: fitted at learning
            slider += " (a prompt that states one end is turned to the other: that end taken away)"
    return (
        f"**{md_text(vector.name)}** - method {md_code(meta.get('method', '?'), 40)}, "
        f"source {md_code(meta.get('source', '?'), 40)}, {len(layers)} layer(s): {shown_layers}{routed}{calibrated}{slider}; "
        f"digest `{vector.digest()[:12]}`"
    )


def direction_advice(vector: SteeringVector) -> str:
    """A Markdown note when the direction's own calibration says it will barely edit (a weak recipe), or when a
    text / trajectory direction had no negative prompts to calibrate against, or when it was learned from images, else ""."""
    meta = vector.metadata
    advice = fit_advice(meta.get("calibration"))
    if not advice and meta.get("source") in ("prompts-text", "prompts-trajectory") and not meta.get("negative"):
        advice = UNCALIBRATED_ADVICE
    if not advice and meta.get("source") == "images":
        advice = IMAGE_SET_ADVICE
    return f"\n\n**Note:** {md_text(advice, LIMITS.max_message_chars)}" if advice else ""


def window_choice_note(vector: SteeringVector) -> str:
    """A Markdown sentence on the window ``window="auto"`` chose (and the distances it compared), else ""."""
    choice = read_window_choice(vector.metadata)
    if choice is None:
        return ""
    start, end = choice.chosen
    return f" Window chosen by calibration: **{start:g}-{end:g}** {choice.sentence(separator='-', digits=2)}."


def route_choice_note(vector: SteeringVector) -> str:
    """A Markdown sentence on the route ``readers="auto"`` chose (and the structure share it decided on), else ""."""
    choice = vector.metadata.get("route_choice")
    try:
        structure, below, readers = float(choice["structure"]), float(choice["below"]), choice["readers"]
    except (TypeError, KeyError, ValueError):
        return ""
    route = "the layout blocks only (a layout edit)" if readers else "every cross-attention (an appearance edit)"
    return (f" Read by {route}: the positive prompts' own samples keep {structure:.2f} of the open prompts' layout "
            f"(below {below:g}: the edit moves the layout).")


def recommended_settings(vector: SteeringVector | None) -> tuple[Any, Any, Any, Any, Any, Any]:
    """(strength, window start, window end, CFG branch, mode, normalize) the direction recommends, None for each it does
    not (or whose value the controls cannot take: a strength outside the slider)."""
    rec = (vector.metadata.get("recommended") or {}) if vector is not None else {}
    if recommended_problem(rec):
        return (None,) * 6
    scale = rec.get("scale")
    if scale is not None and abs(scale) > LIMITS.slider_strength:
        scale = None
    window = rec.get("window") or (None, None)
    return scale, window[0], window[1], rec.get("branch"), rec.get("mode"), rec.get("normalize")


# ----------------------------------------------------------------------------------------------------------------------
# Uploads: gradio keeps each uploaded file in its upload folder; the app removes the ones it has read
# ----------------------------------------------------------------------------------------------------------------------
def discard_upload(path: str | os.PathLike | None, root: str | os.PathLike | None) -> bool:
    """Delete the uploaded file ``path`` if it lies inside gradio's upload folder ``root`` (never anything else:
    a file the user passed from their own disk through the Python API is left alone), then its per-upload folder if
    that is now empty. Symlinks are removed, not followed. True when a file was removed."""
    if not path or not root:
        return False
    try:
        root_dir = Path(root).resolve()
        folder = Path(path).parent.resolve()
        if folder == root_dir or not folder.is_relative_to(root_dir):
            return False
        target = folder / Path(path).name
        if not target.is_symlink() and not target.is_file():
            return False
        target.unlink()
        try:
            folder.rmdir()  # only when empty
        except OSError:
            pass
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------------------------
# The memorization detector
# ----------------------------------------------------------------------------------------------------------------------
DETECTOR_FILES = ("detector.safetensors", "memorization_detector.safetensors", "detector/detector.safetensors")


def detector_candidates(pipe) -> list[Path]:
    """Where a calibrated detector for ``pipe``'s model is looked for: ``$STEER_DETECTOR``, next to the model,
    then ``assets/detectors/<model name>.safetensors``."""
    from steer.assets import ASSETS

    out = [Path(os.environ["STEER_DETECTOR"])] if os.environ.get("STEER_DETECTOR") else []
    name = model_name(pipe)
    folder = Path(name)
    if name and folder.is_dir():
        out += [folder / f for f in DETECTOR_FILES]
    out.append(ASSETS / "detectors" / f"{slug(folder.name or 'model')}.safetensors")
    return out


def detector_problem(detector) -> str | None:
    """Why the app cannot show verdicts from ``detector`` (None when it can): thresholds and the calibration
    scores it plots must be finite numbers, the scores 1-D and non-empty."""
    thresholds = {"threshold": detector.threshold, "inline threshold": detector.inline_threshold}
    for what, value in thresholds.items():
        if value is not None and not _finite(value):
            return f"its {what} is {shown(value, 40)}, not a finite number"
    if detector.fpr is not None and not (_finite(detector.fpr) and 0 < detector.fpr < 1):
        return f"its false-positive rate is {shown(detector.fpr, 40)}, not a number between 0 and 1"
    calibration = detector.calibration
    if not isinstance(calibration, Mapping):
        return "its calibration scores are not a mapping"
    for key, scores in calibration.items():
        shape = tuple(getattr(scores, "shape", ()))
        if len(shape) != 1 or shape[0] == 0:
            return f"its {shown(key, 40)} calibration scores have shape {shape}, expected a non-empty list of scores"
        if not bool(scores.isfinite().all()):
            return f"its {shown(key, 40)} calibration scores contain NaN or infinite values"
    needs = [("threshold", "reencode"), ("inline_threshold", "inline")]
    for attr, key in needs:
        if getattr(detector, attr) is not None and key not in calibration:
            return f"it has a {attr.replace('_', ' ')} but no {key} calibration scores"
    return None


def load_detector(pipe, path: str | os.PathLike | None = None):
    """The calibrated `MemorizationDetector` at ``path`` (or the first candidate that exists), or None.

    Raises `UserError` when steer.detect is missing or the file is damaged, malformed or from another model.
    """
    try:
        from steer.detect.detector import MemorizationDetector
    except ImportError:
        raise UserError("memorization detection is not available: steer.detect is missing from this install") from None
    paths = [Path(path)] if path else [p for p in detector_candidates(pipe) if p.is_file()]
    if not paths:
        return None
    label = shown(paths[0].name)
    try:
        detector = MemorizationDetector.load(paths[0], pipe)
    except (SteeringFileError, ModelMismatchError, LayerError) as err:
        raise UserError(f"cannot use the detector file {label}: {_without_path(err, paths[0])}") from None
    except MALFORMED_FILE_ERRORS as err:
        detail = _without_path(err, paths[0])
        raise UserError(f"cannot use the detector file {label}: it is malformed ({type(err).__name__}: {detail})") from None
    problem = detector_problem(detector)
    if problem:
        raise UserError(f"cannot use the detector file {label}: {problem}")
    return detector


RUN_PREFIX = "run-"  # the folder of one Generate, Learn or Calibrate in the app's work folder
KEPT_INPUT = "edit-*.png"  # an edited picture kept for its recipe (`steer.app.uploads.kept_edit_input`)


def run_folder(workdir: str | os.PathLike) -> Path:
    """A fresh folder for one run's files in ``workdir`` (swept by `sweep_runs` once old)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=workdir))


def sweep_runs(workdir: str | os.PathLike, max_age: float, now: float | None = None) -> int:
    """Remove the run folders and kept edit inputs in ``workdir`` older than ``max_age`` seconds (what the app made
    there, nothing else; symlinks are left alone): a long-running demo's work folder grew without bound. Returns how
    many entries went."""
    import shutil
    import time

    now = time.time() if now is None else now
    folder, removed = Path(workdir), 0
    entries = [*folder.glob(f"{RUN_PREFIX}*"), *folder.glob(KEPT_INPUT)]
    for entry in entries:
        try:
            if entry.is_symlink() or now - entry.stat().st_mtime <= max_age:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:  # in use, or gone already: the next sweep
            continue
    return removed
