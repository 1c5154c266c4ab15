"""``steer samplers``: the sampler names (`steer.samplers`, ``--sampler``) that fit a model, with the scheduler each
builds, its denoiser calls per step, and whether learning a direction with it shares the first half of its runs."""

from __future__ import annotations

import argparse
import json
from typing import Any


def configure_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``steer samplers``."""
    from steer.assets import default_model

    p = subparsers.add_parser("samplers", help="list the samplers (--sampler names) that fit a model")
    p.add_argument("--model", default=default_model(), help="pipeline directory or hub id (only its scheduler is read)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_samplers)
    return p


def sampler_rows(scheduler: Any) -> list[dict[str, Any]]:
    """One row per sampler that fits a pipeline whose scheduler is ``scheduler``."""
    from steer.partial_run import resumable, run_length
    from steer.samplers import SAMPLERS, build_sampler, sampler_name, sampler_names

    own = sampler_name(scheduler)
    rows = []
    for name in sampler_names(scheduler):
        built = build_sampler(scheduler, name)
        calls = run_length(argparse.Namespace(scheduler=built), 20)
        rows.append({"name": name, "scheduler": type(built).__name__, "model_default": name == own,
                     "calls_in_20_steps": calls, "learning_shares_first_half": resumable(built), "note": SAMPLERS[name].note})
    return rows


def cmd_samplers(args: argparse.Namespace) -> int:
    from steer.cli.loading import load_scheduler
    from steer.samplers import sampler_name

    scheduler = load_scheduler(args.model)
    rows = sampler_rows(scheduler)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    own = sampler_name(scheduler)
    print(f"{len(rows)} sampler(s) fit {args.model} (its own scheduler: {own})")
    for r in rows:
        mark = "*" if r["model_default"] else " "
        shared = "" if r["learning_shares_first_half"] else "; learning samples each window whole"
        note = f"; {r['note']}" if r["note"] else ""
        print(f" {mark} {r['name']:<20} {r['scheduler']:<34} {r['calls_in_20_steps']} calls in 20 steps{shared}{note}")
    print("* the model's own. Use a name with --sampler (steer learn, generate, batch), a batch job's 'sampler' field, "
          "pipe.with_sampler(name), or the app's sampler picker.")
    return 0
