"""Contradicting prompts with removal: add the target direction and subtract the source's, per batch row.

    python bench/contra_removal.py [--seeds 2] [--out docs/steering/contra_removal.json]

"a red sneaker" -> blue contradicts the prompt: adding "toward blue" alone fights the prompt's own "red". Here every
direction of the matrix (bench/steering_matrix.py, same prompts, same calibration) is learned, and each
contradicting prompt is steered with ``[toward target, toward source]`` at scales ``[s, -beta * s]``: the source is
the attribute value the prompt names, different on every row, so the scales are a (rows, vectors) matrix in one call.
Judged like the matrix (success, kept, break; pass = success >= 0.5 with kept >= 0.8 and break <= 5 %).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import TUNING, C, K, cell_metrics, judge, passes, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402

SCALES = (0.5, 1.0, 1.5, 2.0)


def source_of(kind: str, prompt: str) -> str:
    """The attribute value a contradicting prompt names ("a red sneaker" -> "red" / "sneaker")."""
    if kind == "colour":
        return prompt.split()[1]
    return next(v for v in K if prompt.endswith(f" {v}"))


def add_and_remove_scales(sources: list[str], names: list[str], s: float, negative: str, beta: float = 1.0, most: float = 1.0) -> torch.Tensor:
    """(rows, 1 + len(names)) scales of ``[toward target, toward each source]``: the target at ``s`` on every row,
    each row's own source at ``-beta * s`` (``"subtract"``) or ``-min(beta * s, most)`` (``"remove"``: amount 1 takes
    the excess back to the level, more goes below it)."""
    scale = torch.zeros(len(sources), 1 + len(names))
    scale[:, 0] = s
    for r, src in enumerate(sources):
        scale[r, 1 + names.index(src)] = -(min(beta * s, most) if negative == "remove" else beta * s)
    return scale


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--most", type=float, default=1.0, help="the largest removal amount with --negative remove (1: back to the level)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--negative", choices=("subtract", "remove"), default="subtract",
                    help="steering_negative: subtract the source's direction (-beta * s), or remove the prompt's excess "
                         "along it (amount min(beta * s, 1), conditional half only)")
    ap.add_argument("--window", type=float, nargs=2, default=(0.0, 1.0),
                    help="steering window of the contradicting runs (default the whole run: the prompt's own attribute "
                         "comes back in unsteered late steps)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "contra_removal.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pipe, classifier = load_pipeline(None, "cpu"), load_classifier()
    vectors = {}
    for kind, values in (("colour", C), ("class", K)):
        for v in values:
            P = prompts_for(kind, v)
            vectors[(kind, v)] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=args.steps, guidance_scale=args.guidance, progress=False)
    rows = []
    for (kind, target), v_target in vectors.items():
        P = prompts_for(kind, target)
        prompts = [p for _ in range(args.seeds) for p in P["contra"]]
        seeds = [1000 + s for s in range(args.seeds) for _ in P["contra"]]
        sources = [source_of(kind, p) for p in prompts]
        names = sorted(set(sources))
        steering = [v_target] + [vectors[(kind, n)] for n in names]
        ref = pipe(prompts, generator=generators(seeds), num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np").images.transpose(0, 3, 1, 2)
        ref_j = judge(classifier, ref)
        idx = (C if kind == "colour" else K).index(target)
        for s in SCALES:
            scale = add_and_remove_scales(sources, names, s, args.negative, args.beta, args.most)
            imgs = pipe(prompts, generator=generators(seeds), steering=steering, steering_scale=scale, steering_window=tuple(args.window), steering_negative=args.negative, num_inference_steps=args.steps,
                        guidance_scale=args.guidance, output_type="np").images.transpose(0, 3, 1, 2)
            m = cell_metrics(judge(classifier, imgs), ref_j, kind, idx)
            m["passes"] = passes(m, "contra", kind)
            rows.append({"kind": kind, "target": target, "split": "tuning" if target in TUNING[kind] else "held-out", "scale": s, "beta": args.beta, **m})
        print(kind, target, [(r["scale"], round(r["success"], 2), round(r["kept"], 2), round(r["break"], 2)) for r in rows[-len(SCALES):]], f"{time.time() - t0:.0f}s", flush=True)
    summary = {}
    for kind in ("colour", "class"):
        for split in ("tuning", "held-out"):
            targets = sorted({r["target"] for r in rows if r["kind"] == kind and r["split"] == split})
            at1 = [r for r in rows if r["kind"] == kind and r["split"] == split and r["scale"] == 1.0]
            anyp = [t for t in targets if any(r["passes"] for r in rows if r["target"] == t and r["kind"] == kind)]
            summary[f"{kind}|{split}"] = {"targets": len(targets), "pass_at_1": sum(r["passes"] for r in at1), "pass_at_any": len(anyp),
                                          "mean_success_at_1": float(np.mean([r["success"] for r in at1])), "mean_kept_at_1": float(np.mean([r["kept"] for r in at1]))}
    meta = {"command": " ".join(["python", *sys.argv]), "window": list(args.window), "negative": args.negative, "beta": args.beta, "most": args.most, "seeds": args.seeds, "steps": args.steps, "guidance": args.guidance, "wall_seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "cells": rows}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
