"""Does a calibrated direction still make its full edit when the user generates with a negative prompt?

    python bench/negative_prompt.py [--out docs/steering/negative_prompt] [--seeds 2 --seed-base 1000]

Protocol (fixed before the first run, 2026-12-02). Every colour target of the matrix (`bench/steering_matrix.py`,
whose tuning / held-out split it keeps: blue, red, green tune; orange, yellow, cyan, purple, white are held out),
learned with the defaults (guidance 5, 20 steps) from the matrix's prompts. Negative prompts that leave the colour open
("a sneaker", "a bag", "a dress": the demo model knows no other words, so these stand in for SD's "lowres, blurry"),
each at every target. Per (target, negative prompt), on the matrix's 8 attribute-open prompts x the seeds, all with
that negative prompt:
- ``default``: the direction learned without a negative prompt, at 1.0 (what a user gets today);
- ``calibrated``: the direction learned with ``negative_prompt=`` that prompt (its calibration samples every set with
  it), at 1.0;
- ``rewrite``: the model's own prompt edit ("a sneaker" -> "a blue sneaker"), the ceiling;
and the default direction with no negative prompt, the matrix's own condition. Judges and the pass rule are the
matrix's (success >= 0.8 by the classifier and the pixel measure, class kept >= 0.8, break <= 5 %). Decision rule, set
before the run: learning with the negative prompt becomes the documented recipe (and ``steer learn --negative-prompt``)
if on the tuning targets it passes more (target, negative prompt) cells than the default without losing mean kept below
0.8; the held-out cells are reported apart. ~10 min on the demo model, 1 thread.

``--kind class`` (added after the colour runs, 2026-12-02; reported, no decision attached): every class target, its
open prompts ("a red item"), negative prompts naming another garment (three of "a sneaker", "a bag", "a dress", "a
coat" that are not the target), the rewrite "a red item" -> "a red bag".
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import TUNING, C, K, cell_metrics, judge, passes, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402

NEGATIVES = ("a sneaker", "a bag", "a dress")
CLASS_NEGATIVES = ("a sneaker", "a bag", "a dress", "a coat")


def negatives_for(kind: str, target: str) -> tuple[str, ...]:
    """The negative prompts a target is measured under: never one naming the target itself."""
    return NEGATIVES if kind == "colour" else tuple(n for n in CLASS_NEGATIVES if n != f"a {target}")[:3]


def rewritten(kind: str, target: str, prompts: list[str]) -> list[str]:
    """The model's own prompt edit of the open prompts: "a sneaker" -> "a blue sneaker", "a red item" -> "a red bag"."""
    return [p.replace("a ", f"a {target} ", 1) if kind == "colour" else p.replace(" item", f" {target}") for p in prompts]


def compared(classifier, sample, P: dict, target: str, default, calibrated, kind: str = "colour") -> tuple[dict[str, dict], list[np.ndarray]]:
    """One condition (``sample(prompts, **steering)`` draws the open prompts under it): the matrix's metrics at 1.0 of
    the ``default`` and the ``calibrated`` direction and of the prompt rewrite, against the unsteered samples; and the
    grid rows (unsteered, default, calibrated, rewrite: the first seed's 8 images each)."""
    unsteered = sample(P["open"])
    ref = judge(classifier, unsteered)
    runs = {
        "default": sample(P["open"], steering=default, steering_scale=1.0),
        "calibrated": sample(P["open"], steering=calibrated, steering_scale=1.0),
        "rewrite": sample(rewritten(kind, target, P["open"])),
    }
    index = C.index(target) if kind == "colour" else K.index(target)
    metrics = {m: cell_metrics(judge(classifier, images), ref, kind, index) for m, images in runs.items()}
    return metrics, [np.concatenate(list(x[:8]), axis=2) for x in (unsteered, *runs.values())]


def sampler(pipe, seeds: list[int]):
    """``sample(prompts, negative, guidance, **steering)``: every prompt x seed in one call, DDIM 20, as [N, 3, H, W]."""

    def sample(prompts: list[str], negative: str = "", guidance: float = 5.0, **steering) -> np.ndarray:
        rows = [(p, s) for s in seeds for p in prompts]
        images = pipe([p for p, _ in rows], negative_prompt=[negative] * len(rows), generator=[torch.Generator().manual_seed(s) for _, s in rows],
                      num_inference_steps=20, guidance_scale=guidance, output_type="np", **steering).images
        return images.transpose(0, 3, 1, 2).astype(np.float32)

    return sample


def setup(doc: str, out: str) -> tuple[argparse.Namespace, object, object, list[int]]:
    """The command line both settings benches take, the demo model (or ``--model``), the lab classifier and the seeds."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / out))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--kind", choices=("colour", "class"), default="colour")
    ap.add_argument("--targets", nargs="*", default=None, help="default: every target of the kind")
    args = ap.parse_args()
    args.targets = args.targets or list(C if args.kind == "colour" else K)
    torch.set_num_threads(1)
    pipe, classifier = load_pipeline(args.model, "cpu", progress=False), load_classifier()
    pipe.set_progress_bar_config(disable=True)
    return args, pipe, classifier, [args.seed_base + s for s in range(args.seeds)]


def save(args: argparse.Namespace, script: str, t0: float, results: dict, grid_rows: list[np.ndarray], grid_text: str) -> None:
    """results.json (``results`` with the command, time and machine), grid.png and grid.txt under ``--out``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": f"python bench/{script} " + " ".join(sys.argv[1:]), "seconds": round(time.time() - t0, 1),
            "machine": f"{platform.machine()} CPU, 1 thread", **results.pop("meta", {})}
    (out / "results.json").write_text(json.dumps({"meta": meta, **results}, indent=1))
    grid = (np.concatenate(grid_rows, axis=1).transpose(1, 2, 0) * 255).clip(0, 255).astype(np.uint8)
    Image.fromarray(grid).save(out / "grid.png")
    (out / "grid.txt").write_text(grid_text + "\n")
    print(json.dumps(results["summary"], indent=1))


def main() -> None:
    t0 = time.time()
    args, pipe, classifier, seeds = setup(__doc__, "negative_prompt")
    kw = dict(num_inference_steps=20, guidance_scale=5.0)
    sample = sampler(pipe, seeds)

    cells, grid_rows, learned = [], [], []
    for target in args.targets:
        P = prompts_for(args.kind, target)
        t = C.index(target) if args.kind == "colour" else K.index(target)
        split = "tuning" if target in TUNING[args.kind] else "held-out"
        default = pipe.learn_direction(P["positive"], P["negative"], progress=False, **kw)
        learned.append({"target": target, "negative_prompt": None, "strength": default.metadata["calibration"]["strength"],
                        "window": default.metadata["recommended"]["window"]})
        ref = judge(classifier, sample(P["open"], ""))
        at_one = cell_metrics(judge(classifier, sample(P["open"], "", steering=default, steering_scale=1.0)), ref, args.kind, t)
        cells.append({"target": target, "split": split, "negative_prompt": "", "method": "default", **at_one})
        negatives = negatives_for(args.kind, target)
        for negative in negatives:
            calibrated = pipe.learn_direction(P["positive"], P["negative"], progress=False, negative_prompt=negative, **kw)
            learned.append({"target": target, "negative_prompt": negative, "strength": calibrated.metadata["calibration"]["strength"],
                            "window": calibrated.metadata["recommended"]["window"]})
            metrics, rows = compared(classifier, lambda prompts, n=negative, **steering: sample(prompts, n, **steering), P, target, default,
                                     calibrated, args.kind)
            cells += [{"target": target, "split": split, "negative_prompt": negative, "method": m, **r} for m, r in metrics.items()]
            if negative == negatives[0]:
                grid_rows += rows
        print(f"{target}: {time.time() - t0:.0f} s", flush=True)

    results = {"meta": {"seeds": seeds, "kind": args.kind, "negative_prompts": list(NEGATIVES if args.kind == "colour" else CLASS_NEGATIVES)},
               "summary": summarise(cells, args.kind), "learned": learned, "cells": cells}
    save(args, Path(__file__).name, t0, results, grid_rows, f"the first negative prompt of each target; per target 4 rows: unsteered, default at 1.0, "
         f"calibrated with the negative prompt at 1.0, the prompt rewrite; targets {', '.join(args.targets)}; seed {seeds[0]}")


def summarise(cells: list[dict], kind: str = "colour") -> dict:
    """Per method and split: (target, negative prompt) cells passing, mean success / kept, over the negative prompts;
    and the no-negative-prompt reference."""
    out = {}
    for split in ("tuning", "held-out"):
        for method in ("default", "calibrated", "rewrite"):
            rows = [c for c in cells if c["split"] == split and c["method"] == method and c["negative_prompt"]]
            if rows:
                out[f"{split}/{method}"] = {"pass": f"{sum(passes(r, 'open', kind) for r in rows)}/{len(rows)}",
                                            "success": round(float(np.mean([r["success"] for r in rows])), 3),
                                            "kept": round(float(np.mean([r["kept"] for r in rows])), 3)}
        rows = [c for c in cells if c["split"] == split and not c["negative_prompt"]]
        if rows:
            out[f"{split}/default, no negative prompt"] = {"pass": f"{sum(passes(r, 'open', kind) for r in rows)}/{len(rows)}",
                                                          "success": round(float(np.mean([r["success"] for r in rows])), 3),
                                                          "kept": round(float(np.mean([r["kept"] for r in rows])), 3)}
    return out


if __name__ == "__main__":
    main()
