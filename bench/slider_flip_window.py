"""Screen (session 24, decided on the tuning pairs): a slider's flip of prompts that state its other side, fitted only
over the side's own window vs with the window chosen among (0, 0.5) and the whole run (`fit_take_away`'s default).
Fitting over the side's window would let the flip share the call's window; it flips fewer, so the flip keeps its own.

    python bench/slider_flip_window.py   # 279 s, 1 thread; docs/steering/two_sided/flip_window.json

The pairs, prompts, seeds, judges and contradicting rule are `bench/two_sided.py --contra`'s.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import C, K, cell_metrics, judge, passes  # noqa: E402
from two_sided import PAIRS, bench_setup, pair_prompts  # noqa: E402

VARIANTS = ("chosen", "own")


def main() -> None:

    t0 = time.time()
    pipe, classifier, run, kw = bench_setup(None, 2, 1000)
    cells = []
    for split, pairs in PAIRS.items():
        for kind, pos, neg in pairs:
            P = pair_prompts(kind, pos, neg)
            index = (C if kind == "colour" else K).index
            slider = pipe.learn_direction(P["positive"], P["negative"], two_sided=True, flip_stated=False, **kw)
            for side, target, prompts, toward, away in (
                    ("negative", neg, P["positive"][:8], slider.opposite, slider.one_sided),
                    ("positive", pos, P["negative"][:8], slider.one_sided, slider.opposite)):
                ref = judge(classifier, run.sample(prompts))
                own = tuple(toward.metadata["recommended"]["window"])
                for variant, windows in zip(VARIANTS, (((0.0, 0.5), (0.0, 1.0)), (own,)), strict=True):
                    fit = pipe.fit_take_away(toward, away, guidance_scale=5.0, windows=windows)
                    r = cell_metrics(judge(classifier, run.sample(prompts, steering=[toward, away], **fit.options())), ref, kind, index(target))
                    cells.append({"split": split, "pair": [pos, neg], "side": side, "variant": variant, "strength": round(fit.strength, 3),
                                  "window": list(fit.window), "own": list(own), "distance": round(fit.distance, 3), **r,
                                  "pass": passes(r, "contra", kind)})
            print(f"{pos} <-> {neg}: {time.time() - t0:.0f} s", flush=True)
    summary = {}
    for split in PAIRS:
        for variant in VARIANTS:
            rows = [c for c in cells if c["split"] == split and c["variant"] == variant]
            summary[f"{split}/{variant}"] = {"sides": f"{sum(c['pass'] for c in rows)}/{len(rows)}",
                                             "success": round(float(np.mean([c["success"] for c in rows])), 3),
                                             "kept": round(float(np.mean([c["kept"] for c in rows])), 3)}
    print(json.dumps(summary, indent=1))
    out = ROOT / "docs" / "steering" / "two_sided" / "flip_window.json"
    out.write_text(json.dumps({"meta": {"command": "python bench/slider_flip_window.py", "seconds": round(time.time() - t0, 1),
                                        "machine": "x86_64 CPU, 1 thread", "seeds": [1000, 1001]},
                               "summary": summary, "cells": cells}, indent=1))


if __name__ == "__main__":
    main()
