"""Probe steering settings on the tuning targets of the matrix (open prompts only), as docs/steering.md's window table.

    python bench/steering_probe.py --variants '{"w05": {"steering_window": [0, 0.5]}, "w1": {"steering_window": [0, 1]}}'
    python bench/steering_probe.py --calibrate-window 0 0.5 --margin 1 --scales 0.75 1 1.25 1.5 1.75 2 2.5
    python bench/steering_probe.py --scales 1 --variants '{"tail05": {"tail": 0.5, "steering_window": [0, 1]}}'

A variant's ``"tail": tau`` steers with the direction over the first half and tau times it over the second half.

Each target's direction is learned with `learn_direction`'s defaults (or calibrated at ``--calibrate-window`` /
``--margin`` / ``--branch``), then applied to the matrix's 8 open prompts x 2 seeds at each scale under each variant's
``steering_*`` options. Prints success / kept per scale, ``*`` where the matrix's pass rule holds. Tuning targets only:
the held-out ones are for the matrix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import TUNING, C, K, Runner, cell_metrics, judge, passes, prompts_for  # noqa: E402

import steer.calibrate as calibration  # noqa: E402
import steer.learn as learning  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.vectors import SteeringVector  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default='{"default": {}}', help="JSON {name: {steering_*: value}}")
    ap.add_argument("--targets", default=",".join(TUNING["colour"] + TUNING["class"]))
    ap.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.5, 2.0])
    ap.add_argument("--calibrate-window", type=float, nargs=2, default=None, help="learn with window=(start, end)")
    ap.add_argument("--margin", type=float, default=None, help="calibration margin (default steer.calibrate.MARGIN)")
    ap.add_argument("--branch", default=None, help="calibrate and record this CFG branch")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.margin is not None:
        calibration.MARGIN = args.margin
    if args.branch is not None:
        learning.CALIBRATED_SETTINGS["branch"] = args.branch
    variants = json.loads(args.variants)
    pipe, classifier = load_pipeline(None, "cpu"), load_classifier()
    run = Runner(pipe, classifier, 20, 5.0, 2)
    t0 = time.time()
    for name in args.targets.split(","):
        kind = "colour" if name in C else "class"
        P = prompts_for(kind, name)
        target = (C if kind == "colour" else K).index(name)
        ref = judge(classifier, run.sample(P["open"]))
        window = {"window": tuple(args.calibrate_window)} if args.calibrate_window else {}
        v = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=20, guidance_scale=5.0, progress=False, **window)
        for label, options in variants.items():
            options = dict(options)
            vector = with_tail(v, options.pop("tail")) if "tail" in options else v
            cells = []
            for scale in args.scales:
                m = cell_metrics(judge(classifier, run.sample(P["open"], [scale], steering=vector, **options)), ref, kind, target)
                cells.append(f"{scale:g}: {m['success']:.2f}/{m['kept']:.2f}{'*' if passes(m, 'open', kind) else ''}")
            print(f"{name:10s} strength {v.metadata['calibration']['strength']:.3f} {label:10s}", "  ".join(cells), f"{time.time() - t0:.0f}s", flush=True)


def with_tail(v: SteeringVector, tau: float) -> SteeringVector:
    """``v`` at full strength over the first half of the run and ``tau`` times it over the second (two step buckets;
    use with ``"steering_window": [0, 1]``)."""
    return SteeringVector({n: torch.stack([d, tau * d]) for n, d in v.directions.items()}, dict(v.metadata))


if __name__ == "__main__":
    main()
