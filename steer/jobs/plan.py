"""Planning ``steer batch`` jobs: validation (finite, bounded values), image expansion, resume state, names, batches.

Every job is checked up front against the pipeline (no compute, except the take-away fits that valid jobs ask for
with ``take_away_fit``, `steer.jobs.take_away`): a bad value fails its own job with ``line N: reason``, and nothing a
job may hold can overflow a later step (scales, guidance, prompt lengths, image counts are bounded; a prompt must be
encodable UTF-8).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer.config import (
    REMOVING,
    TAKE_AWAY_NEGATIVE,
    SteeringConfig,
    check_branches,
    disagreement_note,
    recommended_settings,
    routes_record,
    vector_branches,
)
from steer.errors import SteeringFileError
from steer.hub import is_hub_spec, resolve_direction
from steer.jobs.checks import check_bool, check_float, check_int, check_name_list, check_text, check_window_field
from steer.jobs.edits import EditChecker, JobEdit
from steer.jobs.outputs import assign_paths, duplicate_notes, image_key, mark_duplicates, sanitize_name
from steer.jobs.read import JOB_FIELDS, JobError, RawJob, clip, show
from steer.jobs.take_away import FitCache, JobTakeAway, check_fields, row_scales, sets_scale
from steer.lora import loaded_loras
from steer.recipe import recorded_path
from steer.validation import MAX_SEED, MAX_SIZE, MAX_STEPS, did_you_mean, short

DEFAULTS: dict[str, Any] = {"num_inference_steps": 30, "guidance_scale": 7.5}
MAX_IMAGES_PER_JOB = 10_000
MAX_IMAGES = 100_000  # images planned in one run
# The limits of a job, and of the command line's options (steer.cli imports these two: one source for both); the
# Python API allows up to steer.validation.MAX_SCALE / MAX_GUIDANCE.
MAX_SCALE = 1000.0  # |steering scale| (and sweep ends): larger overflows fp16/fp32 activations
MAX_GUIDANCE = 100.0
MAX_NAME_CHARS = 1000
MAX_DIRECTIONS = 16
MAX_LAYER_PATTERNS = 256
MAX_PATH_CHARS = 4096
_UNSTEERED = ("layers", "window", "branch", "normalize", "mode", "strict", "negative")  # the config entries of a recipe: None


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
    config: SteeringConfig | None = None  # how the vectors are applied; None for an unsteered call
    sampler: str | None = None  # a `steer.samplers` name the call samples with; None: the pipeline's scheduler
    task: str | None = None  # "img2img", "inpaint" or "invert" for an edit of given images (`steer.jobs.edits`); None: from noise
    strength: float | None = None  # an edit's strength

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
    same_as: tuple[int, int] | None = None  # a duplicate's (line, index) of the first image with its recipe
    edit: JobEdit | None = None  # the image (and mask) it edits


@dataclass
class Plan:
    """The validated images, their batches, and the jobs that failed validation."""

    images: list[ImageJob] = field(default_factory=list)
    batches: list[list[ImageJob]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


class _Validator:
    """Checks jobs against one pipeline; caches loaded vectors and verified call setups."""

    def __init__(self, pipe: Any, model: str, base_dir: Path | None, report: Callable[[str], None] | None = None, fits: FitCache | None = None,
                 sampler: str | None = None):
        from steer import __version__
        from steer.denoisers import denoiser_of, native_size
        from steer.vectors import weights_hash

        self.pipe = pipe
        self.model = model
        self.base_dir = base_dir
        self.version = __version__
        self.unet_weights = weights_hash(denoiser_of(pipe))  # the UNet or the transformer, whichever the family
        self.default_size = native_size(pipe)
        self._vectors: dict[Path, Any] = {}
        self._setups: dict[tuple, list[str] | Exception] = {}
        self._fits = fits if fits is not None else FitCache(pipe)
        self.report = report
        self._noted: set[str] = set()  # the disagreement notes already reported (once per run each)
        self.default_sampler = sampler  # for jobs that name none (steer batch --sampler)
        self._samplers: dict[str, str | Exception] = {}  # as given -> its canonical name, or why it does not fit
        self._scheduler_classes: dict[str, str] = {}  # canonical sampler name -> its scheduler class (recipes)
        self.edits = EditChecker(pipe, base_dir)
        self.loras = loaded_loras(pipe)

    def _same_model(self, given: Any) -> bool:
        """Whether a job's ``model`` names this run's: the same text, or the same folder (relative to the jobs file's
        folder or to where the command runs, with or without a trailing slash)."""
        if given == self.model:
            return True
        if not isinstance(given, str) or not given or not Path(self.model).exists():
            return False
        ours = Path(self.model).resolve()
        places = [Path(given).expanduser()]
        if not places[0].is_absolute() and self.base_dir is not None:
            places.insert(0, self.base_dir / places[0])
        return any(p.exists() and p.resolve() == ours for p in places)

    # ----- fields ---------------------------------------------------------------------------------------------------
    def images(self, line: int, raw: dict[str, Any]) -> list[ImageJob]:
        """Validate one job and expand it into its images; raises `JobError`."""
        try:
            return self._images(line, raw)
        except JobError:
            raise
        except Exception as err:  # noqa: BLE001 - any problem with one job is that job's failure
            raise JobError(line, error_reason(err)) from None

    def _images(self, line: int, raw: dict[str, Any]) -> list[ImageJob]:
        unknown = [k for k in raw if k not in JOB_FIELDS]
        if unknown:
            raise JobError(line, f"unknown field(s) {_unknown_fields(unknown)}")
        job = {**DEFAULTS, **raw}
        if job.get("model") is not None and not self._same_model(job["model"]):
            raise JobError(line, f"model {show(job['model'])} differs from this run's model {show(self.model)}; run it as its own batch")
        prompt = check_text(line, "prompt", job.get("prompt"), required=True)
        negative = check_text(line, "negative_prompt", job.get("negative_prompt"))
        seeds = self._seeds(line, job)
        steps = check_int(line, "num_inference_steps", job["num_inference_steps"], 1, MAX_STEPS)
        guidance = check_float(line, "guidance_scale", job["guidance_scale"], 0.0, MAX_GUIDANCE)
        edit = self.edits.check(line, job, steps)
        height, width = self._sizes(line, job, edit)
        directions = job.get("directions") or []
        if not isinstance(directions, list):
            raise JobError(line, f"directions must be a list of {{'path': ..., 'scale' | 'sweep': ...}}, got {show(directions)}")
        if len(directions) > MAX_DIRECTIONS:
            raise JobError(line, f"at most {MAX_DIRECTIONS} directions per job, got {len(directions)}")
        loaded = [self._direction(line, i, d) for i, d in enumerate(directions)]
        idle = sorted(str(k) for k, v in raw.items() if str(k).startswith(("steering_", "take_away")) and v not in (None, "", []))
        if not loaded and idle:  # dropped silently, the job then made (and named) as a plain one
            raise JobError(line, f"{idle[0]} needs directions (there is nothing to steer)")
        away, job = self._take_away(line, job, loaded, prompt)
        if away is None and len(loaded) == 1 and edit is None and job.get("take_away") is None:
            self._suggest_take_away(line, prompt, loaded[0])
        inverted = edit is not None and edit.invert  # DDIM inversion and its replay: --sampler is not theirs to record
        sampler = self._sampler(line, job.get("sampler", None if inverted else self.default_sampler))
        base = CallSetup(self.model, steps, guidance, height, width, sampler=sampler,
                         task=edit.task if edit else None, strength=edit.strength if edit else None)
        setup, resolved_layers = self._checked_setup(line, job, base, loaded, away)
        name = job.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
            raise JobError(line, f"name must be a string of at most {MAX_NAME_CHARS} characters, got {show(name)}")
        stem = sanitize_name(name) if name else ""
        stem = stem or f"job{line:04d}"
        scale_lists = [scales for _, _, scales in loaded]
        count = len(seeds) * math.prod(len(s) for s in scale_lists)
        if count > MAX_IMAGES_PER_JOB:
            raise JobError(line, f"the job expands to {count} images (more than {MAX_IMAGES_PER_JOB})")
        if away is not None and away.fit_wanted:  # everything else checked: now the compute (same image count)
            away, job = self._fit_take_away(job, directions, loaded, away, base)
            setup, resolved_layers = self._checked_setup(line, job, base, loaded, away)
        combos = list(itertools.product(*(scales for _, _, scales in loaded))) if loaded else [()]
        single = count == 1 and bool(name)
        images = []
        for index, (seed, scales) in enumerate(itertools.product(seeds, combos)):
            recipe = self._recipe(prompt, negative, seed, setup, loaded, scales, resolved_layers, away)
            if edit is not None:
                recipe["edit"] = edit.record()
            file_stem = stem if single else f"{stem}_seed{seed}{_scale_tag(scales)}"
            rows = row_scales(scales[0]) if away else tuple(scales)  # with a take-away: [s, -min(s, 1)]
            images.append(ImageJob(line, index, prompt, negative, seed, rows, setup, recipe, image_key(recipe), file_stem, edit=edit))
        return images

    def _checked_setup(self, line: int, job: dict[str, Any], base: CallSetup, loaded: list, away: JobTakeAway | None):
        """The job's call setup and its resolved layers, checked against the pipeline."""
        if not loaded:
            return base, self._check_setup(line, base, ())
        setup = self._steering_setup(line, job, base, [v for v, _, _ in loaded] + ([away.vector] if away else []))
        # each direction checked with the sign it is used with (a removed one needs its reference level)
        signs = tuple(-1.0 if any(x < 0 for x in scales) else 1.0 for _, _, scales in loaded) + ((-1.0,) if away else ())
        return setup, self._check_setup(line, setup, signs)

    def _suggested(self, prompt: str, loaded: tuple) -> list[tuple[str, list[str]]]:
        """The directions to take away where the prompt states what the job's one direction replaces, among the other
        files of its folder and the bundled ones (`steer.take_away.take_away_candidates`, `suggested_take_aways`)."""
        from steer.assets import bundled_directions
        from steer.take_away import suggested_take_aways, take_away_candidates
        from steer.vectors import SteeringVector

        def load(file: Path):  # shared with the jobs' own directions
            if file not in self._vectors:
                self._vectors[file] = SteeringVector.load(file)
            return self._vectors[file]

        vector, path, _ = loaded
        return suggested_take_aways(vector, prompt, take_away_candidates(path, bundled_directions(self.model), load))

    def _suggest_take_away(self, line: int, prompt: str, loaded: tuple) -> None:
        """Report (once per direction and prompt) the direction to take away where the prompt states what the job's one
        direction replaces at a positive scale (`_suggested`)."""
        from steer.take_away import take_away_hint

        vector, _, scales = loaded
        if self.report is None or not any(s > 0 for s in scales):
            return
        found = self._suggested(prompt, loaded)
        note = found and (f'{take_away_hint(prompt, vector, found)}; add "take_away": "{found[0][0]}" (or "auto"), '
                          '"take_away_fit": true to the job')
        if note and note not in self._noted:
            self._noted.add(note)
            self.report(f"note: line {line}: {note}")

    def _take_away(self, line: int, job: dict[str, Any], loaded: list, prompt: str) -> tuple[JobTakeAway | None, dict[str, Any]]:
        """The job's take-away (`steer.jobs.take_away`; not fitted yet), None without one, and the job with
        ``steering_negative="remove"`` filled in. ``"auto"``: the first direction `_suggested` for the prompt, or none
        (the prompt states nothing against the edit: the job runs without, and says so)."""
        from steer.take_away import AUTO

        spec, fit_it = check_fields(line, job)
        if spec is None:
            return None, job
        vector, _, scales = loaded[0]
        if spec == AUTO:
            found = self._suggested(prompt, loaded[0])
            if not found:
                if self.report is not None:
                    self.report(f"note: line {line}: take_away auto: {short(prompt, 80)} states nothing {short(vector.name)} replaces: nothing taken away")
                return None, job
            spec = found[0][0]
        away_path = self._find_direction(line, spec)
        if away_path not in self._vectors:
            from steer.vectors import SteeringVector

            self._vectors[away_path] = SteeringVector.load(away_path)
        away = self._vectors[away_path]
        if away.digest() == vector.digest():
            from steer.take_away import ITSELF

            raise JobError(line, ITSELF)
        if any(s < 0 for s in scales):
            raise JobError(line, "a take-away goes with positive direction scales: it replaces what the prompt says")
        return JobTakeAway(away, str(away_path), fit_wanted=fit_it), {**job, "steering_negative": job.get("steering_negative", TAKE_AWAY_NEGATIVE)}

    def _fit_take_away(self, job: dict[str, Any], directions: list[Any], loaded: list, away: JobTakeAway, base: CallSetup):
        """Fit the take-away (once per pair and call setting) and fill in its window (unless the job sets one) and
        scale (unless its direction does, in ``loaded``)."""
        vector, path, _ = loaded[0]
        fit = self._fits.get(vector, away.vector, base.guidance_scale, base.height, base.width, self.report, sampler=base.sampler,
                             negative_prompt=job.get("negative_prompt"), negative=job.get("steering_negative", TAKE_AWAY_NEGATIVE))
        if "steering_window" not in job:
            job = {**job, "steering_window": list(fit.window)}
        if not sets_scale(directions[0]):
            loaded[0] = (vector, path, [round(fit.strength, 3)])
        return dataclasses.replace(away, fit=fit), job

    def _seeds(self, line: int, job: dict[str, Any]) -> list[int]:
        if "seed" in job and "seeds" in job:
            raise JobError(line, "give seed or seeds, not both")
        if "seeds" in job:
            seeds = job["seeds"]
            if not isinstance(seeds, list) or not seeds or len(seeds) > MAX_IMAGES_PER_JOB:
                raise JobError(line, f"seeds must be a non-empty list of at most {MAX_IMAGES_PER_JOB} integers, got {show(seeds)}")
            return [check_int(line, "seed", s, 0, MAX_SEED) for s in seeds]
        return [check_int(line, "seed", job.get("seed", 0), 0, MAX_SEED)]

    def _sampler(self, line: int, value: Any) -> str | None:
        """The job's sampler by its canonical name (`steer.samplers.check_sampler`), or None for the pipeline's own."""
        if value is None:
            return None
        from steer.samplers import build_sampler, check_sampler

        key = value if isinstance(value, str) else repr(value)[:200]
        if key not in self._samplers:
            try:
                name = self._samplers[key] = check_sampler(self.pipe.scheduler, value)
                self._scheduler_classes[name] = type(build_sampler(self.pipe.scheduler, name)).__name__
            except ValueError as err:
                self._samplers[key] = err
        result = self._samplers[key]
        if isinstance(result, Exception):
            raise JobError(line, f"sampler: {result}")
        return result

    def _sizes(self, line: int, job: dict[str, Any], edit: JobEdit | None) -> tuple[int, int]:
        """``(height, width)``: as given, else the model's size; an edit's from its image as `steer generate --image`
        sizes it (`steer.images.edit_size`: the image's own, or one side given and the other by its aspect ratio)."""
        if edit is None:
            return self._size(line, "height", job.get("height")), self._size(line, "width", job.get("width"))
        from steer.images import EDIT_SIDE_FACTOR, capped_edit_size, edit_size

        given = {k: self._size(line, k, job[k]) for k in ("height", "width") if job.get(k) is not None}
        if not given and (capped := capped_edit_size(edit.size, self.default_size)) is not None:  # as steer generate
            note = (f"note: line {line}: the image is {edit.size[0]}x{edit.size[1]}; edited at {capped[1]}x{capped[0]}, "
                    f"{EDIT_SIDE_FACTOR}x the model's {self.default_size} pixels (give height / width for another size)")
            if self.report is not None:
                self.report(note)
            return capped
        try:
            return edit_size(edit.size, **given)
        except ValueError as err:
            raise JobError(line, str(err).replace("--height / --width", "height / width")) from None

    def _size(self, line: int, what: str, value: Any) -> int:
        if value is None:
            return self.default_size
        value = check_int(line, what, value, 8, MAX_SIZE)
        if value % 8:
            raise JobError(line, f"{what} must be a multiple of 8, got {value}")
        return value

    def _direction(self, line: int, i: int, spec: Any) -> tuple[Any, str, list[float]]:
        from steer.vectors import SteeringVector

        if isinstance(spec, str):
            spec = {"path": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str) or not 0 < len(spec["path"]) <= MAX_PATH_CHARS:
            raise JobError(line, f"directions[{i}] must be {{'path': ..., 'scale' or 'sweep': ...}}, got {show(spec)}")
        extra = sorted(str(k) for k in set(spec) - {"path", "scale", "sweep"})
        if extra:
            raise JobError(line, f"directions[{i}] has unknown key(s) {show(extra)}; use path, scale, sweep")
        if "scale" in spec and "sweep" in spec:
            raise JobError(line, f"directions[{i}]: give scale or sweep, not both")
        if "sweep" in spec:
            sweep = spec["sweep"]
            if not isinstance(sweep, list) or len(sweep) != 3:
                raise JobError(line, f"directions[{i}].sweep must be [lo, hi, n], got {show(sweep)}")
            lo = check_float(line, "sweep lo", sweep[0], -MAX_SCALE, MAX_SCALE)
            hi = check_float(line, "sweep hi", sweep[1], -MAX_SCALE, MAX_SCALE)
            n = check_int(line, "sweep n", sweep[2], 2, 1000)
            scales = [lo + (hi - lo) * k / (n - 1) for k in range(n)]
        else:
            scales = [check_float(line, f"directions[{i}].scale", spec.get("scale", 1.0), -MAX_SCALE, MAX_SCALE)]
        path = self._find_direction(line, spec["path"])
        if path not in self._vectors:
            self._vectors[path] = SteeringVector.load(path)
        return self._vectors[path], recorded_path(path), scales

    def _find_direction(self, line: int, name: str) -> Path:
        from steer.assets import bundled_directions, find_direction

        if "\0" in name:
            raise JobError(line, f"direction path {show(name)} holds a NUL character")
        # a local file (beside the jobs file first, then as given; each as itself and as `SteeringVector.save` names
        # it: dirs/blue -> dirs/blue.safetensors) before a bundled name, as steer generate and steering= take it
        found = find_direction(name, self.model, under=self.base_dir)
        if found.note is not None and self.report is not None and found.note not in self._noted:
            self._noted.add(found.note)
            self.report(f"note: line {line}: {found.note}")
        if found.path is not None:
            return found.path.resolve()
        if is_hub_spec(name):  # owner/name[@revision][:file]: through the Hugging Face cache (offline-aware)
            try:
                return resolve_direction(name)
            except SteeringFileError as err:
                raise JobError(line, str(err)) from None
        bundled = bundled_directions(self.model)
        where = " or ".join(clip(str(c)) for c in found.tried)
        known = f"; bundled directions: {sorted(bundled)}" if bundled else ""
        raise JobError(line, f"direction file not found: {show(name)}{did_you_mean(name, bundled)} (looked for {where}){known}")

    def _steering_setup(self, line: int, job: dict[str, Any], setup: CallSetup, vectors: list[Any]) -> CallSetup:
        from steer.config import BRANCHES, MODES, NEGATIVES

        layers = check_name_list(line, job.get("steering_layers"), MAX_LAYER_PATTERNS,
                                 f"steering_layers must be a layer name or a non-empty list of at most {MAX_LAYER_PATTERNS} names / globs")
        # what a job leaves unset comes from its directions' recommended settings, as in every call (preserve_norm,
        # which a job cannot set, too); but the layers: a job without steering_layers steers all of its directions'
        recommended = SteeringConfig.from_settings(recommended_settings(vectors))
        note = disagreement_note(vectors, set(job)) if len(vectors) > 1 else None
        if note is not None and self.report is not None and note not in self._noted:
            self._noted.add(note)
            self.report(f"warning: line {line}: {note}")
        # windows: one for all directions, or one per direction (those they record, when they differ; null: the one
        # it records, a slider whose sides record different ones each side in its own)
        window = check_window_field(line, "steering_window", job.get("steering_window", recommended.window), len(vectors), allow_none=True)
        removal_window = job.get("steering_removal_window", recommended.removal_window)
        if removal_window is not None:
            removal_window = check_window_field(line, "steering_removal_window", removal_window, len(vectors), allow_none=True)
        branch = job.get("steering_branch", recommended.branch)  # one for all directions, or one per direction
        try:
            branch = check_branches(branch)
            vector_branches(branch, len(vectors))
        except ValueError:
            raise JobError(line, f"steering_branch must be one of {list(BRANCHES)}, or a list of one per direction "
                                 f"({len(vectors)}), got {show(branch)}") from None
        mode = job.get("steering_mode", recommended.mode)
        if mode not in MODES:
            raise JobError(line, f"steering_mode must be one of {list(MODES)}, got {show(mode)}")
        negative = job.get("steering_negative", recommended.negative)
        if negative not in NEGATIVES:
            raise JobError(line, f"steering_negative must be one of {list(NEGATIVES)}, got {show(negative)}")
        if job.get("steering_removal_window") is not None and negative not in REMOVING:  # recorded, and changed nothing
            raise JobError(line, "steering_removal_window sets where steering_negative 'remove' acts: under "
                                 f"{show(negative)} nothing is removed")
        normalize = check_bool(line, "steering_normalize", job.get("steering_normalize", recommended.normalize))
        strict = check_bool(line, "steering_strict", job.get("steering_strict", recommended.strict))
        readers = check_name_list(line, job.get("steering_readers", recommended.readers), MAX_LAYER_PATTERNS,
                                  f"steering_readers must be 'layout', 'detail' or a non-empty list of at most {MAX_LAYER_PATTERNS} cross-attention names / globs", min_chars=1)
        config = dataclasses.replace(
            recommended, layers=layers, window=window, branch=branch, normalize=normalize, mode=mode, strict=strict,
            negative=negative, removal_window=removal_window, readers=tuple(readers) if readers is not None else None,
        )
        return dataclasses.replace(setup, vectors=tuple(vectors), digests=tuple(v.digest() for v in vectors), config=config)

    def _check_setup(self, line: int, setup: CallSetup, signs: tuple[float, ...]) -> list[str] | None:
        """Build (not enter) the steering session once per setup and sign pattern: layers, channels, model match,
        normalization, and the reference levels a removal (a negative scale under ``steering_negative="remove"``) needs."""
        if not setup.vectors:
            return None
        key = (setup.key(), signs)
        if key not in self._setups:
            import torch

            try:
                session = self.pipe.build_steering_session(
                    [v.to(self.pipe.device) for v in setup.vectors], torch.tensor([signs]), setup.config
                )
                self._setups[key] = list(session.plans)
            except Exception as err:  # noqa: BLE001
                self._setups[key] = err
        result = self._setups[key]
        if isinstance(result, Exception):
            raise JobError(line, error_reason(result))
        return result

    def _recipe(self, prompt, negative, seed, setup: CallSetup, loaded, scales, layers, away: JobTakeAway | None = None) -> dict[str, Any]:
        steered = bool(loaded)
        config = setup.config.to_dict() if setup.config is not None else dict.fromkeys(_UNSTEERED)
        return {
            "steer_version": self.version,
            "model": self.model,
            "unet_weights": self.unet_weights,
            "scheduler": self._scheduler_classes[setup.sampler] if setup.sampler else type(self.pipe.scheduler).__name__,
            **({"sampler": setup.sampler} if setup.sampler else {}),  # only when set: earlier runs' resume keys hold
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
            "layer_patterns": config["layers"],
            "window": config["window"],
            "branch": config["branch"],  # a list: one per direction
            "normalize": config["normalize"],
            "mode": config["mode"],
            "strict": config["strict"],
            "negative": config["negative"],
            **({"removal_window": config["removal_window"]} if config.get("removal_window") is not None else {}),
            **({"readers": config["readers"]} if config.get("readers") is not None else {}),
            **(routes_record([v for v, _, _ in loaded] + ([away.vector] if away is not None else []), config.get("readers")) if steered else {}),
            **({"take_away": away.recipe(scales[0])} if away is not None else {}),
            **({"loras": self.loras} if self.loras else {}),  # files loaded with steer.lora (the weights hash has them too)
        }



def error_reason(err: BaseException) -> str:
    if isinstance(err, KeyError) and err.args and isinstance(err.args[0], str):
        text = err.args[0]  # KeyError's str() adds quotes
    elif isinstance(err, RecursionError):
        text = "nested too deeply"
    else:
        try:
            text = str(err)
        except Exception:  # noqa: BLE001
            text = ""
    return clip(text) or type(err).__name__


def _unknown_fields(unknown: list[Any]) -> str:
    hints = []
    for k in unknown[:5]:
        close = difflib.get_close_matches(k, JOB_FIELDS, n=1) if isinstance(k, str) and len(k) < 100 else []
        hints.append(f"{show(k)} (did you mean {close[0]!r}?)" if close else show(k))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    return ", ".join(hints) + more


def _scale_tag(scales: Sequence[float]) -> str:
    return "".join(f"_s{s:+.4g}" for s in scales)


# ======================================================================================================================
# Planning: validation, resume state, output names, batches
# ======================================================================================================================
def plan_jobs(
    raw_jobs: Sequence[RawJob], pipe: Any, out_dir: str | os.PathLike, *, model: str, base_dir: Path | None = None, batch_size: int = 4,
    report: Callable[[str], None] | None = None, fits: FitCache | None = None, sampler: str | None = None,
) -> Plan:
    """Validate every job, mark finished images, pick output names and form the batches (no writes; no compute but
    the take-away fits that jobs with ``take_away_fit`` ask for, reported through ``report``; ``fits``: a cache that
    may hold them already; ``sampler``: the one for jobs that name none)."""
    out = Path(out_dir)
    validator = _Validator(pipe, model, base_dir, report, fits, sampler)
    plan = Plan()
    for line, raw in raw_jobs:
        try:
            if isinstance(raw, JobError):
                raise raw
            images = validator.images(line, raw)
            if len(plan.images) + len(images) > MAX_IMAGES:
                raise JobError(line, f"the jobs expand to more than {MAX_IMAGES} images in one run; split the file")
            plan.images += images
        except JobError as err:
            plan.failures.append({"line": err.line, "reason": err.reason})
    assign_paths(plan, out)  # first: a job whose name fails takes none of its images' twins with it
    mark_duplicates(plan)
    if report is not None:
        for text in duplicate_notes(plan):
            report(text)
    live = [im for im in plan.images if im.status != "duplicate"]
    plan.batches = form_batches(live, batch_size)
    return plan


def form_batches(images: Sequence[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Group images by call setup (first-appearance order) and cut each group into batches of ``batch_size`` rows."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    groups: dict[tuple, list[ImageJob]] = {}
    for im in images:
        groups.setdefault(im.setup.key(), []).append(im)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


