"""The ``steer detect`` command: score generated or given images for memorization, write a report, a summary and a
histogram. The detector itself lives in `steer.detect`; this module is the command line around it (and the only
part of detection that loads a pipeline).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from steer.cli.arguments import add_lora_argument
from steer.cli.inputs import (
    CLIError,
    add_sampler_argument,
    check_out_dir,
    check_out_file,
    check_window,
    list_images,
    print_warnings,
    read_prompts,
)
from steer.detect.detector import MemorizationDetector, detect_memorization, read_detector_file
from steer.detect.scores import DEFAULT_INLINE_WINDOW, INLINE_SCORES, SCORE_KINDS, STATISTICS
from steer.files import GrowingFile, atomic_write
from steer.jobs.plan import MAX_GUIDANCE  # the command line's limits are steer batch's
from steer.validation import MAX_IMAGES, MAX_SEED, MAX_STEPS, bounded_float, bounded_int, clip, safetensors_path


# ----------------------------------------------------------------------------------------------------------------------
# CLI: steer detect
# ----------------------------------------------------------------------------------------------------------------------
def configure_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``steer detect``."""
    from steer.assets import default_model

    p = subparsers.add_parser(
        "detect",
        help="score generated or given images for memorization (writes report.jsonl, a summary and a histogram)",
        description="Memorization detection (Zhang et al. 2026): prompts are generated and scored inline and by "
        "re-encoding; images are scored by re-encoding. With --calibrate, thresholds are set on ordinary prompts.",
    )
    p.add_argument("--model", default=default_model(), help="pipeline directory or hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    add_lora_argument(p)  # a LoRA'd model: calibrate on it (a detector calibrated on the base weights is refused)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompts", default=None, help="text file, one prompt per line")
    src.add_argument("--images", default=None, help="directory of images (re-encode score only)")
    p.add_argument("--detector", default=None, help="a calibrated detector file (.safetensors)")
    p.add_argument("--calibrate", default=None, metavar="FILE", help="ordinary prompts (one per line): calibrate first")
    p.add_argument("--fpr", type=bounded_float(0.0, 0.999), default=0.01, help="false-positive rate of the calibrated threshold")
    p.add_argument("--save-detector", default=None, help="write the (calibrated) detector here")
    p.add_argument("--statistic", choices=STATISTICS, default=None, help="how spiky the pooled activations are (default std)")
    p.add_argument("--layers", nargs="+", default=None, help="re-encode (and, by default, inline) layers")
    p.add_argument("--inline-score", dest="inline_score", choices=INLINE_SCORES, default=None,
                   help="inline/early score: the paper's spikiness of the conditional branch, or cfg_distance "
                        "(distance between the guidance branches' activations; docs/detection.md)")
    p.add_argument("--inline-layers", dest="inline_layers", nargs="+", default=None, help="layers of the inline score (default: --layers)")
    p.add_argument("--inline-window", dest="inline_window", nargs="+", default=None, metavar="START,END",
                   help="fraction of the denoising steps the inline score averages (START,END as --window elsewhere, or START END)")
    p.add_argument("--num-images-per-prompt", type=bounded_int(1, MAX_IMAGES), default=1, help="images generated and scored per prompt (default 1)")
    p.add_argument("--steps", type=bounded_int(1, MAX_STEPS), default=None,
                   help="denoising steps of the generated images (default: those --detector was calibrated at, else 25)")
    p.add_argument("--guidance", type=bounded_float(0.0, MAX_GUIDANCE), default=None,
                   help="classifier-free guidance scale (default: the one --detector was calibrated at, else 7.5)")
    add_sampler_argument(p, "generate (and calibrate)", "the one --detector was calibrated with (else the model's own scheduler)")
    p.add_argument("--seed", type=bounded_int(0, MAX_SEED - 10**7), default=0,  # calibration seeds start at seed + 1e6
                   help="the first prompt's seed (default 0; --calibrate's prompts use seeds from seed + 1,000,000)")
    p.add_argument("--batch-size", type=bounded_int(1, 1024), default=8, help="images per generation and scoring call (default 8)")
    p.add_argument("--verdict-from", choices=SCORE_KINDS, default=None,
                   help="score that decides (default: inline for a CFG-distance detector such as the bundled ones, "
                        "else re-encode)")
    p.add_argument("--save-images", default=None, metavar="DIR", help="also write the generated images")
    p.add_argument("--out", default=None, help="report .jsonl (summary .summary.json and histogram .png next to it)")
    p.set_defaults(func=cmd_detect)
    return p


def cmd_detect(args: argparse.Namespace) -> int:
    from steer.cli.loading import load_pipeline
    from steer.samplers import sampler_name

    if not (args.prompts or args.images or args.calibrate):
        raise ValueError("give --prompts FILE or --images DIR (and/or --calibrate FILE)")
    if (args.prompts or args.images) and not args.out:
        raise ValueError("--out report.jsonl is required with --prompts / --images")
    if args.images and args.verdict_from not in (None, "reencode"):
        raise CLIError(f"--verdict-from {args.verdict_from} scores images while they are generated (--prompts): "
                       "images from --images are scored by re-encoding only")
    if args.images and args.save_images:
        raise CLIError("--save-images writes the images --prompts generates: with --images nothing is generated")
    # the inputs first, each a few file-system calls: a bad one fails before the model loads
    _detector_options(args)
    inline_window = check_window(args.inline_window, "--inline-window")
    if args.detector:
        read_detector_file(Path(args.detector))  # missing, damaged or not a detector: one line now (loaded below)
    calibration = read_prompts(args.calibrate) if args.calibrate else None
    prompts = read_prompts(args.prompts) if args.prompts else None
    for flag, items in (("--prompts", prompts), ("--calibrate", calibration)):  # each factor was bounded, not the run
        if items is not None and len(items) * args.num_images_per_prompt > MAX_IMAGES:
            raise CLIError(f"{flag}: {len(items)} prompts x --num-images-per-prompt {args.num_images_per_prompt} is "
                           f"{len(items) * args.num_images_per_prompt} images, above the limit of {MAX_IMAGES} per run "
                           "(split the prompt file)")
    images = list_images(args.images) if args.images else None
    check_out_file(args.out, "--out")
    check_out_file(args.save_detector, "--save-detector", safetensors=True)  # where it lands: NAME.safetensors
    check_out_dir(args.save_images, "--save-images")
    pipe = load_pipeline(args.model, device=args.device, loras=args.lora)
    if args.detector:
        det = MemorizationDetector.load(args.detector, pipe)
    else:
        det = MemorizationDetector(pipe, layers=args.layers, statistic=args.statistic, inline_score=args.inline_score,
                                   inline_layers=args.inline_layers, inline_window=inline_window)
    # generated as the detector's ordinary samples were (its false-positive rate holds there only), unless told
    recorded = (det.sampling or {}) if args.detector and calibration is None else {}
    sampler = args.sampler or recorded.get("sampler")
    if sampler is not None and sampler != sampler_name(pipe.scheduler):
        pipe = pipe.with_sampler(sampler)
        det.pipe = pipe
    call = {"num_inference_steps": args.steps or recorded.get("num_inference_steps", 25),
            "guidance_scale": args.guidance if args.guidance is not None else recorded.get("guidance_scale", 7.5)}
    if det.inline_score == "cfg_distance" and call["guidance_scale"] <= 1 and (prompts or calibration):  # before sampling
        raise CLIError(f"the detector's inline score is the CFG distance, which compares the two guidance branches: "
                       f"--guidance {call['guidance_scale']:g} samples without guidance; use --guidance above 1")
    if calibration is not None:
        with warnings.catch_warnings(record=True) as caught:  # too few samples for the rate...: one line each
            warnings.simplefilter("always")
            det.calibrate(calibration, fpr=args.fpr, seed=args.seed + 1_000_000, batch_size=args.batch_size,
                          num_images_per_prompt=args.num_images_per_prompt, **call)
        print_warnings(caught)
        print(f"calibrated on {len(det.calibration['reencode'])} ordinary samples at FPR {args.fpr:g}: "
              f"thresholds re-encode {det.threshold:.4g}, inline {det.inline_threshold:.4g}, early {det.early_threshold:.4g}")
    if args.save_detector:
        target = Path(args.save_detector).expanduser()
        replaced = safetensors_path(target).exists()
        print(f"{'replaced' if replaced else 'wrote'} {det.save(target)}")
    if not (args.prompts or args.images):
        return 0
    out = Path(args.out)
    summary_path = out.with_suffix(".summary.json")
    linked = [p for p in (out, summary_path, out.with_suffix(".png")) if p.is_symlink()]
    if linked:  # checked before any is written: never through a link, never half a report
        raise CLIError(f"refusing to write {linked[0]}: it is a symbolic link")
    report = GrowingFile(out)
    with warnings.catch_warnings(record=True) as caught:  # sampled off the calibration...: one line each
        warnings.simplefilter("always")
        try:
            rows, kind = _score_for_cli(det, pipe, args, call, prompts, images, report)
        except BaseException:
            print_warnings(caught)  # said also when the run stops
            if (kept := report.abandon()) is not None:  # what was scored is not lost
                print(f"the rows scored before it stopped are in {kept}", file=sys.stderr)
            raise
    print_warnings(caught)
    report.finish()
    summary = _summary(rows, det, kind)
    atomic_write(summary_path, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    hist = _histogram(rows, det, kind, out.with_suffix(".png"))
    print(f"{summary['count']} samples, {summary['flagged']} flagged as memorized"
          + (f" (threshold {summary['threshold']:.4g}, from {kind} score)" if summary["threshold"] is not None else " (uncalibrated: no verdict; pass --detector or --calibrate)"))
    print(f"wrote {out}, {summary_path}, {hist}")
    if summary["unreadable"]:  # the others' scores are in the report; the run is not a clean success
        first = next(r for r in rows if r.get("error"))
        print(f"{summary['unreadable']} image(s) could not be scored (their rows hold the error), e.g. {first['error']}",
              file=sys.stderr)
        return 1
    return 0


_NEW_DETECTOR = {"statistic": "std", "layers": None, "inline_score": "spikiness", "inline_layers": None,
                 "inline_window": list(DEFAULT_INLINE_WINDOW)}  # what a detector made here is built with, by default


def _detector_options(args: argparse.Namespace) -> None:
    """The options that build a new detector, refused with ``--detector`` (its file records its own: they were
    ignored without a word), else filled with their defaults; an ``--out`` the histogram would overwrite."""
    given = [key for key in _NEW_DETECTOR if getattr(args, key) is not None]
    if args.detector and given:
        flag = "--" + given[0].replace("_", "-")
        raise CLIError(f"{flag} sets up a new detector; --detector {args.detector} brings its own (its file records it)")
    for key, default in _NEW_DETECTOR.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.out and Path(args.out).suffix.lower() == ".png":  # the histogram is OUT with .png: it replaced the report
        raise CLIError(f"--out {args.out}: the report is JSON lines and its histogram is written as OUT.png; name the "
                       "report .jsonl")


def _score_files(det: MemorizationDetector, files: list[Path], batch_size: int, report: GrowingFile) -> list[dict]:
    """Re-encode scores of ``files``, a batch at a time, each batch's rows added to ``report``; an unreadable file is
    a row with its ``error`` (the scores of every other file are kept: one bad image at the end of a folder lost them
    all)."""
    rows: list[dict] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        try:
            results: list[tuple[float | None, str | None]] = [(float(s), None) for s in det.score(chunk)]
        except ValueError:  # which file: each alone
            results = []
            for f in chunk:
                try:
                    results.append((float(det.score([f])[0]), None))
                except ValueError as err:
                    results.append((None, clip(str(err), 300)))
        new = []
        for f, (score, error) in zip(chunk, results, strict=True):
            flagged = None if score is None or det.threshold is None else score > det.threshold
            new.append({"index": start + len(new), "image": str(f), "score": score, "memorized": flagged,
                        **({"error": error} if error else {})})
        report.add("".join(json.dumps(row) + "\n" for row in new))
        rows += new
    return rows


def _score_for_cli(det: MemorizationDetector, pipe, args: argparse.Namespace, call: dict, prompts: list[str] | None,
                   files: list[Path] | None, report: GrowingFile) -> tuple[list[dict], str]:
    """The report's rows and the score their verdicts come from. Generated images are sampled and scored a part at a
    time, each part's rows added to ``report`` (on disk before the next part is sampled) and its images saved as they
    come (``--save-images``), so an interrupted run keeps what it scored. A part is whole generation batches and whole
    re-encode batches, so every score is the one a single pass gives."""
    if files is not None:
        return _score_files(det, files, args.batch_size, report), "reencode"
    items = [p for p in prompts for _ in range(args.num_images_per_prompt)]
    part = math.lcm(args.batch_size, det.batch_size)
    base = _image_recipe(pipe, args, call) if args.save_images else None
    suffix = _run_suffix(Path(args.save_images), items, args.seed, base) if base is not None else 1
    rows: list[dict] = []
    kind, noted = "reencode", False
    for start in range(0, len(items), part):
        found = detect_memorization(pipe, items[start : start + part], detector=det, seed=args.seed + start,
                                    verdict_from=args.verdict_from, batch_size=args.batch_size, **call)
        new = found.rows()
        for row in new:
            row["index"] += start
        if base is not None:
            renamed = _save_images(Path(args.save_images), new, found.images, base, suffix)
            if renamed is not None and not noted:
                print(f"note: {args.save_images} holds another run's images: this run's are named like {renamed.name}")
                noted = True
        report.add("".join(json.dumps(row) + "\n" for row in new))
        rows += new
        kind = found.verdict_from
    return rows, kind


def _image_recipe(pipe, args: argparse.Namespace, call: dict) -> dict[str, Any]:
    """What every saved image's recipe holds besides its prompt, seed and scores: what `steer reproduce` needs to make
    it again (model, sampler, no direction), as `steer generate` records an unsteered image."""
    from steer import __version__
    from steer.lora import loaded_loras
    from steer.recipe import recorded_path
    from steer.samplers import sampler_name

    return {"steer_version": __version__, "model": recorded_path(args.model), "negative_prompt": None, **call,
            "sampler": sampler_name(pipe.scheduler), "height": None, "width": None, "directions": [], "scale": None,
            **({"loras": loaded_loras(pipe)} if loaded_loras(pipe) else {})}


def _png_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def _row_recipe(base: dict, prompt: str, seed: int, scores: dict | None = None) -> dict[str, Any]:
    """A saved image's recipe: ``base``, its prompt and seed, and its scores (``memorization``) once they are known."""
    return {**base, "prompt": prompt, "seed": seed, **({"memorization": scores} if scores is not None else {})}


def _run_suffix(folder: Path, items: list[str], seed: int, base: dict) -> int:
    """The name suffix of the whole run's images, chosen before its first part is saved (`steer.recipe.first_unused`,
    the scores not known yet): a run's files keep one suffix (parts saved one by one came out half plain, half ``-2``
    where another run's files held some of the names)."""
    from steer.recipe import first_unused

    wanted = [_png_path(folder, i) for i in range(len(items))]
    known = [_row_recipe(base, prompt, seed + i) for i, prompt in enumerate(items)]
    try:
        return first_unused(wanted, known, ignore=("memorization",))
    except FileExistsError as err:
        raise CLIError(str(err).replace("--out", "--save-images")) from None


def _save_images(folder: Path, rows: list[dict], images: list[torch.Tensor], base: dict, suffix: int = 1) -> Path | None:
    """The generated images as ``00000.png``, ... with their recipe (``base`` and each row's own); another run's files
    there are kept (this run's names then take a ``-2``, ``-3``, ... suffix, from ``suffix`` on: the first such name is
    returned); a rerun of the same call replaces its own."""
    from steer.recipe import save_new_pngs

    folder.mkdir(parents=True, exist_ok=True)
    recipes = [_row_recipe(base, row["prompt"], row["seed"], {k: row[k] for k in ("score", "inline_score", "early_score")})
               for row in rows]
    wanted = [_png_path(folder, row["index"]) for row in rows]
    try:  # never replacing another run's images, also one writing there at the same time
        paths = save_new_pngs([(_to_pil(image), path, recipe) for image, path, recipe in zip(images, wanted, recipes, strict=True)], suffix)
    except FileExistsError as err:
        raise CLIError(str(err).replace("--out", "--save-images")) from None
    for row, path in zip(rows, paths, strict=True):
        row["image"] = str(path)
    return next((p for p, w in zip(paths, wanted, strict=True) if p != w), None)


def _to_pil(image: torch.Tensor):
    from PIL import Image

    return Image.fromarray((image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def _score_key(kind: str) -> str:
    return {"reencode": "score", "inline": "inline_score", "early": "early_score"}[kind]


def _summary(rows: list[dict], det: MemorizationDetector, kind: str) -> dict[str, Any]:
    key = _score_key(kind)
    values = torch.tensor([r[key] for r in rows if r[key] is not None], dtype=torch.float64)
    threshold = {"reencode": det.threshold, "inline": det.inline_threshold, "early": det.early_threshold}[kind]
    return {
        "count": len(rows),
        "unreadable": sum(1 for r in rows if r.get("error")),
        "flagged": sum(1 for r in rows if r.get("memorized")),
        "verdict_from": kind,
        "threshold": threshold,
        "fpr": det.fpr,
        "detector": det.config(),
        "score": {"min": float(values.min()), "median": float(values.median()), "max": float(values.max())} if len(values) else None,
    }


def _histogram(rows: list[dict], det: MemorizationDetector, kind: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = _score_key(kind)
    values = [r[key] for r in rows if r[key] is not None]
    threshold = {"reencode": det.threshold, "inline": det.inline_threshold, "early": det.early_threshold}[kind]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values, bins=30, color="#4477aa")
    if threshold is not None:
        ax.axvline(threshold, color="#cc3311", linestyle="--", label=f"threshold {threshold:.3g}")
        ax.legend()
    measure = "CFG distance" if kind != "reencode" and det.inline_score == "cfg_distance" else det.statistic
    ax.set_xlabel(f"{kind} score ({measure}; higher = more memorized)")
    ax.set_ylabel("samples")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path
