"""Contradicting prompts at the fitted take-away settings (`steer.take_away.fit_take_away`), judged like the matrix.

    python bench/take_away_fit.py [--kind colour|class] [--out docs/steering/take_away_fit_colour.json]
    python bench/take_away_fit.py --kind class --readers layout --out docs/steering/take_away_fit_class_layout.json

``--readers R``: the targets are learned read by R only (`learn_direction(readers=R)`), the sources (take-aways)
as before, so each call reads the target on its route and removes the source for every reader.

Every direction of the matrix is learned (`bench/steering_matrix.py`'s prompts, defaults). For each target, each of
its contradicting prompts ("a red sneaker" -> blue) is steered with ``[toward target, toward source]`` at
``fit.scales`` = ``[s, -min(s, 1)]`` under ``steering_negative="remove"``, where ``s`` and the window are what `fit_take_away` found for that
(target, source) pair from the model alone (the source's own prompts rewritten with the target's words; no
classifier). Pass: success >= 0.5, kept >= 0.8, break <= 5 % (colour: the pixel measure too), as in the matrix.
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

from contra_removal import generators, source_of  # noqa: E402
from steering_matrix import TUNING, C, K, cell_metrics, judge, passes, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("colour", "class"), default="colour")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    ap.add_argument("--readers", default=None, help="learn the targets read only by these cross-attentions (layout, detail)")
    args = ap.parse_args()
    out = Path(args.out or ROOT / "docs" / "steering" / f"take_away_fit_{args.kind}.json")
    torch.set_num_threads(1)
    t0 = time.time()
    pipe, classifier = load_pipeline(args.model, "cpu"), load_classifier()
    values = C if args.kind == "colour" else K
    vectors = {}
    for v in values:
        P = prompts_for(args.kind, v)
        vectors[v] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=args.steps, guidance_scale=args.guidance, progress=False)
    targets = dict(vectors)
    if args.readers:
        for v in values:
            P = prompts_for(args.kind, v)
            targets[v] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=args.steps, guidance_scale=args.guidance,
                                              readers=args.readers, progress=False)
    fits, rows = {}, []
    for target in values:
        P = prompts_for(args.kind, target)
        prompts = [p for _ in range(args.seeds) for p in P["contra"]]
        seeds = [1000 + s for s in range(args.seeds) for _ in P["contra"]]
        sources = [source_of(args.kind, p) for p in prompts]
        for src in sorted(set(sources)):
            if (target, src) not in fits:
                fits[(target, src)] = pipe.fit_take_away(targets[target], vectors[src], guidance_scale=args.guidance)
        ref_j = judge(classifier, pipe(prompts, generator=generators(seeds), num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np").images.transpose(0, 3, 1, 2))
        images = np.zeros((len(prompts), 3, 32, 32), dtype=np.float32)
        for window in sorted({fits[(target, s)].window for s in sources}):
            idx = [i for i, s in enumerate(sources) if fits[(target, s)].window == window]
            names = sorted({sources[i] for i in idx})
            scale = torch.zeros(len(idx), 1 + len(names))
            for r, i in enumerate(idx):
                add, remove = fits[(target, sources[i])].scales
                scale[r, 0] = add
                scale[r, 1 + names.index(sources[i])] = remove
            out_images = pipe([prompts[i] for i in idx], generator=generators([seeds[i] for i in idx]), steering=[targets[target]] + [vectors[n] for n in names],
                              steering_scale=scale, steering_negative="remove", steering_window=window, num_inference_steps=args.steps,
                              guidance_scale=args.guidance, output_type="np").images
            images[idx] = out_images.transpose(0, 3, 1, 2)
        m = cell_metrics(judge(classifier, images), ref_j, args.kind, values.index(target))
        m["passes"] = passes(m, "contra", args.kind)
        used = [fits[(target, s)] for s in sorted(set(sources))]
        rows.append({"target": target, "split": "tuning" if target in TUNING[args.kind] else "held-out", **m,
                     "fits": {s: fits[(target, s)].to_dict() for s in sorted(set(sources))},
                     "strengths": [round(f.strength, 3) for f in used], "windows": [list(f.window) for f in used]})
        print(target, {k: round(v, 2) for k, v in m.items() if isinstance(v, float)}, m["passes"], rows[-1]["strengths"], rows[-1]["windows"], f"{time.time() - t0:.0f}s", flush=True)
    summary = {}
    for split in ("tuning", "held-out"):
        sel = [r for r in rows if r["split"] == split]
        summary[split] = {"targets": len(sel), "pass": sum(r["passes"] for r in sel), "mean_success": float(np.mean([r["success"] for r in sel])),
                          "mean_kept": float(np.mean([r["kept"] for r in sel]))}
    every = list(fits.values())
    meta = {"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo", "readers": args.readers, "seeds": args.seeds, "steps": args.steps, "guidance": args.guidance,
            "fits": len(every), "fit_unet_rows": every[0].unet_rows if every else 0,
            "whole_run_share": float(np.mean([f.window == (0.0, 1.0) for f in every])) if every else 0.0,
            "strength_range": [min(f.strength for f in every), max(f.strength for f in every)] if every else None,
            "wall_seconds": round(time.time() - t0, 1)}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    print(json.dumps({"meta": meta, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
