"""Scripted batch edits: ``steer batch JOBS --out DIR`` runs a file of generation jobs, batched, resumable, in parallel.

A jobs file is ``.jsonl`` (one JSON object per line), ``.csv`` (a header row of field names) or ``.yaml`` (a list of
mappings, or ``{defaults: {...}, jobs: [...]}``). A job's fields use the pipeline's own names::

    {"prompt": "a sneaker", "seeds": [0, 1], "num_inference_steps": 30, "guidance_scale": 7.5,
     "directions": [{"path": "red.safetensors", "sweep": [-4, 4, 5]}], "steering_window": [0.45, 0.95],
     "name": "sneaker-red"}

Every image becomes one PNG carrying its recipe (`steer.recipe.save_png`'s format) and one line of ``manifest.jsonl``.
Images that share their call setup (sizes, steps, guidance, direction set, steering options) run as rows of one
pipeline call (different prompts, seeds and scales per row). Batches are formed from the whole jobs file before
anything is skipped, so an image's bytes never depend on what was already done or on the number of processes; a
call that fails is retried one image at a time, so a bad job never fails its batch-mates, and an image that comes out
non-finite (NaN) fails its job instead of being written black. Rerunning the same command skips finished images (key:
the recipe hash; the PNG must exist with its recorded sha256). Under 🤗 accelerate, batches are dealt round-robin to the
processes; each appends to its own ``manifest.rank{N}.jsonl`` and the main process merges them into ``manifest.jsonl``.

Hostile input is bounded: see `steer.jobs.read` (jobs files: sizes, lines, nesting, YAML aliases), `steer.jobs.plan`
(values: scales, prompts, image counts) and `steer.jobs.files` (``--out``: lock, no symlinks followed, temp files
named by run). The limits are listed in the README's batch section.

Python API: `run` (returns the summary), `read_jobs`, `plan_jobs`, `generate_batch`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer.jobs.checks import MAX_PROMPT_CHARS
from steer.jobs.edits import editing_pipeline_of
from steer.jobs.files import LOCK_FILE, MANIFEST, OutDir, OutputBusyError, UnsafePathError, new_run_id, read_under
from steer.jobs.formats import read_jobs
from steer.jobs.outputs import holds_recipe, image_key, read_manifest_entries, sanitize_name, sha_of
from steer.jobs.plan import (
    DEFAULTS,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_IMAGES_PER_JOB,
    MAX_SCALE,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    CallSetup,
    ImageJob,
    Plan,
    error_reason,
    form_batches,
    plan_jobs,
)
from steer.jobs.read import (
    ECHO_CHARS,
    JOB_FIELDS,
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_JOBS,
    MAX_LINE_BYTES,
    MAX_YAML_BYTES,
    JobError,
    RawJob,
)
from steer.jobs.take_away import FitCache
from steer.recipe import RECIPE_KEY, png_bytes_hash, read_recipe

__all__ = [
    "DEFAULTS",
    "ECHO_CHARS",
    "JOB_FIELDS",
    "LOCK_FILE",
    "MANIFEST",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_GUIDANCE",
    "MAX_IMAGES",
    "MAX_IMAGES_PER_JOB",
    "MAX_JOBS",
    "MAX_LINE_BYTES",
    "MAX_PROMPT_CHARS",
    "MAX_REPORTED",
    "MAX_SCALE",
    "MAX_SEED",
    "MAX_SIZE",
    "MAX_STEPS",
    "MAX_YAML_BYTES",
    "CallSetup",
    "ImageJob",
    "JobError",
    "OutputBusyError",
    "Plan",
    "RawJob",
    "UnsafePathError",
    "form_batches",
    "generate_batch",
    "image_key",
    "manifest_entry",
    "merge_manifest",
    "plan_jobs",
    "png_bytes_hash",
    "process_state",
    "read_jobs",
    "read_manifest_entries",
    "read_recipe",
    "run",
    "sanitize_name",
    "save_png",
]

MAX_REPORTED = 100  # failure lines printed; the rest are counted ("... and N more")


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
# Generation
# ======================================================================================================================
def generate_batch(pipe: Any, images: Sequence[ImageJob], output_type: str = "pil") -> Any:
    """Run ``images`` (one shared `CallSetup`) as rows of one pipeline call: per-row prompt, generator and scales;
    edits (``setup.task``) on the model's editing pipeline (`steer.jobs.edits.editing_pipeline_of`), with each row's
    image (and mask)."""
    import torch

    from steer.samplers import with_sampler

    setup = images[0].setup
    if any(im.setup.key() != setup.key() for im in images):
        raise ValueError("generate_batch needs images that share one call setup")
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device
    generators = [torch.Generator(gen_device).manual_seed(im.seed) for im in images]
    steering: dict[str, Any] = {}
    if setup.config is not None:
        steering = {"steering": list(setup.vectors), "steering_scale": [list(im.scales) for im in images], **setup.config.to_settings()}
    if setup.task == "invert":  # each row replays its own picture's inversion (its seed draws the inversion's noise)
        from steer.inversion import invert_image, replay_rows

        inversions = [invert_image(pipe, im.edit.inputs(setup.height, setup.width)["image"], im.prompt, negative_prompt=im.negative_prompt,
                                   num_inference_steps=setup.num_inference_steps, guidance_scale=setup.guidance_scale, generator=gen)
                      for im, gen in zip(images, generators, strict=True)]
        return replay_rows(pipe, inversions, output_type=output_type, **steering).images
    kwargs: dict[str, Any] = {"num_inference_steps": setup.num_inference_steps, "guidance_scale": setup.guidance_scale,
                              "generator": generators, "output_type": output_type, **steering}
    if setup.task is None:
        kwargs.update(height=setup.height, width=setup.width)
    else:
        pipe = editing_pipeline_of(pipe, setup.task)
        kwargs.update(_edit_rows(pipe, images))
    negatives = [im.negative_prompt or "" for im in images]
    if any(negatives):
        kwargs["negative_prompt"] = negatives
    return with_sampler(pipe, setup.sampler)([im.prompt for im in images], **kwargs).images



def _edit_rows(pipe: Any, images: Sequence[ImageJob]) -> dict[str, Any]:
    """An editing call's inputs (`steer.replay.edit_rows_inputs`): each row's image (and mask) at the setup's size,
    read and checked now (`steer.jobs.edits.JobEdit.inputs`), and the setup's strength."""
    from steer.replay import edit_rows_inputs

    setup = images[0].setup
    rows = [im.edit.inputs(setup.height, setup.width) for im in images]
    return {**edit_rows_inputs(pipe, rows, setup.height, setup.width), "strength": setup.strength}


def png_bytes(image: Any, recipe: dict[str, Any]) -> bytes:
    """``image`` encoded as PNG with ``recipe`` as a text chunk (the bytes `steer.recipe.save_png` writes)."""
    import json

    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True, default=str))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Any, path: str | os.PathLike, recipe: dict[str, Any], *, out: OutDir) -> Path:
    """Write ``image`` (with its recipe) to ``path`` under ``out``: fsync-ed temp file named by the run, then linked
    into place; never through a symlink, never over an existing file (FileExistsError)."""
    path = Path(path)
    out.write_new(path.relative_to(out.path).as_posix(), png_bytes(image, recipe))
    return path


def manifest_entry(im: ImageJob, sha256: str) -> dict[str, Any]:
    """The manifest line of a written image."""
    return {"line": im.line, "image": im.index, "key": im.key, "path": im.path, "sha256": sha256, "recipe": im.recipe}


@dataclass
class _Tally:
    written: int = 0
    skipped: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    generate_seconds: float = 0.0


NON_FINITE = "the image came out non-finite (NaN or inf): lower the steering or guidance scale for this model"


def _to_pil(pipe: Any, row: Any) -> Any:
    from diffusers.image_processor import VaeImageProcessor

    return VaeImageProcessor.numpy_to_pil(row[None])[0]


def _execute(pipe: Any, out: OutDir, batches: Sequence[list[ImageJob]], writer: Any, tally: _Tally, *, progress: bool, on_image: Callable[[dict[str, Any]], None] | None) -> None:
    from tqdm.auto import tqdm

    total = sum(1 for b in batches for im in b if im.status == "new")
    bar = tqdm(total=total, unit="img", desc="steer batch", disable=not progress, dynamic_ncols=True)
    try:
        for batch in batches:
            for im in batch:
                if im.status == "done":
                    tally.skipped += 1
                elif im.status == "adopt":
                    writer.append(manifest_entry(im, sha_of(out.path, im.path, {}) or ""))
                    im.status = "done"
                    tally.skipped += 1
            todo = [im for im in batch if im.status == "new"]
            if not todo:
                continue
            start = time.perf_counter()
            try:
                rows = list(zip(batch, generate_batch(pipe, batch, output_type="np"), strict=True))
            except Exception as err:  # noqa: BLE001 - retried one image at a time: only the bad job fails
                rows = []
                if len(batch) == 1:
                    _fail(tally, todo, error_reason(err))
                    bar.update(len(todo))
                for im in todo if len(batch) > 1 else []:
                    try:
                        rows.append((im, generate_batch(pipe, [im], output_type="np")[0]))
                    except Exception as one:  # noqa: BLE001
                        _fail(tally, [im], error_reason(one))
                        bar.update(1)
            tally.generate_seconds += time.perf_counter() - start
            for im, row in rows:
                if im.status != "new":
                    continue
                if not _finite(row):
                    _fail(tally, [im], NON_FINITE)
                else:
                    _write_image(out, im, _to_pil(pipe, row), writer, tally, on_image)
                bar.update(1)
    finally:
        bar.close()


def _finite(row: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(np.asarray(row)).all())


def _write_image(out: OutDir, im: ImageJob, image: Any, writer: Any, tally: _Tally, on_image) -> None:
    assert im.path is not None
    target = out.path / im.path
    try:
        save_png(image, target, im.recipe, out=out)
    except FileExistsError:  # appeared since planning: never overwrite what is not ours
        if holds_recipe(out.read_bytes(im.path), im.key):
            writer.append(manifest_entry(im, sha_of(out.path, im.path, {}) or ""))
            tally.skipped += 1
        else:
            _fail(tally, [im], f"output {im.path} appeared during the run and is not this job's; not overwritten")
        return
    except (OSError, ValueError) as err:
        _fail(tally, [im], f"cannot write {im.path}: {error_reason(err)}")
        return
    entry = manifest_entry(im, sha_of(out.path, im.path, {}) or "")
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


def merge_manifest(out: str | os.PathLike | OutDir, plan: Plan | None = None) -> list[dict[str, Any]]:
    """Merge ``manifest.jsonl`` and the rank shards into ``manifest.jsonl``: one entry per key whose PNG exists with
    its recorded hash, line numbers updated from ``plan``, sorted by (line, image, path). Writes only on change."""
    folder = out if isinstance(out, OutDir) else OutDir(out, new_run_id())
    try:
        current = {im.key: (im.line, im.index) for im in plan.images if im.status != "duplicate"} if plan is not None else {}
        cache: dict[str, str | None] = {}
        by_key: dict[str, dict[str, Any]] = {}
        for e in read_manifest_entries(folder.path):
            if sha_of(folder.path, e["path"], cache) != e["sha256"]:
                continue
            if e["key"] in current:
                e["line"], e["image"] = current[e["key"]]
            by_key[e["key"]] = e
        entries = sorted(by_key.values(), key=lambda e: (e.get("line", 0), e.get("image", 0), e["path"]))
        import json

        data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode()
        folder.check_file(MANIFEST)
        if folder.read_bytes(MANIFEST) != data:
            folder.write_replace(MANIFEST, data)
        for shard in folder.path.glob("manifest.rank*.jsonl"):
            folder.unlink(shard.name)
        return entries
    finally:
        if folder is not out:
            folder.close()


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
    out_dir: str | os.PathLike | OutDir,
    batch_size: int = 4,
    *,
    model: str | None = None,
    progress: bool = True,
    on_image: Callable[[dict[str, Any]], None] | None = None,
    report: Callable[[str], None] | None = None,
    state: Any = None,
    base_dir: str | os.PathLike | None = None,
    sampler: str | None = None,
) -> dict[str, Any]:
    """Run a jobs file (or a list of job dicts) on ``pipe``, writing PNGs and ``manifest.jsonl`` under ``out_dir``.

    Returns the summary: ``written``, ``skipped`` (already done), ``failed`` (jobs), ``failures`` (``[{line,
    reason}]``), ``images`` (planned), ``seconds``, ``images_per_s`` (written per second of generation), ``manifest``.
    ``on_image(entry)`` is called after each image and its manifest line are on disk. ``report(text)`` receives
    validation failures before any compute (the first `MAX_REPORTED`, then a count) and ``warning:`` lines (take-away
    fits; directions recording different application settings, once per run each). Under accelerate (``state`` or
    the launch environment) the batches are dealt round-robin to the processes and every process returns the same,
    combined summary. ``base_dir``: where relative direction paths are looked up (default: next to the jobs file).
    ``sampler``: the sampler of jobs that name none (`steer.samplers`; default the pipeline's scheduler).

    The output folder is locked for the run: `OutputBusyError` when another run holds it (``out_dir`` may also be an
    `OutDir` the caller has locked already); `UnsafePathError` when its manifest is a symlink.
    """
    t0 = time.perf_counter()
    state = state or process_state()
    raw, found_dir = _coerce_jobs(jobs)
    base = Path(base_dir) if base_dir is not None else found_dir
    model = str(model if model is not None else getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None) or "unknown")
    given = out_dir if isinstance(out_dir, OutDir) else None
    if given is None:
        run_id = _gather(state, new_run_id())[0]  # one id for the run; each process tags its temp files with its rank
        out = OutDir(out_dir, run_id if state.num_processes == 1 else f"{run_id}-r{state.process_index}")
    else:
        out = given
    try:
        _claim(out, state)
        fits = FitCache(pipe)
        wants_fits = any(isinstance(job, dict) and job.get("take_away_fit") for _, job in raw)
        if state.num_processes > 1 and wants_fits:  # each take-away pair fitted by one process, not by all of them
            fits.share(state.process_index, state.num_processes,
                       lambda cache: plan_jobs(raw, pipe, out.path, model=model, base_dir=base, batch_size=batch_size, fits=cache,
                                               sampler=sampler),
                       lambda mine: _gather(state, mine), error_reason)
        plan = plan_jobs(raw, pipe, out.path, model=model, base_dir=base, batch_size=batch_size,
                         report=report if state.is_main_process else None, fits=fits, sampler=sampler)
        if report is not None and state.is_main_process:
            for text in failure_lines(plan.failures, "line"):
                report(text)
        state.wait_for_everyone()  # every process planned against the same files before anyone writes
        mine = [b for i, b in enumerate(plan.batches) if i % state.num_processes == state.process_index]
        shard = MANIFEST if state.num_processes == 1 else f"manifest.rank{state.process_index}.jsonl"
        tally = _Tally()
        writer = out.open_append(shard)
        try:
            _execute(pipe, out, mine, writer, tally, progress=progress and state.is_main_process, on_image=on_image)
        finally:
            writer.close()
        tallies = _gather(state, dataclasses.asdict(tally))
        state.wait_for_everyone()
        if state.is_main_process:
            merge_manifest(out, plan)
        state.wait_for_everyone()
    finally:
        if given is None:
            out.close()
    return _summary(plan, tallies, out.path, time.perf_counter() - t0)


def _claim(out: OutDir, state: Any) -> None:
    """The main process locks the folder (unless the caller did), refuses a symlinked manifest and removes the temp
    files of the run that held the lock before (dead, since the lock was free); every process learns the outcome."""
    problem: tuple[str, str] | None = None
    if state.is_main_process:
        try:
            if not out.locked:
                out.lock()
            check_manifests(out)
            if out.previous_run:
                out.remove_temp_files([out.previous_run])
        except (OutputBusyError, UnsafePathError) as err:
            problem = (type(err).__name__, str(err))
    problems = [p for p in _gather(state, problem) if p is not None]
    if problems:
        kind, text = problems[0]
        raise (OutputBusyError if kind == "OutputBusyError" else UnsafePathError)(text)


def check_manifests(out: OutDir) -> None:
    for name in [MANIFEST, *sorted(p.name for p in out.path.glob("manifest.rank*.jsonl"))]:
        out.check_file(name)


def failure_lines(failures: list[dict[str, Any]], prefix: str) -> list[str]:
    ordered = sorted(failures, key=lambda f: f["line"])
    lines = [f"{prefix} {f['line']}: {f['reason']}" for f in ordered[:MAX_REPORTED]]
    if len(ordered) > MAX_REPORTED:
        lines.append(f"... and {len(ordered) - MAX_REPORTED} more failed lines")
    return lines


def _summary(plan: Plan, tallies: list[dict[str, Any]], out: Path, seconds: float) -> dict[str, Any]:
    failures = plan.failures + [f for t in tallies for f in t["failures"]]
    failed_lines = {f["line"] for f in failures}
    first_of = {(im.line, im.index): im for im in plan.images if im.status != "duplicate"}
    duplicates = 0
    for im in plan.images:  # made once, as the first image with its recipe: done when that one is
        first = first_of.get(im.same_as) if im.status == "duplicate" and im.same_as is not None else None
        if first is not None and first.line in failed_lines and not (
                first.path and holds_recipe(read_under(out, first.path), first.key)):
            if im.line not in failed_lines:
                failures.append({"line": im.line, "reason": f"the same image as line {first.line}'s, which failed"})
                failed_lines.add(im.line)
        elif im.status == "duplicate":
            duplicates += 1
    failures.sort(key=lambda f: f["line"])
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
