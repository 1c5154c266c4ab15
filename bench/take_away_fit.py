"""Contradicting prompts at the fitted take-away settings (`steer.take_away.fit_take_away`), judged like the matrix.

    python bench/take_away_fit.py [--kind colour|class] [--out docs/steering/independent/take_away/take_away_fit_colour.json]
    python bench/take_away_fit.py --kind class --readers layout --noise per-seed --seed-base 1000 --seeds 2 \
        --out docs/steering/take_away_fit_class_layout.json   # an earlier, shared-noise run

``--readers R``: the targets are learned read by R only (`learn_direction(readers=R)`), the sources (take-aways)
as before, so each call reads the target on its route and removes the source for every reader.

Every direction of the matrix is learned (`bench/steering_matrix.py`'s prompts, defaults). For each target, each of
its contradicting prompts ("a red sneaker" -> blue) is steered with ``[toward target, toward source]`` at
``fit.scales`` = ``[s, -min(s, 1)]`` under ``steering_negative=fit.negative`` (``--negative``: "replace", the default since
session 41, also turns the prompt's word for the source into the target's; "remove" as before), where ``s`` and the window are what `fit_take_away` found for that
(target, source) pair from the model alone (the source's own prompts rewritten with the target's words; no
classifier). Pass: success >= 0.5, kept >= 0.8, break <= 5 % (colour: the pixel measure too), as in the matrix.

Noise: as in the matrix since 2026-12-03 (``--noise per-image``), prompt i of draw s starts from seed
``seed_base + s * 8 + i``, so a cell is ``--seeds`` x 8 independent images; each ``--seed-base`` is judged in turn
with the same fits (they come from the model alone) and the rows are pooled (every set the same size: the mean).
``--noise per-seed --seed-base 1000 --seeds 2`` draws the earlier runs' noise (the 8 prompts of a seed shared it;
docs/steering/take_away_fit_*.json); their numbers come back only for directions learned as they were then (the
colour window of 2026-12-03 moved red and green to the whole run).
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
from steering_matrix import TUNING, C, K, cell_metrics, check_seed_bases, judge, passes, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.config import REMOVING, TAKE_AWAY_NEGATIVE  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.take_away import GRID, pair_scales  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=("colour", "class"), default="colour")
    ap.add_argument("--seeds", type=int, default=4, help="draws per prompt (a cell is seeds x 8 images per seed base)")
    ap.add_argument("--seed-base", type=int, nargs="+", default=[3000, 5000, 7000], help="one judged set per value, pooled")
    ap.add_argument("--noise", choices=("per-image", "per-seed"), default="per-image")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    ap.add_argument("--readers", default=None, help="learn the targets read only by these cross-attentions (layout, detail)")
    ap.add_argument("--grid", type=float, nargs="+", default=list(GRID), help="the fits' strengths (default: steer.take_away.GRID)")
    ap.add_argument("--fit-by", choices=("auto", "distance"), default="auto",
                    help="fit_take_away(fit_by=...): auto fits an appearance edit by colour; distance: as before session 39")
    ap.add_argument("--fit-margin", type=float, default=1.0,
                    help="a screen: apply each fit at this multiple of its strength (removal min(m*s, 1); default 1, as fitted)")
    ap.add_argument("--windows", nargs="+", default=None,
                    help="the fits' candidate windows as start,end (default: fit_take_away's own, by the kind of edit), e.g. 0,0.5 0.2,1")
    ap.add_argument("--remove-others", action="store_true",
                    help="a probe: take away every other value of the attribute as well as the source, at the fit's strength "
                         "(the fits themselves sample the source alone)")
    ap.add_argument("--negative", choices=REMOVING, default=TAKE_AWAY_NEGATIVE,
                    help="how the take-away acts, in the fits and the judged calls (default: the library's)")
    ap.add_argument("--targets", nargs="+", default=None, help="only these targets (default: every colour or class); every source is still learned")
    args = ap.parse_args()
    check_seed_bases(args.seed_base, args.noise, args.seeds)
    windows = [tuple(float(x) for x in w.split(",")) for w in args.windows] if args.windows else None
    out = Path(args.out or ROOT / "docs" / "steering" / "independent" / "take_away" / f"take_away_fit_{args.kind}.json")
    torch.set_num_threads(1)
    t0 = time.time()
    pipe, classifier = load_pipeline(args.model, "cpu"), load_classifier()
    values = C if args.kind == "colour" else K
    vectors = {}
    for v in values:
        P = prompts_for(args.kind, v)
        vectors[v] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=args.steps, guidance_scale=args.guidance, progress=False)
    chosen = args.targets or list(values)
    unknown = sorted(set(chosen) - set(values))
    if unknown:
        raise SystemExit(f"--targets: {unknown} are not {args.kind} targets ({', '.join(values)})")
    targets = dict(vectors)
    if args.readers:
        for v in chosen:
            P = prompts_for(args.kind, v)
            targets[v] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=args.steps, guidance_scale=args.guidance,
                                              readers=args.readers, progress=False)
    fits, rows, by_base = {}, [], {}
    for target in chosen:
        P = prompts_for(args.kind, target)
        prompts = [p for _ in range(args.seeds) for p in P["contra"]]
        sources = [source_of(args.kind, p) for p in prompts]
        for src in sorted(set(sources)):
            if (target, src) not in fits:
                fits[(target, src)] = pipe.fit_take_away(targets[target], vectors[src], grid=args.grid, guidance_scale=args.guidance,
                                                        fit_by=args.fit_by, windows=windows, negative=args.negative)
        for base in args.seed_base:
            count = len(P["contra"])
            seeds = [base + (s * count + i if args.noise == "per-image" else s) for s in range(args.seeds) for i in range(count)]
            by_base.setdefault(base, []).append({"target": target, **judged(pipe, classifier, args, target, targets, vectors, fits, prompts, sources, seeds)})
            print(base, target, {k: round(v, 2) for k, v in by_base[base][-1].items() if isinstance(v, float)}, f"{time.time() - t0:.0f}s", flush=True)
        pooled = {k: float(np.mean([by_base[b][-1][k] for b in args.seed_base])) for k, v in by_base[args.seed_base[0]][-1].items() if isinstance(v, float)}
        m = {**pooled, "passes": passes(pooled, "contra", args.kind)}
        per_source = {src: {k: round(float(np.mean([by_base[b][-1]["per_source"][src][k] for b in args.seed_base])), 3) for k in cells if k != "images"}
                      | {"images": sum(by_base[b][-1]["per_source"][src]["images"] for b in args.seed_base)}
                      for src, cells in by_base[args.seed_base[0]][-1]["per_source"].items()}
        used = [fits[(target, s)] for s in sorted(set(sources))]
        rows.append({"target": target, "split": "tuning" if target in TUNING[args.kind] else "held-out", **m,
                     "passes_per_set": [bool(by_base[b][-1]["passes"]) for b in args.seed_base],
                     "fits": {s: fits[(target, s)].to_dict() for s in sorted(set(sources))}, "per_source": per_source,
                     "strengths": [round(f.strength, 3) for f in used], "windows": [list(f.window) for f in used]})
        print(target, {k: round(v, 2) for k, v in m.items() if isinstance(v, float)}, m["passes"], rows[-1]["strengths"], rows[-1]["windows"], f"{time.time() - t0:.0f}s", flush=True)
    summary = {}
    for split in ("tuning", "held-out"):
        sel = [r for r in rows if r["split"] == split]
        summary[split] = {"targets": len(sel), "pass": sum(r["passes"] for r in sel), "mean_success": float(np.mean([r["success"] for r in sel])),
                          "mean_kept": float(np.mean([r["kept"] for r in sel])),
                          "pass_per_set": [sum(r["passes_per_set"][i] for r in sel) for i in range(len(args.seed_base))]}
    every = list(fits.values())
    meta = {"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo", "readers": args.readers, "seeds": args.seeds,
            "seed_bases": args.seed_base, "noise": args.noise, "negative": args.negative, "fit_margin": args.fit_margin, "remove_others": args.remove_others, "fit_by": args.fit_by, "images_per_cell": args.seeds * 8 * len(args.seed_base), "steps": args.steps, "guidance": args.guidance,
            "grid": args.grid, "windows": [list(w) for w in windows] if windows else "fit_take_away's own", "fits": len(every), "fit_unet_rows": every[0].unet_rows if every else 0,
            "whole_run_share": float(np.mean([f.window[1] == 1.0 for f in every])) if every else 0.0,  # windows to the run's end
            "strength_range": [min(f.strength for f in every), max(f.strength for f in every)] if every else None,
            "wall_seconds": round(time.time() - t0, 1)}
    out.write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows, "per_set": {str(b): r for b, r in by_base.items()}}, indent=1))
    print(json.dumps({"meta": meta, "summary": summary}, indent=1))


def judged(pipe, classifier, args, target, targets, vectors, fits, prompts, sources, seeds) -> dict:
    """The contradicting prompts of ``target`` from ``seeds``, steered at their pairs' fitted settings, judged against
    the unsteered prompts from the same seeds (`cell_metrics` and the pass)."""
    ref_j = judge(classifier, pipe(prompts, generator=generators(seeds), num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np").images.transpose(0, 3, 1, 2))
    images = np.zeros((len(prompts), 3, 32, 32), dtype=np.float32)
    for window in sorted({fits[(target, s)].window for s in sources}):
        idx = [i for i, s in enumerate(sources) if fits[(target, s)].window == window]
        names = sorted({sources[i] for i in idx} if not args.remove_others else set(vectors) - {target})
        scale = torch.zeros(len(idx), 1 + len(names))
        for r, i in enumerate(idx):
            add, remove = pair_scales(fits[(target, sources[i])].strength * args.fit_margin)
            scale[r, 0] = add
            # the row's own source; with --remove-others every other value of the attribute too (each only where the
            # prompt carries more of it than the open prompts: `steering_negative="remove"`)
            for n in names if args.remove_others else [sources[i]]:
                scale[r, 1 + names.index(n)] = remove
        out_images = pipe([prompts[i] for i in idx], generator=generators([seeds[i] for i in idx]), steering=[targets[target]] + [vectors[n] for n in names],
                          steering_scale=scale, steering_negative=args.negative, steering_window=window, num_inference_steps=args.steps,
                          guidance_scale=args.guidance, output_type="np").images
        images[idx] = out_images.transpose(0, 3, 1, 2)
    j, index = judge(classifier, images), (C if args.kind == "colour" else K).index(target)
    m = cell_metrics(j, ref_j, args.kind, index)
    m["passes"] = passes(m, "contra", args.kind)
    # each source's prompts alone (a few images each: for reading where a cell fails, not for a verdict)
    m["per_source"] = {}
    for src in sorted(set(sources)):
        rows = np.array([s == src for s in sources])
        m["per_source"][src] = {k: round(v, 3) for k, v in cell_metrics({k: v[rows] for k, v in j.items()}, {k: v[rows] for k, v in ref_j.items()},
                                                                            args.kind, index).items()} | {"images": int(rows.sum())}
    return m


if __name__ == "__main__":
    main()
