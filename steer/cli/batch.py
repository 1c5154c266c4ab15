"""``steer batch JOBS --out DIR``: the command line of `steer.jobs` (batched, resumable, multi-process generation).

``accelerate launch -m steer.cli batch JOBS --out DIR ...`` runs it in several processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from steer.assets import default_model
from steer.cli.arguments import add_lora_argument
from steer.cli.inputs import CLIError, add_compile_argument, add_sampler_argument, check_compile_backend, check_out_dir
from steer.cli.loading import load_pipeline
from steer.jobs.files import OutDir, new_run_id
from steer.jobs.formats import read_jobs
from steer.jobs.run import check_manifests, failure_lines, process_state, run
from steer.recipe import recorded_path
from steer.validation import bounded_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``steer batch`` arguments."""
    p.add_argument("jobs", help="jobs file: .jsonl, .csv or .yaml (see examples/jobs.*)")
    p.add_argument("--out", required=True, help="output directory (PNGs + manifest.jsonl); rerun to resume; one run at a time")
    p.add_argument("--model", default=default_model(), help="pipeline directory or hub id (default: the embedded demo model)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available; per process under accelerate)")
    p.add_argument("--batch-size", type=bounded_int(1, 1024), default=4, help="images per pipeline call (default 4, at most 1024)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_lora_argument(p)
    add_compile_argument(p)
    add_sampler_argument(p, "sample the jobs that name no 'sampler'")


def configure_parser(subparsers: Any) -> None:
    """Add the ``batch`` subcommand to the ``steer`` CLI."""
    p = subparsers.add_parser("batch", help="run a jobs file (.jsonl/.csv/.yaml) of generations: batched, resumable, multi-process")
    add_arguments(p)
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    """``steer batch``: exit status 0 when every job ran, 1 when some failed, 2 for a bad file or a busy ``--out``."""
    check_out_dir(args.out)
    check_compile_backend(args.compile)
    raw = read_jobs(args.jobs)  # fail fast on an unreadable file, before loading the model
    if not raw:
        raise CLIError(f"no jobs in {args.jobs}")
    state = process_state(cpu=args.device == "cpu" if args.device else None)
    device = args.device
    if device is None and state.num_processes > 1:
        device = getattr(state, "device", None)
    if not args.progress or not state.is_main_process:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
    # One process: lock --out before loading the model, so a second run stops at once.
    out = OutDir(args.out, new_run_id()) if state.num_processes == 1 else None
    try:
        if out is not None:
            out.lock()
            check_manifests(out)
        pipe = load_pipeline(args.model, device, progress=False, loras=args.lora)
        if args.sampler is not None:  # one that does not fit the model: one line now, not a failure per job
            from steer.samplers import check_sampler

            args.sampler = check_sampler(pipe.scheduler, args.sampler)
        if args.compile:
            pipe.compile_unet(backend=args.compile)
        summary = run(raw, pipe, out if out is not None else args.out, args.batch_size, model=recorded_path(args.model),
                      progress=args.progress, report=_stderr, state=state, base_dir=Path(args.jobs).resolve().parent,
                      sampler=args.sampler)
    finally:
        if out is not None:
            out.close()
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
    for text in failure_lines(summary["failures"], "  failed line"):
        _stderr(text)
