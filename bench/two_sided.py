"""A slider between two attributes: does -1 reach the negatives' attribute, +1 the positives', monotonically, keeping
the rest?

    python bench/two_sided.py [--out docs/steering/two_sided] [--seeds 2 --seed-base 1000]

Protocol (fixed before the first run, 2026-12-02; the matrix's tuning / held-out split kept). Pairs (positive side,
negative side), learned with the defaults (guidance 5, 20 steps) from the matrix's prompt forms ("a red t-shirt", ...
vs "a blue t-shirt", ...; classes "a red dress", ... vs "a red sneaker", ...):
- tuning: colours (red, blue), (green, red), (blue, green); classes (trouser, bag);
- held-out: colours (orange, cyan), (yellow, purple), (white, orange); classes (dress, sneaker), (coat, sandal).
Each pair's slider is measured on the matrix's 8 attribute-open prompts of its positive side ("a t-shirt", "a red
item") x the seeds, at scales -1 ... 1 in steps of 0.25, for:
- ``two-sided``: ``learn_direction(pos, neg, two_sided=True)`` (each side calibrated against the prompts left open);
- ``one-sided``: ``learn_direction(pos, neg)`` (pos - neg, calibrated toward the positives; -1 subtracts it);
- ``sega``: SEGA (diffusers' `SemanticStableDiffusionPipeline`) editing toward the side's word at 8 x |scale|, the
  matrix's SEGA scale (its 1.0);
- ``rewrite``: the model's own prompt edit toward each side ("a t-shirt" -> "a blue t-shirt"), the ceiling (at +-1).
Judges and the pass rule are the matrix's (success >= 0.8 by the classifier and, colours, the pixel measure; the other
attribute kept >= 0.8; break <= 5 %). A side passes where its end (+1 or -1) passes and its success never falls by more
than one image from 0 toward that end (`non_decreasing`); a slider passes where both sides do. Reported per split, no
decision attached (the two-sided learning composes the calibrated one-sided recipe; nothing in it was tuned here).
~10 min on the demo model, 1 thread.

``--contra`` (added after the open-prompt runs, 2026-12-02; reported, no decision attached): the same pairs and
sliders on prompts that state the other side ("a red t-shirt" slid to -1 toward blue: the pair's positive prompt forms
for the negative side and the negatives' for the positive side, the first 8 of each), at +-1 with the sides alone
(``sides only``: no flip recorded, the slider before session 24) and as learned (``slider``: since session 24 a
slider records per side the strength and window `pipe.fit_take_away` fits from the model alone, guidance 5, and
flips rows whose prompt states the other side with it; the first run of this mode, session 23, called that fit
explicitly as ``take-away``, with the same fits), against the prompt rewrite. The matrix's contradicting-prompt rule: success >= 0.5 (and
the pixel measure for colours), the other attribute kept >= 0.8, break <= 5 %. ``--sweep`` (session 41) also slides
toward each end in quarters (0, 0.25, 0.5, 0.75, 1) on those prompts: the success and target probability per scale,
their Spearman and `non_decreasing`, as the open runs report them. ``--flip-negative remove`` learns the flips
without the word swap (session 40's), for comparison.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from negative_prompt import save  # noqa: E402
from steering_matrix import C, K, Runner, cell_metrics, judge, non_decreasing, passes, spearman  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.sliders import without_flips  # noqa: E402

PAIRS = {
    "tuning": [("colour", "red", "blue"), ("colour", "green", "red"), ("colour", "blue", "green"), ("class", "trouser", "bag")],
    "held-out": [("colour", "orange", "cyan"), ("colour", "yellow", "purple"), ("colour", "white", "orange"),
                 ("class", "dress", "sneaker"), ("class", "coat", "sandal")],
}
SCALES = (-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0)
GRID_SCALES = (-1.0, -0.5, 0.0, 0.5, 1.0)
SEGA_SCALE = 8.0


SWEEP = [0.0, 0.25, 0.5, 0.75]  # --contra --sweep: the slider toward the end below 1, the prompt as written at 0


def pair_prompts(kind: str, pos: str, neg: str) -> dict[str, list[str]]:
    """The learning sets and the open prompts of a pair, in the matrix's forms."""
    if kind == "colour":
        t = C.index(pos)
        return {"positive": [f"a {pos} {k}" for k in K], "negative": [f"a {neg} {k}" for k in K],
                "open": [f"a {K[(i + t) % 10]}" for i in range(8)]}
    t = K.index(pos)
    return {"positive": [f"a {c} {pos}" for c in C], "negative": [f"a {c} {neg}" for c in C],
            "open": [f"a {C[(i + t) % 8]} item" for i in range(8)]}


def rewritten(kind: str, side: str, prompts: list[str]) -> list[str]:
    return [p.replace("a ", f"a {side} ", 1) if kind == "colour" else p.replace(" item", f" {side}") for p in prompts]


def bench_setup(model: str | None, seeds: int, seed_base: int, noise: str = "per-seed"):
    """(pipe, classifier, runner, learning kwargs) as the slider benches use them: 1 torch thread, DDIM 20, guidance 5
    (``noise``: `steering_matrix.Runner`'s; per-seed, every slider run before 2026-12-04, so they reproduce)."""
    import torch

    torch.set_num_threads(1)
    pipe, classifier = load_pipeline(model, "cpu", progress=False), load_classifier()
    pipe.set_progress_bar_config(disable=True)
    run = Runner(pipe, classifier, steps=20, guidance=5.0, seeds=seeds, seed_base=seed_base, noise=noise)
    return pipe, classifier, run, dict(num_inference_steps=20, guidance_scale=5.0, progress=False)


def main() -> None:
    import argparse


    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "two_sided"))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--contra", action="store_true", help="prompts that state the other side (see above)")
    ap.add_argument("--sweep", action="store_true",
                    help="with --contra: the slider also at +-0.25, 0.5, 0.75 on the stated prompts (success and target "
                         "probability per scale from 0 to the end, their Spearman and `non_decreasing`)")
    ap.add_argument("--flip-negative", choices=("replace", "remove"), default=None,
                    help="with --contra: learn the sliders' flips under this steering_negative (default: the library's; "
                         "remove: as before session 41, without the word swap)")
    ap.add_argument("--noise", choices=("per-seed", "per-image"), default="per-seed",
                    help="per-seed (every run before 2026-12-04): the 8 prompts of a seed share its noise; per-image: every "
                         "image its own, as the matrix since 2026-12-03 (a side is seeds x 8 independent images)")
    args = ap.parse_args()
    if args.out == str(ROOT / "docs" / "steering" / "two_sided"):  # the default: per-image runs beside, not over, the per-seed ones
        base = Path(args.out) / "independent" / f"seeds{args.seed_base}" if args.noise == "per-image" else Path(args.out)
        args.out = str(base / "contra" if args.contra else base)
    t0 = time.time()
    pipe, classifier, run, kw = bench_setup(args.model, args.seeds, args.seed_base, args.noise)
    if args.contra:
        if args.flip_negative is not None:  # the flips fitted while learning, under the negative asked for
            import functools

            import steer.learn

            steer.learn.fit_take_away = functools.partial(steer.learn.fit_take_away, negative=args.flip_negative)
        return contra(args, pipe, classifier, run, kw, t0)
    n = len(SCALES)

    sliders, grid_rows, learned = [], [], []
    for split, pairs in PAIRS.items():
        for kind, pos, neg in pairs:
            P = pair_prompts(kind, pos, neg)
            index = (C if kind == "colour" else K).index
            rows_before = run.rows
            two = pipe.learn_direction(P["positive"], P["negative"], two_sided=True, **kw)
            learn_rows = run.rows - rows_before
            one = pipe.learn_direction(P["positive"], P["negative"], **kw)
            learned.append({"pair": [pos, neg], "unet_rows_two_sided": learn_rows,
                            **{f"{name}_strength": round(v.metadata["calibration"]["strength"], 4)
                               for name, v in (("positive_side", two), ("negative_side", two.opposite), ("one_sided", one))},
                            **{f"{name}_window": v.metadata["recommended"]["window"] for name, v in (("positive_side", two), ("negative_side", two.opposite))}})
            per = len(P["open"]) * args.seeds
            images = {
                "two-sided": run.sample(P["open"], list(SCALES), steering=two),
                "one-sided": run.sample(P["open"], list(SCALES), steering=one),
                "sega": np.concatenate([run.sample(P["open"]) if s == 0 else run.sega(P["open"], pos if s > 0 else neg, SEGA_SCALE * abs(s))
                                        for s in SCALES]),
            }
            ref = judge(classifier, images["two-sided"][SCALES.index(0.0) * per:(SCALES.index(0.0) + 1) * per])
            rewrite = {side: run.sample(rewritten(kind, side, P["open"])) for side in (pos, neg)}
            for method, imgs in images.items():
                judged = [judge(classifier, imgs[i * per:(i + 1) * per]) for i in range(n)]
                sides = {}
                for side, target, ends in (("positive", pos, SCALES[n // 2:]), ("negative", neg, SCALES[n // 2::-1])):
                    curve = [cell_metrics(judged[SCALES.index(s)], ref, kind, index(target)) for s in ends]
                    end = curve[-1]
                    sides[side] = {"target": target, **end, "curve": [round(c["success"], 3) for c in curve],
                                   "monotone": non_decreasing([c["success"] for c in curve], per),
                                   "pass": passes(end, "open", kind) and non_decreasing([c["success"] for c in curve], per)}
                sliders.append({"split": split, "kind": kind, "pair": [pos, neg], "method": method, **sides,
                                "pass": sides["positive"]["pass"] and sides["negative"]["pass"]})
            sides = {side: {"target": target, **cell_metrics(judge(classifier, rewrite[target]), ref, kind, index(target))}
                     for side, target in (("positive", pos), ("negative", neg))}
            for s in sides.values():
                s["pass"] = passes(s, "open", kind)
            sliders.append({"split": split, "kind": kind, "pair": [pos, neg], "method": "rewrite", **sides,
                            "pass": sides["positive"]["pass"] and sides["negative"]["pass"]})
            for method, scales in (("one-sided", (-1.0,)), ("sega", (-1.0,)), ("two-sided", GRID_SCALES), ("sega", (1.0,))):
                for s in scales:
                    i = SCALES.index(s)
                    grid_rows.append(np.concatenate(list(images[method][i * per:i * per + 8]), axis=2))
            print(f"{pos} <-> {neg}: {time.time() - t0:.0f} s", flush=True)

    results = {"meta": {"seeds": [args.seed_base + s for s in range(args.seeds)], "noise": args.noise, "scales": list(SCALES), "sega_scale": SEGA_SCALE,
                        "pairs": {k: [list(p) for p in v] for k, v in PAIRS.items()}},
               "summary": summarise(sliders), "learned": learned, "sliders": sliders}
    save(args, Path(__file__).name, t0, results, grid_rows,
         "per pair 8 rows (first seed, the pair's 8 open prompts): one-sided at -1, SEGA at -1, two-sided at -1, -0.5, 0, "
         f"0.5, 1, SEGA at +1; pairs {', '.join(f'{p} <-> {q}' for v in PAIRS.values() for _, p, q in v)}")


def contra(args, pipe, classifier, run, kw: dict, t0: float) -> None:
    """``--contra``: each side slid to on prompts that state the other one, as the slider is and with the other side
    taken away at the fitted strength and window, against the prompt rewrite."""
    cells, grid_rows, fits = [], [], []
    for split, pairs in PAIRS.items():
        for kind, pos, neg in pairs:
            P = pair_prompts(kind, pos, neg)
            index = (C if kind == "colour" else K).index
            slider = pipe.learn_direction(P["positive"], P["negative"], two_sided=True, **kw)
            plain = without_flips(slider)  # the sides alone (a slider learned with flip_stated=False)
            for side, target, source, sign, prompts, toward in (
                    ("negative", neg, pos, -1.0, P["positive"][:8], slider.opposite),
                    ("positive", pos, neg, 1.0, P["negative"][:8], slider.one_sided)):
                per = len(prompts) * args.seeds
                ref = judge(classifier, run.sample(prompts))
                flip = toward.metadata["flip"]
                fits.append({"pair": [pos, neg], "side": side, **{k: flip[k] for k in ("words", "strength", "window", "distance")}})
                images = {
                    "sides only": run.sample(prompts, steering=plain, steering_scale=sign),
                    "slider": run.sample(prompts, steering=slider, steering_scale=sign),
                    "rewrite": run.sample([p.replace(f" {source}", f" {target}", 1) for p in prompts]),
                }
                for method, imgs in images.items():
                    r = cell_metrics(judge(classifier, imgs), ref, kind, index(target))
                    cells.append({"split": split, "kind": kind, "pair": [pos, neg], "side": side, "target": target, "method": method,
                                  **r, "pass": passes(r, "contra", kind)})
                if args.sweep:  # 0 (the prompt as written) -> the end, in quarters: does the flip move monotonically?
                    curve = [cell_metrics(ref, ref, kind, index(target))]
                    curve += [cell_metrics(judge(classifier, run.sample(prompts, steering=slider, steering_scale=sign * s)), ref, kind, index(target))
                              for s in SWEEP[1:]]
                    curve.append(cells[-2])  # the slider at the end, judged above
                    cells[-2]["sweep"] = {"scales": [*SWEEP, 1.0], "success": [round(c["success"], 3) for c in curve],
                                          "p_target": [round(c["p_target"], 3) for c in curve],
                                          "rho_success": spearman([*SWEEP, 1.0], [c["success"] for c in curve]),
                                          "rho_p": spearman([*SWEEP, 1.0], [c["p_target"] for c in curve]),
                                          "non_decreasing": non_decreasing([c["success"] for c in curve], per)}
                grid_rows += [np.concatenate(list(x[:8]), axis=2) for x in images.values()]
                assert per == len(images["slider"])
            print(f"{pos} <-> {neg}: {time.time() - t0:.0f} s", flush=True)
    summary = {}
    for split in PAIRS:
        for method in ("sides only", "slider", "rewrite"):
            rows = [c for c in cells if c["split"] == split and c["method"] == method]
            summary[f"{split}/{method}"] = {"sides": f"{sum(c['pass'] for c in rows)}/{len(rows)}",
                                            "success": round(float(np.mean([c["success"] for c in rows])), 3),
                                            "kept": round(float(np.mean([c["kept"] for c in rows])), 3)}
        swept = [c["sweep"] for c in cells if c["split"] == split and "sweep" in c]
        if swept:
            summary[f"{split}/slider sweep"] = {"non_decreasing": f"{sum(w['non_decreasing'] for w in swept)}/{len(swept)}",
                                                "median_rho_success": round(float(np.median([w["rho_success"] for w in swept])), 3),
                                                "median_rho_p": round(float(np.median([w["rho_p"] for w in swept])), 3),
                                                "success_at": [round(float(np.mean([w["success"][i] for w in swept])), 3) for i in range(5)]}
    results = {"meta": {"seeds": [args.seed_base + s for s in range(args.seeds)], "noise": args.noise, "contra": True,
                        "sweep": args.sweep, "flip_negative": args.flip_negative or "the library's",
                        "pairs": {k: [list(p) for p in v] for k, v in PAIRS.items()}},
               "summary": summary, "fits": fits, "cells": cells}
    save(args, Path(__file__).name, t0, results, grid_rows,
         "per pair and side (the negative side first) 3 rows (first seed, 8 prompts stating the other side): the sides alone "
         "at +-1 (no flip), the slider at +-1 (flipping with its recorded fit), the prompt rewrite")


def summarise(sliders: list[dict]) -> dict:
    """Per split and method: sliders passing (both sides), sides passing, mean success and kept at the ends."""
    out = {}
    for split in PAIRS:
        for method in ("two-sided", "one-sided", "sega", "rewrite"):
            rows = [r for r in sliders if r["split"] == split and r["method"] == method]
            ends = [r[side] for r in rows for side in ("positive", "negative")]
            out[f"{split}/{method}"] = {
                "sliders": f"{sum(r['pass'] for r in rows)}/{len(rows)}",
                "sides": f"{sum(e['pass'] for e in ends)}/{len(ends)}",
                "negative side": f"{sum(r['negative']['pass'] for r in rows)}/{len(rows)}",
                "success": round(float(np.mean([e["success"] for e in ends])), 3),
                "kept": round(float(np.mean([e["kept"] for e in ends])), 3),
                "break": round(float(np.mean([e["break"] for e in ends])), 3),
            }
    return out


if __name__ == "__main__":
    main()
