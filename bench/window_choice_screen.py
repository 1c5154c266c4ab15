"""Screen a per-direction window choice: early (0, 0.5) or the whole run (0, 1), chosen by the calibration itself.

    python bench/window_choice_screen.py --out docs/steering/window_choice_demo.json
    python bench/window_choice_screen.py --model assets/models/demo-4x --out docs/steering/demo4x/window_choice.json

Each matrix target is learned twice with `learn_direction`'s defaults, once calibrated over (0, 0.5) (the default
window) and once over the whole run (0, 1). The rule, fixed before this screen ran: **take the window whose
calibration comes closer to the positives' own samples** (the smaller best relative distance: the window where the
direction best reproduces the model's own prompt edit), no margin, no per-kind prior. Both directions are applied
to the matrix's 8 open prompts x 2 seeds (seeds 1000-1001 unless told, DDIM 20, guidance 5, its judges and pass rule) at
0.75, 1.0 and 1.25, so the rule is compared with either window for every target, and with the better of the two
(an oracle no rule can beat). Tuning and held-out targets are reported apart (the matrix's split).
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

WINDOWS = {"early": (0.0, 0.5), "whole": (0.0, 1.0)}
SCALES = (0.75, 1.0, 1.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    ap.add_argument("--targets", default=",".join(C + K), help="comma-separated matrix targets (default: all 18)")
    ap.add_argument("--seeds", type=int, default=2, help="sample seeds per prompt")
    ap.add_argument("--seed-base", type=int, default=1000, help="first sample seed (a replication on fresh seeds: 2000)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--grid", default=None, help="PNG: per target, the 8 open prompts (first seed) unsteered, early at 1.0, whole run at 1.0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, classifier = load_pipeline(args.model, "cpu"), load_classifier()
    run = Runner(pipe, classifier, 20, 5.0, args.seeds, args.seed_base)
    rows, strips, t0 = [], [], time.time()
    for name in args.targets.split(","):
        kind = "colour" if name in C else "class"
        P = prompts_for(kind, name)
        target = (C if kind == "colour" else K).index(name)
        unsteered = run.sample(P["open"])
        ref = judge(classifier, unsteered)
        strip = [unsteered[: len(P["open"])]]
        row = {"target": name, "kind": kind, "split": "tuning" if name in TUNING[kind] else "held-out"}
        for label, window in WINDOWS.items():
            v = pipe.learn_direction(P["positive"], P["negative"], window=window, num_inference_steps=20, guidance_scale=5.0, progress=False)
            cells = {}
            for scale in SCALES:
                images = run.sample(P["open"], [scale], steering=v)
                if scale == 1.0:
                    strip.append(images[: len(P["open"])])
                m = cell_metrics(judge(classifier, images), ref, kind, target)
                cells[str(scale)] = {k: round(x, 3) for k, x in m.items()} | {"pass": passes(m, "open", kind)}
            row[label] = {"calibration": v.metadata["calibration"], "cells": cells}
        distance = {label: row[label]["calibration"]["distance"] for label in WINDOWS}
        row["chosen"] = min(WINDOWS, key=distance.__getitem__)
        rows.append(row)
        strips.append(strip)
        shown = {label: (round(distance[label], 3), *(f"{s}:{c['success']:.2f}/{c['kept']:.2f}{'*' if c['pass'] else ''}" for s, c in row[label]["cells"].items())) for label in WINDOWS}
        print(name, "->", row["chosen"], shown, f"{time.time() - t0:.0f}s", flush=True)
    summary = summarise(rows)
    print(json.dumps(summary, indent=1))
    if args.grid:
        save_grid(strips, Path(args.grid))
        Path(args.grid).with_suffix(".txt").write_text("rows: " + ", ".join(r["target"] for r in rows) + "\ncolumns: unsteered, early (0, 0.5) at 1.0, whole run (0, 1) at 1.0 (8 open prompts each, first seed)\n")
    if args.out:
        meta = {"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo", "machine": f"{platform.machine()} CPU, 1 thread",
                "seconds": round(time.time() - t0, 1), "seeds": args.seeds, "seed_base": args.seed_base, "windows": WINDOWS, "scales": SCALES, "rule": "argmin calibration distance"}
        Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))


def save_grid(strips: list[list], path: Path) -> None:
    """One row per target: its cells (8 images each, side by side) separated by white bars."""
    import numpy as np
    from PIL import Image

    rows = []
    for cells in strips:
        parts = [np.concatenate(list(c.transpose(0, 2, 3, 1)), axis=1) for c in cells]
        bar = np.ones((parts[0].shape[0], 4, 3), dtype=np.float32)
        rows.append(np.concatenate([x for p in parts for x in (p, bar)][:-1], axis=1))
    grid = np.concatenate([np.concatenate([r, np.ones((2, r.shape[1], 3), dtype=np.float32)]) for r in rows])
    Image.fromarray((grid.clip(0, 1) * 255).astype(np.uint8)).save(path)


def summarise(rows: list[dict]) -> dict:
    """Passes at 1.0 per split and kind for: the default (early), the whole run, the rule's choice, the better of both."""
    def at1(row: dict, label: str) -> bool:
        return row[label]["cells"]["1.0"]["pass"]

    out = {}
    for split in ("tuning", "held-out"):
        for kind in ("colour", "class"):
            group = [r for r in rows if r["split"] == split and r["kind"] == kind]
            if group:
                out[f"{split} {kind}"] = {
                    "targets": len(group),
                    "early": sum(at1(r, "early") for r in group),
                    "whole": sum(at1(r, "whole") for r in group),
                    "rule": sum(at1(r, r["chosen"]) for r in group),
                    "oracle": sum(at1(r, "early") or at1(r, "whole") for r in group),
                    "rule_chose_whole": [r["target"] for r in group if r["chosen"] == "whole"],
                }
    return out


if __name__ == "__main__":
    main()
