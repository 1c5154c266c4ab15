"""The path a slider's flip takes between its ends: does a stated colour turn into the target, or pass through a third?

    python bench/flip_path.py [--seeds 2 --seed-base 3000] [--schedules library plain late early upper none]
        [--out docs/steering/flip_path]

Each bundled colour slider (`assets/directions/*_slider.safetensors`: red/blue, green/red, blue/green) is slid from 0
to each end in eighths on the prompts that state the other end (`two_sided.pair_prompts`' first 8 forms, "a red
t-shirt" slid toward blue), seeds x 8 independent images a side (per-image noise, DDIM 20, guidance 5, the sliders'
recorded flips under ``steering_negative="replace"``). Per side and schedule:
- ``end``: success at the end (the classifier reads the target colour);
- ``third``: the share of images at 0.25-0.75 the classifier reads as neither the stated colour nor the target (also
  by the pixel measure, ``third_pixel``): the "olive between red and blue" of the slider gallery;
- ``path``: the median over images of the lit pixels' mean RGB path length from 0 to the end over its straight line
  (1: straight from the stated colour to the target).

Schedules of the word swap's amount ``a`` (the take-away's removal amount, `steer.engine.word_swap`), probes patched
into the session for this bench only: ``library`` (the blend by ``a``, norms interpolated), ``plain`` (the same without
the norm rescale), ``late`` / ``early`` (the whole swap over the last / first ``a`` of the target's window, else none),
``upper`` (amount ``2a - 1``: the first half of the slider removes and adds only), ``none`` (no swap: "remove" at the
replace flips' strengths). Session 42 (2026-12-05), reported, no decision attached: the probes were first looked at on
seed 1000 without a rule written (docs/steering.md "Session 42").
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from negative_prompt import save  # noqa: E402
from steering_matrix import C, judge  # noqa: E402
from two_sided import bench_setup, pair_prompts  # noqa: E402

import steer.engine.steering as engine_steering  # noqa: E402
from steer.engine.run import window_bounds  # noqa: E402
from steer.engine.word_swap import swap_words  # noqa: E402
from steer.vectors import SteeringVector  # noqa: E402

SLIDERS = (("red", "blue"), ("green", "red"), ("blue", "green"))
STEPS = [i / 8 for i in range(9)]
MIDDLE = slice(2, 7)  # 0.25 ... 0.75
SCHEDULES = ("library", "plain", "late", "early", "upper", "none")


def patch(schedule: str) -> None:
    """Install ``schedule`` in place of the library's swap (the text then steered at every call: some probes depend
    on the step, not only on its bucket)."""
    if schedule == "library":
        return
    def swapped(self, plan, h, adding):
        a = self.swap_amounts(plan, h.shape[0], adding)
        swap = self.word_swap
        if schedule in ("late", "early"):
            targets = swap.targets.repeat(a.shape[0] // swap.targets.shape[0])
            on = torch.zeros_like(a)
            for i in range(a.shape[0]):
                if a[i] > 0:
                    first, stop = window_bounds(self.windows[int(targets[i])] if self.windows else self.config.window, self.num_steps)
                    p = (self.step - first) / max(stop - first, 1)
                    on[i] = float(p >= 1 - float(a[i]) - 1e-9 if schedule == "late" else p < float(a[i]) - 1e-9)
            a = on
        elif schedule == "upper":
            a = (2 * a - 1).clamp(0, 1)
        elif schedule == "none":
            a = torch.zeros_like(a)
        elif schedule == "plain":
            reps = h.shape[0] // swap.mask.shape[0]
            w = a.clamp(0, 1)[:, None, None].to(h.dtype)
            mask = swap.mask.repeat(reps, 1)[..., None] & (w > 0)
            return torch.where(mask, (1 - w) * h + w * swap.states.repeat(reps, 1, 1).to(h.dtype), h)
        return swap_words(h, swap, a)

    engine_steering.SteeringSession._swap_words = swapped
    engine_steering.SteeringSession._text_reuse_key = lambda *_a, **_k: None


def lit_rgb(images: np.ndarray) -> np.ndarray:
    """(N, 3) mean RGB of each image's lit pixels (the pixel judge's)."""
    lit = images.max(1) > 0.25
    return (images * lit[:, None]).sum((2, 3)) / np.maximum(lit.sum((1, 2)), 1)[:, None]


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=3000)
    ap.add_argument("--schedules", nargs="+", choices=SCHEDULES, default=list(SCHEDULES))
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "flip_path"))
    args = ap.parse_args()
    t0 = time.time()
    _, classifier, run, _ = bench_setup(None, args.seeds, args.seed_base, "per-image")
    library = (engine_steering.SteeringSession._swap_words, engine_steering.SteeringSession._text_reuse_key)
    cells, grid_rows = [], []
    for schedule in args.schedules:
        engine_steering.SteeringSession._swap_words, engine_steering.SteeringSession._text_reuse_key = library
        patch(schedule)
        for pos, neg in SLIDERS:
            slider = SteeringVector.load(ROOT / "assets" / "directions" / f"{pos}_{neg}_slider.safetensors")
            forms = pair_prompts("colour", pos, neg)
            for side, target, source, sign, prompts in (("negative", neg, pos, -1.0, forms["positive"][:8]),
                                                        ("positive", pos, neg, 1.0, forms["negative"][:8])):
                images = run.sample(prompts, [sign * s for s in STEPS], steering=slider)
                per = len(prompts) * args.seeds
                judged = [judge(classifier, images[i * per:(i + 1) * per]) for i in range(len(STEPS))]
                s, t = C.index(source), C.index(target)
                middle = np.stack([j["colour"] for j in judged][MIDDLE])
                middle_pixel = np.stack([j["pixel_colour"] for j in judged][MIDDLE])
                rgb = np.stack([lit_rgb(images[i * per:(i + 1) * per]) for i in range(len(STEPS))])  # (steps, N, 3)
                path = np.linalg.norm(np.diff(rgb, axis=0), axis=-1).sum(0) / np.maximum(np.linalg.norm(rgb[-1] - rgb[0], axis=-1), 1e-6)
                cells.append({"schedule": schedule, "slider": f"{pos}_{neg}", "side": side, "source": source, "target": target,
                              "success": [round(float((j["colour"] == t).mean()), 3) for j in judged],
                              "end": round(float((judged[-1]["colour"] == t).mean()), 3),
                              "third": round(float(((middle != s) & (middle != t)).mean()), 3),
                              "third_pixel": round(float(((middle_pixel != s) & (middle_pixel != t)).mean()), 3),
                              "path": round(float(np.median(path)), 3)})
                grid_rows.append(np.concatenate([images[i * per] for i in range(len(STEPS))], axis=2))
        print(f"{schedule}: {time.time() - t0:.0f} s", flush=True)
    summary = {}
    for schedule in args.schedules:
        rows = [c for c in cells if c["schedule"] == schedule]
        summary[schedule] = {k: round(float(np.mean([c[k] for c in rows])), 3) for k in ("end", "third", "third_pixel", "path")}
    results = {"meta": {"seeds": [args.seed_base, args.seed_base + args.seeds * 8 - 1], "noise": "per-image", "steps": STEPS,
                        "sliders": [f"{p}_{n}" for p, n in SLIDERS]},
               "summary": summary, "cells": cells}
    save(args, Path(__file__).name, t0, results, grid_rows,
         f"per schedule ({', '.join(args.schedules)}) and slider side (red_blue -, +, green_red -, +, blue_green -, +), "
         "the first image from 0 to the end in eighths")


if __name__ == "__main__":
    main()
