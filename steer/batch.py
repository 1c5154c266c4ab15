"""Scripted batch edits: ``steer batch JOBS --out DIR`` runs a file of generation jobs, batched, resumable, in parallel.

A jobs file is ``.jsonl`` (one JSON object per line), ``.csv`` (a header row of field names) or ``.yaml`` (a list of
mappings, or ``{defaults: {...}, jobs: [...]}``). A job's fields use the pipeline's own names::

    {"prompt": "a sneaker", "seeds": [0, 1], "num_inference_steps": 30, "guidance_scale": 7.5,
     "directions": [{"path": "red.safetensors", "sweep": [-4, 4, 5]}], "steering_window": [0.45, 0.95],
     "name": "sneaker-red"}

Every image becomes one PNG carrying its recipe (`steer.recipe.save_png`) and one line of ``manifest.jsonl``.
Images that share their call setup (sizes, steps, guidance, direction set, steering options) run as rows of one
pipeline call (different prompts, seeds and scales per row). Batches are formed from the whole jobs file before
anything is skipped, so an image's bytes never depend on what was already done or on the number of processes.
Rerunning the same command skips finished images (key: the recipe hash; the PNG must exist with its recorded
sha256). Under 🤗 accelerate, batches are dealt round-robin to the processes; each appends to its own
``manifest.rank{N}.jsonl`` and the main process merges them into ``manifest.jsonl``.

Python API: `run` (returns the summary), `read_jobs`, `plan_jobs`, `generate_batch`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import io
import itertools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer.recipe import png_bytes_hash, read_recipe, recipe_hash, save_png

MANIFEST = "manifest.jsonl"
JOB_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "seeds",
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "directions",
    "steering_layers",
    "steering_window",
    "steering_branch",
    "steering_normalize",
    "steering_mode",
    "steering_strict",
    "name",
    "model",
)
DEFAULTS: dict[str, Any] = {"num_inference_steps": 30, "guidance_scale": 7.5}
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1
MAX_IMAGES_PER_JOB = 10_000
MAX_SIZE = 8192
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")


class JobError(ValueError):
    """A job that cannot run: its line number and the reason."""

    def __init__(self, line: int, reason: str):
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


# ======================================================================================================================
# Reading jobs files
# ======================================================================================================================
RawJob = tuple[int, "dict[str, Any] | JobError"]


def read_jobs(path: str | os.PathLike) -> list[RawJob]:
    """Parse a ``.jsonl``, ``.csv`` or ``.yaml``/``.yml`` jobs file into ``(line, fields | JobError)`` pairs.

    A malformed entry becomes a `JobError` carrying its line number; the other entries are unaffected. A file that
    cannot be read at all (unknown suffix, YAML syntax error, CSV without header) raises ValueError / OSError.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        return _read_jsonl(text)
    if suffix == ".csv":
        return _read_csv(text)
    if suffix in (".yaml", ".yml"):
        return _read_yaml(text)
    raise ValueError(f"{path}: unknown jobs file type {suffix!r}; use .jsonl, .csv or .yaml")


def _read_jsonl(text: str) -> list[RawJob]:
    jobs: list[RawJob] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError as err:
            jobs.append((line_no, JobError(line_no, f"malformed JSON ({err.msg} at column {err.colno})")))
            continue
        if not isinstance(value, dict):
            jobs.append((line_no, JobError(line_no, f"a job must be a JSON object, got {type(value).__name__}")))
            continue
        jobs.append((line_no, value))
    return jobs


def _read_yaml(text: str) -> list[RawJob]:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        if context is not None and getattr(err, "context", None):
            where += f" ({err.context} from line {context.line + 1})"
        raise ValueError(f"YAML syntax error{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return []
    defaults: dict[str, Any] = {}
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"defaults", "jobs"})
        if unknown or not isinstance(data.get("jobs"), list):
            raise ValueError("a YAML jobs file is a list of jobs or a mapping with 'jobs' (a list) and optional 'defaults'")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise ValueError("YAML 'defaults' must be a mapping of job fields")
        root = next(v for k, v in root.value if k.value == "jobs")
        data = data["jobs"]
    if not isinstance(data, list):
        raise ValueError("a YAML jobs file is a list of jobs or a mapping with 'jobs' and optional 'defaults'")
    jobs: list[RawJob] = []
    for node, value in zip(root.value, data, strict=True):
        line_no = node.start_mark.line + 1
        if not isinstance(value, dict):
            jobs.append((line_no, JobError(line_no, f"a job must be a mapping, got {type(value).__name__}")))
        else:
            jobs.append((line_no, {**defaults, **value}))
    return jobs


_CSV_INT = {"seed", "num_inference_steps", "height", "width"}
_CSV_FLOAT = {"guidance_scale"}
_CSV_BOOL = {"steering_normalize", "steering_strict"}
_CSV_LISTS = {"seeds": int, "steering_layers": str, "steering_window": float}


def _read_csv(text: str) -> list[RawJob]:
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    jobs: list[RawJob] = []
    for row in reader:
        line_no = reader.line_num
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [h.strip() for h in row]
            unknown = [h for h in header if h not in JOB_FIELDS]
            if unknown:
                raise ValueError(f"CSV header line {line_no}: unknown column(s) {unknown}; known: {list(JOB_FIELDS)}")
            continue
        if len(row) > len(header):
            jobs.append((line_no, JobError(line_no, f"{len(row)} cells but the header has {len(header)} columns")))
            continue
        try:
            fields = {h: _csv_cell(h, c.strip()) for h, c in zip(header, row, strict=False) if c.strip()}
        except ValueError as err:
            jobs.append((line_no, JobError(line_no, str(err))))
            continue
        jobs.append((line_no, fields))
    if header is None and text.strip():
        raise ValueError("CSV jobs file has no header row")
    return jobs


def _csv_cell(column: str, text: str) -> Any:
    """A CSV cell as a typed value: JSON if it starts with '[' or '{', else by the column's type."""
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{column}: malformed JSON ({err.msg})") from None
    if column in _CSV_INT:
        return _int_text(column, text)
    if column in _CSV_FLOAT:
        return _float_text(column, text)
    if column in _CSV_BOOL:
        low = text.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{column} must be true or false, got {text!r}")
        return low in ("true", "1", "yes")
    if column in _CSV_LISTS:
        cast = _CSV_LISTS[column]
        items = [t for t in re.split(r"[;,\s]+", text) if t]
        return [_int_text(column, t) if cast is int else _float_text(column, t) if cast is float else t for t in items]
    if column == "directions":
        return [_compact_direction(t.strip()) for t in text.split(";") if t.strip()]
    return text


def _compact_direction(text: str) -> dict[str, Any]:
    """``path``, ``path@SCALE`` or ``path@LO:HI:N`` (a sweep)."""
    path, _, spec = text.rpartition("@") if "@" in text else (text, "", "")
    if not spec:
        return {"path": path}
    parts = spec.split(":")
    if len(parts) == 1:
        return {"path": path, "scale": _float_text("directions", parts[0])}
    if len(parts) == 3:
        return {"path": path, "sweep": [_float_text("directions", parts[0]), _float_text("directions", parts[1]), _int_text("sweep n", parts[2])]}
    raise ValueError(f"directions: {text!r} is not path, path@scale or path@lo:hi:n")


def _int_text(what: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {text!r}") from None


def _float_text(what: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {text!r}") from None


def _coerce_jobs(jobs: str | os.PathLike | Iterable[Any]) -> tuple[list[RawJob], Path | None]:
    """A path, a list of job dicts (line = position, from 1) or of ``(line, dict)`` pairs."""
    if isinstance(jobs, str | os.PathLike):
        return read_jobs(jobs), Path(jobs).resolve().parent
    out: list[RawJob] = []
    for i, item in enumerate(jobs, start=1):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int):
            out.append(item)
        else:
            out.append((i, item if isinstance(item, dict) else JobError(i, f"a job must be a mapping, got {type(item).__name__}")))
    return out, None


# ======================================================================================================================
# Validation
# ======================================================================================================================
@dataclass(frozen=True)
class CallSetup:
    """What the images of one batched pipeline call must share."""

    model: str
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    vectors: tuple = ()
    digests: tuple[str, ...] = ()
    layer_patterns: tuple[str, ...] | None = None
    window: tuple[float, float] | None = None
    branch: str | None = None
    normalize: bool | None = None
    mode: str | None = None
    strict: bool | None = None

    def key(self) -> tuple:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "vectors")


@dataclass
class ImageJob:
    """One output image: its job line, index within the job, row inputs, recipe, key and output path."""

    line: int
    index: int
    prompt: str
    negative_prompt: str | None
    seed: int
    scales: tuple[float, ...]
    setup: CallSetup
    recipe: dict[str, Any]
    key: str
    stem: str
    path: str | None = None  # relative to the output directory, '/'-separated
    status: str = "new"  # new | done | adopt | duplicate
    sha256: str | None = None


@dataclass
class Plan:
    """The validated images, their batches, and the jobs that failed validation."""

    images: list[ImageJob] = field(default_factory=list)
    batches: list[list[ImageJob]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


class _Validator:
    """Checks jobs against one pipeline; caches loaded vectors and verified call setups."""

    def __init__(self, pipe: Any, model: str, base_dir: Path | None):
        from steer import __version__
        from steer.vectors import weights_hash

        self.pipe = pipe
        self.model = model
        self.base_dir = base_dir
        self.version = __version__
        self.unet_weights = weights_hash(pipe.unet)
        self.default_size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        self._vectors: dict[Path, Any] = {}
        self._setups: dict[tuple, list[str] | Exception] = {}

    # ----- fields ---------------------------------------------------------------------------------------------------
    def images(self, line: int, raw: dict[str, Any]) -> list[ImageJob]:
        """Validate one job and expand it into its images; raises `JobError`."""
        try:
            return self._images(line, raw)
        except JobError:
            raise
        except Exception as err:  # noqa: BLE001 - any problem with one job is that job's failure
            raise JobError(line, _reason(err)) from None

    def _images(self, line: int, raw: dict[str, Any]) -> list[ImageJob]:
        unknown = [k for k in raw if k not in JOB_FIELDS]
        if unknown:
            hints = [f"{k!r} (did you mean {difflib.get_close_matches(k, JOB_FIELDS, n=1)[0]!r}?)" if difflib.get_close_matches(k, JOB_FIELDS, n=1) else repr(k) for k in unknown]
            raise JobError(line, f"unknown field(s) {', '.join(hints)}")
        job = {**DEFAULTS, **raw}
        if job.get("model") not in (None, self.model):
            raise JobError(line, f"model {job['model']!r} differs from this run's model {self.model!r}; run it as its own batch")
        prompt = job.get("prompt")
        if not isinstance(prompt, str):
            raise JobError(line, "prompt is required and must be a string" if prompt is None else f"prompt must be a string, got {prompt!r}")
        negative = job.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise JobError(line, f"negative_prompt must be a string, got {negative!r}")
        seeds = self._seeds(line, job)
        steps = _check_int(line, "num_inference_steps", job["num_inference_steps"], 1, MAX_STEPS)
        guidance = _check_float(line, "guidance_scale", job["guidance_scale"], lo=0.0)
        height = self._size(line, "height", job.get("height"))
        width = self._size(line, "width", job.get("width"))
        directions = job.get("directions") or []
        if not isinstance(directions, list):
            raise JobError(line, f"directions must be a list of {{'path': ..., 'scale' | 'sweep': ...}}, got {directions!r}")
        loaded = [self._direction(line, i, d) for i, d in enumerate(directions)]
        setup = CallSetup(self.model, steps, guidance, height, width)
        if loaded:
            setup = self._steering_setup(line, job, setup, [v for v, _, _ in loaded])
        resolved_layers = self._check_setup(line, setup)
        name = job.get("name")
        if name is not None and not isinstance(name, str):
            raise JobError(line, f"name must be a string, got {name!r}")
        stem = sanitize_name(name) if name else ""
        stem = stem or f"job{line:04d}"
        scale_lists = [scales for _, _, scales in loaded]
        combos = list(itertools.product(*scale_lists)) if loaded else [()]
        if len(seeds) * len(combos) > MAX_IMAGES_PER_JOB:
            raise JobError(line, f"the job expands to {len(seeds) * len(combos)} images (more than {MAX_IMAGES_PER_JOB})")
        single = len(seeds) * len(combos) == 1 and bool(name)
        images = []
        for index, (seed, scales) in enumerate(itertools.product(seeds, combos)):
            recipe = self._recipe(prompt, negative, seed, setup, loaded, scales, resolved_layers)
            file_stem = stem if single else f"{stem}_seed{seed}{_scale_tag(scales)}"
            images.append(ImageJob(line, index, prompt, negative, seed, tuple(scales), setup, recipe, image_key(recipe), file_stem))
        return images

    def _seeds(self, line: int, job: dict[str, Any]) -> list[int]:
        if "seed" in job and "seeds" in job:
            raise JobError(line, "give seed or seeds, not both")
        if "seeds" in job:
            seeds = job["seeds"]
            if not isinstance(seeds, list) or not seeds:
                raise JobError(line, f"seeds must be a non-empty list of integers, got {seeds!r}")
            return [_check_int(line, "seed", s, 0, MAX_SEED) for s in seeds]
        return [_check_int(line, "seed", job.get("seed", 0), 0, MAX_SEED)]

    def _size(self, line: int, what: str, value: Any) -> int:
        if value is None:
            return self.default_size
        value = _check_int(line, what, value, 8, MAX_SIZE)
        if value % 8:
            raise JobError(line, f"{what} must be a multiple of 8, got {value}")
        return value

    def _direction(self, line: int, i: int, spec: Any) -> tuple[Any, str, list[float]]:
        from steer.vectors import SteeringVector

        if isinstance(spec, str):
            spec = {"path": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            raise JobError(line, f"directions[{i}] must be {{'path': ..., 'scale' or 'sweep': ...}}, got {spec!r}")
        extra = sorted(set(spec) - {"path", "scale", "sweep"})
        if extra:
            raise JobError(line, f"directions[{i}] has unknown key(s) {extra}; use path, scale, sweep")
        if "scale" in spec and "sweep" in spec:
            raise JobError(line, f"directions[{i}]: give scale or sweep, not both")
        if "sweep" in spec:
            sweep = spec["sweep"]
            if not isinstance(sweep, list) or len(sweep) != 3:
                raise JobError(line, f"directions[{i}].sweep must be [lo, hi, n], got {sweep!r}")
            lo = _check_float(line, "sweep lo", sweep[0])
            hi = _check_float(line, "sweep hi", sweep[1])
            n = _check_int(line, "sweep n", sweep[2], 2, 1000)
            scales = [lo + (hi - lo) * k / (n - 1) for k in range(n)]
        else:
            scales = [_check_float(line, f"directions[{i}].scale", spec.get("scale", 1.0))]
        path = self._find_direction(line, spec["path"])
        if path not in self._vectors:
            self._vectors[path] = SteeringVector.load(path)
        return self._vectors[path], str(path), scales

    def _find_direction(self, line: int, name: str) -> Path:
        from steer.loading import bundled_directions

        given = Path(name).expanduser()
        candidates = [given]
        if not given.is_absolute() and self.base_dir is not None:
            candidates.insert(0, self.base_dir / given)
        for c in candidates:
            if c.is_file():
                return c.resolve()
        bundled = bundled_directions()
        if name in bundled:
            return Path(bundled[name]).resolve()
        where = " or ".join(str(c) for c in candidates)
        known = f"; bundled directions: {sorted(bundled)}" if bundled else ""
        raise JobError(line, f"direction file not found: {name!r} (looked for {where}){known}")

    def _steering_setup(self, line: int, job: dict[str, Any], setup: CallSetup, vectors: list[Any]) -> CallSetup:
        from steer.hooks import BRANCHES, MODES, PAPER_WINDOW, check_window

        layers = job.get("steering_layers")
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None and (not isinstance(layers, list) or not layers or not all(isinstance(x, str) for x in layers)):
            raise JobError(line, f"steering_layers must be a layer name or a non-empty list of names / globs, got {layers!r}")
        try:
            window = check_window(job.get("steering_window", PAPER_WINDOW))
        except ValueError as err:
            raise JobError(line, str(err)) from None
        branch = job.get("steering_branch", "cond")
        if branch not in BRANCHES:
            raise JobError(line, f"steering_branch must be one of {list(BRANCHES)}, got {branch!r}")
        mode = job.get("steering_mode", "add")
        if mode not in MODES:
            raise JobError(line, f"steering_mode must be one of {list(MODES)}, got {mode!r}")
        normalize = _check_bool(line, "steering_normalize", job.get("steering_normalize", False))
        strict = _check_bool(line, "steering_strict", job.get("steering_strict", True))
        return dataclasses.replace(
            setup,
            vectors=tuple(vectors),
            digests=tuple(v.digest() for v in vectors),
            layer_patterns=tuple(layers) if layers is not None else None,
            window=(float(window[0]), float(window[1])),
            branch=branch,
            normalize=normalize,
            mode=mode,
            strict=strict,
        )

    def _check_setup(self, line: int, setup: CallSetup) -> list[str] | None:
        """Build (not enter) the steering session once per setup: layers, channels, model match, normalization."""
        if not setup.vectors:
            return None
        key = setup.key()
        if key not in self._setups:
            import torch

            try:
                session = self.pipe.build_steering_session(
                    [v.to(self.pipe.device) for v in setup.vectors],
                    torch.ones(1, len(setup.vectors)),
                    layers=list(setup.layer_patterns) if setup.layer_patterns is not None else None,
                    window=setup.window,
                    branch=setup.branch,
                    normalize=setup.normalize,
                    mode=setup.mode,
                    strict=setup.strict,
                )
                self._setups[key] = list(session.plans)
            except Exception as err:  # noqa: BLE001
                self._setups[key] = err
        result = self._setups[key]
        if isinstance(result, Exception):
            raise JobError(line, _reason(result))
        return result

    def _recipe(self, prompt, negative, seed, setup: CallSetup, loaded, scales, layers) -> dict[str, Any]:
        steered = bool(loaded)
        return {
            "steer_version": self.version,
            "model": self.model,
            "unet_weights": self.unet_weights,
            "scheduler": type(self.pipe.scheduler).__name__,
            "prompt": prompt,
            "negative_prompt": negative,
            "seed": seed,
            "num_inference_steps": setup.num_inference_steps,
            "guidance_scale": setup.guidance_scale,
            "height": setup.height,
            "width": setup.width,
            "directions": [
                {"name": v.name, "hash": v.digest(), "path": path, "scale": float(s)}
                for (v, path, _), s in zip(loaded, scales, strict=True)
            ],
            "scale": (float(scales[0]) if len(scales) == 1 else [float(s) for s in scales]) if steered else None,
            "layers": layers,
            "layer_patterns": list(setup.layer_patterns) if setup.layer_patterns is not None else None,
            "window": list(setup.window) if steered else None,
            "branch": setup.branch,
            "normalize": setup.normalize,
            "mode": setup.mode,
            "strict": setup.strict,
        }


def _reason(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):
        text = err.args[0]  # KeyError's str() adds quotes
    else:
        text = str(err)
    return text or type(err).__name__


def _check_int(line: int, what: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(line, f"{what} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise JobError(line, f"{what} must be in [{lo}, {hi}], got {value}")
    return value


def _check_float(line: int, what: str, value: Any, lo: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise JobError(line, f"{what} must be a finite number, got {value!r}")
    if lo is not None and value < lo:
        raise JobError(line, f"{what} must be >= {lo:g}, got {value}")
    return float(value)


def _check_bool(line: int, what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise JobError(line, f"{what} must be true or false, got {value!r}")
    return value


def _scale_tag(scales: Sequence[float]) -> str:
    return "".join(f"_s{s:+.4g}" for s in scales)


def sanitize_name(name: str) -> str:
    """A safe relative output name: ``/``-separated parts of ``[A-Za-z0-9._+=-]``, no ``..``, no leading dots.

    ``"../../etc/x"`` becomes ``"etc/x"``, ``"/abs/p"`` becomes ``"abs/p"``, odd characters become ``_``; an empty
    result means "use the default name". A trailing ``.png`` is dropped (it is added back).
    """
    name = re.sub(r"\.png$", "", name.strip(), flags=re.IGNORECASE)
    parts = []
    for part in name.replace("\\", "/").split("/"):
        part = _SAFE_CHARS.sub("_", part).lstrip(".").strip("_")
        if part:
            parts.append(part[:100])
    return "/".join(parts[:8])


def image_key(recipe: dict[str, Any]) -> str:
    """The resume key of an image: the recipe hash without provenance-only fields (version, direction paths)."""
    core = {k: v for k, v in recipe.items() if k != "steer_version"}
    core["directions"] = [{k: v for k, v in d.items() if k != "path"} for d in recipe.get("directions") or []]
    return recipe_hash(core)


# ======================================================================================================================
# Planning: validation, resume state, output names, batches
# ======================================================================================================================
def plan_jobs(raw_jobs: Sequence[RawJob], pipe: Any, out_dir: str | os.PathLike, *, model: str, base_dir: Path | None = None, batch_size: int = 4) -> Plan:
    """Validate every job, mark finished images, pick output names and form the batches (no writes, no compute)."""
    out = Path(out_dir)
    validator = _Validator(pipe, model, base_dir)
    plan = Plan()
    for line, raw in raw_jobs:
        try:
            if isinstance(raw, JobError):
                raise raw
            plan.images += validator.images(line, raw)
        except JobError as err:
            plan.failures.append({"line": err.line, "reason": err.reason})
    _mark_duplicates(plan)
    _assign_paths(plan, out)
    live = [im for im in plan.images if im.status != "duplicate"]
    plan.batches = form_batches(live, batch_size)
    return plan


def _mark_duplicates(plan: Plan) -> None:
    first: dict[str, ImageJob] = {}
    for im in plan.images:
        if im.key in first:
            im.status = "duplicate"
            im.path = None
        else:
            first[im.key] = im


def _assign_paths(plan: Plan, out: Path) -> None:
    """Finished images keep their recorded paths; the others get their preferred name or a ``-N`` suffix."""
    manifest = {e["key"]: e for e in read_manifest_entries(out)}
    by_path = {e["path"]: e["key"] for e in manifest.values()}
    claimed: dict[str, str] = {}
    sha_cache: dict[str, str | None] = {}
    for im in plan.images:
        entry = manifest.get(im.key)
        if im.status == "new" and entry is not None and _sha_of(out, entry["path"], sha_cache) == entry.get("sha256"):
            im.status, im.path, im.sha256 = "done", entry["path"], entry["sha256"]
            claimed[im.path] = im.key
    failed_lines: dict[int, str] = {}
    for im in plan.images:
        if im.status != "new" or im.line in failed_lines:
            continue
        try:
            im.path, im.status = _free_path(out, im, claimed, by_path)
            claimed[im.path] = im.key
        except JobError as err:
            failed_lines[im.line] = err.reason
    if failed_lines:
        plan.failures += [{"line": line, "reason": reason} for line, reason in failed_lines.items()]
        plan.images = [im for im in plan.images if im.line not in failed_lines]


def _free_path(out: Path, im: ImageJob, claimed: dict[str, str], by_path: dict[str, str]) -> tuple[str, str]:
    """The first candidate name not taken by another image or an unrelated file; 'adopt' if it already holds ours."""
    root = out.resolve()
    for n in range(100):
        rel = f"{im.stem}.png" if n == 0 else f"{im.stem}-{n}.png"
        if claimed.get(rel, im.key) != im.key or by_path.get(rel, im.key) != im.key:
            continue
        target = out / rel
        if not target.resolve().is_relative_to(root):
            raise JobError(im.line, f"output name {rel!r} leads outside the output directory (a symlink?)")
        if target.exists() or target.is_symlink():
            if target.is_file() and not target.is_symlink() and _holds_recipe(target, im.key):
                return rel, "adopt"  # written by an earlier run that died before its manifest line
            continue
        return rel, "new"
    raise JobError(im.line, f"output name {im.stem!r} collides with 100 existing files; give the job another name")


def _holds_recipe(path: Path, key: str) -> bool:
    try:
        return image_key(read_recipe(path)) == key
    except Exception:  # noqa: BLE001 - not a PNG, no recipe, unreadable: not ours
        return False


def _sha_of(out: Path, rel: str, cache: dict[str, str | None]) -> str | None:
    if rel not in cache:
        p = out / rel
        cache[rel] = png_bytes_hash(p) if p.is_file() and not p.is_symlink() else None
    return cache[rel]


def form_batches(images: Sequence[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Group images by call setup (first-appearance order) and cut each group into batches of ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    groups: dict[tuple, list[ImageJob]] = {}
    for im in images:
        groups.setdefault(im.setup.key(), []).append(im)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


# ======================================================================================================================
# Generation
# ======================================================================================================================
def generate_batch(pipe: Any, images: Sequence[ImageJob], output_type: str = "pil") -> Any:
    """Run ``images`` (one shared `CallSetup`) as rows of one pipeline call: per-row prompt, generator and scales."""
    import torch

    setup = images[0].setup
    if any(im.setup.key() != setup.key() for im in images):
        raise ValueError("generate_batch needs images that share one call setup")
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device
    kwargs: dict[str, Any] = {
        "num_inference_steps": setup.num_inference_steps,
        "guidance_scale": setup.guidance_scale,
        "height": setup.height,
        "width": setup.width,
        "generator": [torch.Generator(gen_device).manual_seed(im.seed) for im in images],
        "output_type": output_type,
    }
    negatives = [im.negative_prompt or "" for im in images]
    if any(negatives):
        kwargs["negative_prompt"] = negatives
    if setup.vectors:
        kwargs.update(
            steering=list(setup.vectors),
            steering_scale=[list(im.scales) for im in images],
            steering_layers=list(setup.layer_patterns) if setup.layer_patterns is not None else None,
            steering_window=setup.window,
            steering_branch=setup.branch,
            steering_normalize=setup.normalize,
            steering_mode=setup.mode,
            steering_strict=setup.strict,
        )
    return pipe([im.prompt for im in images], **kwargs).images


class _ManifestWriter:
    """Appends manifest lines, each flushed and fsync-ed; drops a torn last line left by a killed run."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def append(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def manifest_entry(im: ImageJob, sha256: str) -> dict[str, Any]:
    """The manifest line of a written image."""
    return {"line": im.line, "image": im.index, "key": im.key, "path": im.path, "sha256": sha256, "recipe": im.recipe}


def read_manifest_entries(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of ``manifest.jsonl`` and any ``manifest.rank*.jsonl`` shards; unreadable (torn) lines are ignored."""
    out = Path(out)
    files = [out / MANIFEST, *sorted(out.glob("manifest.rank*.jsonl"))]
    entries = []
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(e, dict) and isinstance(e.get("key"), str) and isinstance(e.get("path"), str) and isinstance(e.get("sha256"), str):
                entries.append(e)
    return entries


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Tally:
    written: int = 0
    skipped: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    generate_seconds: float = 0.0


def _execute(pipe: Any, out: Path, batches: Sequence[list[ImageJob]], writer: _ManifestWriter, tally: _Tally, *, progress: bool, on_image: Callable[[dict[str, Any]], None] | None) -> None:
    from tqdm.auto import tqdm

    total = sum(1 for b in batches for im in b if im.status == "new")
    bar = tqdm(total=total, unit="img", desc="steer batch", disable=not progress, dynamic_ncols=True)
    try:
        for batch in batches:
            for im in batch:
                if im.status == "done":
                    tally.skipped += 1
                elif im.status == "adopt":
                    writer.append(manifest_entry(im, png_bytes_hash(out / im.path)))
                    im.status = "done"
                    tally.skipped += 1
            todo = [im for im in batch if im.status == "new"]
            if not todo:
                continue
            start = time.perf_counter()
            try:
                results = generate_batch(pipe, batch)
            except Exception as err:  # noqa: BLE001 - one failed call fails just its jobs
                _fail(tally, todo, _reason(err))
                bar.update(len(todo))
                continue
            tally.generate_seconds += time.perf_counter() - start
            for im, image in zip(batch, results, strict=True):
                if im.status != "new":
                    continue
                _write_image(out, im, image, writer, tally, on_image)
                bar.update(1)
    finally:
        bar.close()


def _write_image(out: Path, im: ImageJob, image: Any, writer: _ManifestWriter, tally: _Tally, on_image) -> None:
    target = out / im.path
    if target.exists() or target.is_symlink():  # appeared since planning: never overwrite what is not ours
        if target.is_file() and _holds_recipe(target, im.key):
            writer.append(manifest_entry(im, png_bytes_hash(target)))
            tally.skipped += 1
        else:
            _fail(tally, [im], f"output {im.path} appeared during the run and is not this job's; not overwritten")
        return
    try:
        save_png(image, target, im.recipe)
        _fsync_file(target)
    except OSError as err:
        _fail(tally, [im], f"cannot write {im.path}: {err}")
        return
    entry = manifest_entry(im, png_bytes_hash(target))
    writer.append(entry)
    im.status, im.sha256 = "done", entry["sha256"]
    tally.written += 1
    if on_image is not None:
        on_image(entry)


def _fail(tally: _Tally, images: Sequence[ImageJob], reason: str) -> None:
    seen = {f["line"] for f in tally.failures}
    for im in images:
        if im.line not in seen:
            tally.failures.append({"line": im.line, "reason": reason})
            seen.add(im.line)


def merge_manifest(out: str | os.PathLike, plan: Plan | None = None) -> list[dict[str, Any]]:
    """Merge ``manifest.jsonl`` and the rank shards into ``manifest.jsonl``: one entry per key whose PNG exists with
    its recorded hash, line numbers updated from ``plan``, sorted by (line, image, path). Writes only on change."""
    out = Path(out)
    current = {im.key: (im.line, im.index) for im in plan.images if im.status != "duplicate"} if plan is not None else {}
    cache: dict[str, str | None] = {}
    by_key: dict[str, dict[str, Any]] = {}
    for e in read_manifest_entries(out):
        if _sha_of(out, e["path"], cache) != e["sha256"]:
            continue
        if e["key"] in current:
            e["line"], e["image"] = current[e["key"]]
        by_key[e["key"]] = e
    entries = sorted(by_key.values(), key=lambda e: (e.get("line", 0), e.get("image", 0), e["path"]))
    text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    target = out / MANIFEST
    if not target.is_file() or target.read_text(encoding="utf-8", errors="replace") != text:
        tmp = out / f".{MANIFEST}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    for shard in out.glob("manifest.rank*.jsonl"):
        shard.unlink(missing_ok=True)
    return entries


# ======================================================================================================================
# Processes
# ======================================================================================================================
class _SingleProcess:
    process_index = 0
    num_processes = 1
    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass


def process_state(cpu: bool | None = None) -> Any:
    """accelerate's `PartialState` when launched with several processes, else a single-process stand-in."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or os.environ.get("LOCAL_RANK") is not None
    if not distributed:
        return _SingleProcess()
    import torch
    from accelerate import PartialState

    return PartialState(cpu=(not torch.cuda.is_available()) if cpu is None else cpu)


def _gather(state: Any, value: Any) -> list[Any]:
    if state.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


# ======================================================================================================================
# Public entry point
# ======================================================================================================================
def run(
    jobs: str | os.PathLike | Iterable[Any],
    pipe: Any,
    out_dir: str | os.PathLike,
    batch_size: int = 4,
    *,
    model: str | None = None,
    progress: bool = True,
    on_image: Callable[[dict[str, Any]], None] | None = None,
    report: Callable[[str], None] | None = None,
    state: Any = None,
) -> dict[str, Any]:
    """Run a jobs file (or a list of job dicts) on ``pipe``, writing PNGs and ``manifest.jsonl`` under ``out_dir``.

    Returns the summary: ``written``, ``skipped`` (already done), ``failed`` (jobs), ``failures`` (``[{line,
    reason}]``), ``images`` (planned), ``seconds``, ``images_per_s`` (written per second of generation), ``manifest``.
    ``on_image(entry)`` is called after each image and its manifest line are on disk. ``report(text)`` receives
    validation failures before any compute. Under accelerate (``state`` or the launch environment) the batches are
    dealt round-robin to the processes and every process returns the same, combined summary.
    """
    t0 = time.perf_counter()
    state = state or process_state()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw, base_dir = _coerce_jobs(jobs)
    model = str(model if model is not None else getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None) or "unknown")
    plan = plan_jobs(raw, pipe, out, model=model, base_dir=base_dir, batch_size=batch_size)
    if state.is_main_process:
        _remove_stale_temp_files(out)
    if report is not None and state.is_main_process:
        for f in sorted(plan.failures, key=lambda f: f["line"]):
            report(f"line {f['line']}: {f['reason']}")
    state.wait_for_everyone()  # every process planned against the same files before anyone writes
    mine = [b for i, b in enumerate(plan.batches) if i % state.num_processes == state.process_index]
    shard = out / (MANIFEST if state.num_processes == 1 else f"manifest.rank{state.process_index}.jsonl")
    tally = _Tally()
    writer = _ManifestWriter(shard)
    try:
        _execute(pipe, out, mine, writer, tally, progress=progress and state.is_main_process, on_image=on_image)
    finally:
        writer.close()
    tallies = _gather(state, dataclasses.asdict(tally))
    state.wait_for_everyone()
    if state.is_main_process:
        merge_manifest(out, plan)
    state.wait_for_everyone()
    return _summary(plan, tallies, out, time.perf_counter() - t0)


_TEMP_FILE = re.compile(r"^\.(.+\.png|manifest\.jsonl)\.tmp\d+$")


def _remove_stale_temp_files(out: Path) -> None:
    """Temp files of a killed run (``save_png`` / manifest merge write ``.NAME.tmpPID`` then rename)."""
    for p in out.rglob(".*.tmp*"):
        if p.is_file() and _TEMP_FILE.match(p.name):
            p.unlink(missing_ok=True)


def _summary(plan: Plan, tallies: list[dict[str, Any]], out: Path, seconds: float) -> dict[str, Any]:
    failures = sorted(plan.failures + [f for t in tallies for f in t["failures"]], key=lambda f: f["line"])
    duplicates = sum(1 for im in plan.images if im.status == "duplicate")
    written = sum(t["written"] for t in tallies)
    gen_seconds = max((t["generate_seconds"] for t in tallies), default=0.0)
    return {
        "images": len(plan.images),
        "written": written,
        "skipped": sum(t["skipped"] for t in tallies) + duplicates,
        "failed": len({f["line"] for f in failures}),
        "failures": failures,
        "seconds": round(seconds, 3),
        "images_per_s": round(written / gen_seconds, 3) if gen_seconds > 0 else 0.0,
        "manifest": str(out / MANIFEST),
    }


# ======================================================================================================================
# Command line
# ======================================================================================================================
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``steer batch`` arguments."""
    from steer.loading import default_model

    p.add_argument("jobs", help="jobs file: .jsonl, .csv or .yaml (see examples/jobs.*)")
    p.add_argument("--out", required=True, help="output directory (PNGs + manifest.jsonl); rerun to resume")
    p.add_argument("--model", default=default_model(), help="pipeline directory or hub id (default: the embedded demo model)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available; per process under accelerate)")
    p.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def configure_parser(subparsers: Any) -> None:
    """Add the ``batch`` subcommand to the ``steer`` CLI."""
    p = subparsers.add_parser("batch", help="run a jobs file (.jsonl/.csv/.yaml) of generations: batched, resumable, multi-process")
    add_arguments(p)
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    """``steer batch``: exit status 0 when every job ran, 1 when some failed."""
    from steer.loading import load_pipeline

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    read_jobs(args.jobs)  # fail fast on an unreadable file, before loading the model
    state = process_state(cpu=args.device == "cpu" if args.device else None)
    device = args.device
    if device is None and state.num_processes > 1:
        device = getattr(state, "device", None)
    if not args.progress or not state.is_main_process:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    pipe = load_pipeline(args.model, device, progress=False)
    summary = run(args.jobs, pipe, args.out, args.batch_size, model=str(args.model), progress=args.progress, report=_stderr, state=state)
    if state.is_main_process:
        _print_summary(summary)
    return 1 if summary["failed"] else 0


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _print_summary(summary: dict[str, Any]) -> None:
    print(
        f"steer batch: {summary['written']} written, {summary['skipped']} skipped, {summary['failed']} job(s) failed, "
        f"{summary['images']} planned in {summary['seconds']:.1f}s ({summary['images_per_s']:.2f} images/s); "
        f"manifest {summary['manifest']}",
        flush=True,
    )
    for f in summary["failures"]:
        _stderr(f"  failed line {f['line']}: {f['reason']}")


def main(argv: list[str] | None = None) -> int:
    """``python -m steer.batch JOBS --out DIR ...`` (the form to use with ``accelerate launch -m``)."""
    from steer.cli import main as cli_main

    return cli_main(["batch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
