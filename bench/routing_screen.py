"""Screen steering the text tokens only where chosen blocks read them (per-block routing of the text-site direction).

    python bench/routing_screen.py --kinds colour --out docs/steering/routing/colour.json
    python bench/routing_screen.py --kinds class --out docs/steering/routing/class.json     # in parallel

The default steers the text tokens every cross-attention reads (a pre-forward hook on the denoiser). Block-role
findings on SDXL (layout/composition in the low-resolution down blocks, colour/style in the first up blocks) suggest
steering only some of the readers: a colour edit only where appearance is drawn could keep the class, a class edit
only where the layout is decided could keep the colour. Each route is a `steering_readers` value: the hooks sit on the
``encoder_hidden_states`` argument of those cross-attentions instead (the same token-wise transformation, step
window, CFG split and fixed tokens); learning and calibration run through the route (``learn_direction(readers=)``),
so each route gets its own calibrated strength. Routing to every cross-attention is checked bit-identical to the
default hook before the screen.

Each matrix target is learned per route with `learn_direction`'s defaults and applied to the matrix's 8 open prompts
x 2 seeds (seeds 1000-1001, DDIM 20, guidance 5, its judges and pass rule) at 0.75, 1.0 and 1.25.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import TUNING, C, K, Runner, cell_metrics, judge, passes, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402

# route -> `steering_readers` (None: the default hook on the denoiser)
ROUTES: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "down+mid": ("layout",),  # down_blocks.*, mid_block.*: where the layout is decided (8-16 px and the 32 px input block)
    "up": ("detail",),  # up_blocks.*: where the image is drawn back up (16 and 32 px)
    "low-down+mid": ("down_blocks.1.*", "mid_block.*"),  # SDXL's composition block analogue: low resolution, going down
    "low-up": ("up_blocks.1.*",),  # SDXL's colour/style block analogue: the first up block with attention
}
SCALES = (0.75, 1.0, 1.25)


def check_all_route(pipe, run: Runner) -> None:
    """Routing to every cross-attention must equal the default hook exactly (the tokens have no other reader)."""
    P = prompts_for("colour", "blue")
    v = pipe.learn_direction(P["positive"], P["negative"], calibrate=False, progress=False)
    plain = run.sample(P["open"][:2], [0.5], steering=v)
    every = run.sample(P["open"][:2], [0.5], steering=v, steering_readers=("layout", "detail"))
    if not (plain == every).all():
        raise SystemExit(f"routing to every cross-attention differs from the default hook (max {abs(plain - every).max():.3g})")
    print("check: routing to every cross-attention equals the default hook bit for bit", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    ap.add_argument("--kinds", default="colour,class")
    ap.add_argument("--routes", default=",".join(ROUTES))
    ap.add_argument("--window", default=None, help="start,end: learn (and calibrate) every route over this window (default: learn_direction's)")
    ap.add_argument("--targets", default=None, help="comma-separated targets (default: every target of --kinds)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, classifier = load_pipeline(args.model, "cpu"), load_classifier()
    run = Runner(pipe, classifier, 20, 5.0, args.seeds, args.seed_base)
    check_all_route(pipe, run)
    routes = args.routes.split(",")
    names = [c for c in C if "colour" in args.kinds] + [k for k in K if "class" in args.kinds]
    names = args.targets.split(",") if args.targets else names
    window = {} if args.window is None else {"window": tuple(float(x) for x in args.window.split(","))}
    rows, t0 = [], time.time()
    for name in names:
        kind = "colour" if name in C else "class"
        P = prompts_for(kind, name)
        target = (C if kind == "colour" else K).index(name)
        ref = judge(classifier, run.sample(P["open"]))
        row = {"target": name, "kind": kind, "split": "tuning" if name in TUNING[kind] else "held-out"}
        for route in routes:
            v = pipe.learn_direction(P["positive"], P["negative"], readers=ROUTES[route], num_inference_steps=20, guidance_scale=5.0, progress=False, **window)
            cells = {}
            for scale in SCALES:  # the vector's recorded readers apply
                m = cell_metrics(judge(classifier, run.sample(P["open"], [scale], steering=v)), ref, kind, target)
                cells[str(scale)] = {k: round(x, 3) for k, x in m.items()} | {"pass": passes(m, "open", kind)}
            row[route] = {"calibration": v.metadata["calibration"], "cells": cells}
        rows.append(row)
        shown = {r: (round(row[r]["calibration"]["distance"], 3), *(f"{s}:{c['success']:.2f}/{c['kept']:.2f}{'*' if c['pass'] else ''}" for s, c in row[r]["cells"].items())) for r in routes}
        print(name, shown, f"{time.time() - t0:.0f}s", flush=True)
    summary = {}
    for split in ("tuning", "held-out"):
        for kind in ("colour", "class"):
            group = [r for r in rows if r["split"] == split and r["kind"] == kind]
            if group:
                summary[f"{split} {kind}"] = {route: sum(r[route]["cells"]["1.0"]["pass"] for r in group) for route in routes} | {"targets": len(group)}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo", "machine": f"{platform.machine()} CPU, 1 thread", "seconds": round(time.time() - t0, 1),
                "seeds": args.seeds, "seed_base": args.seed_base, "window": args.window, "routes": {r: ROUTES[r] for r in routes}, "scales": SCALES}
        Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
