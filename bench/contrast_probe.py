"""Which negatives make a direction that edits: other values of the attribute, or the same prompts with it left open?

    python bench/contrast_probe.py [--out docs/steering/contrast_probe.json]

Each recipe is learned with `learn_direction`'s defaults (text preset, self-calibrated) and applied at scales 0.5,
1.0 and 1.5 to the matrix's 8 colour-open prompts ("a t-shirt", "a trouser", ...) x 2 seeds, judged like the matrix
(classifier and pixel colour success toward blue, class kept). The calibration's own best relative distance is
reported beside it: it is what `steer.calibrate.fit_advice` reads to warn about a recipe that will barely edit.
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

from steering_matrix import C, K, Runner, cell_metrics, judge  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402

BLUE_4 = ["a blue t-shirt", "a blue sneaker", "a blue bag", "a blue coat"]
RECIPES = {  # name: (positive, negative)
    "README before: other colours": (BLUE_4, ["a red t-shirt", "a green sneaker", "a yellow bag", "a white coat"]),
    "README now: left open": (BLUE_4, ["a t-shirt", "a sneaker", "a bag", "a coat"]),
    "CLI before: a blue item vs a red item": (["a blue item"], ["a red item"]),
    "CLI now: left open": (["a blue sneaker", "a blue bag", "a blue dress"], ["a sneaker", "a bag", "a dress"]),
}
SCALES = (0.5, 1.0, 1.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "contrast_probe.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, classifier = load_pipeline(None, "cpu"), load_classifier()
    run = Runner(pipe, classifier, 20, 5.0, 2)
    prompts = [f"a {k}" for k in K[:8]]
    ref = judge(classifier, run.sample(prompts))
    t0, rows = time.time(), []
    for name, (positive, negative) in RECIPES.items():
        v = pipe.learn_direction(positive, negative, progress=False)
        cal = v.metadata["calibration"]
        cells = {}
        for scale in SCALES:
            m = cell_metrics(judge(classifier, run.sample(prompts, [scale], steering=v)), ref, "colour", C.index("blue"))
            cells[str(scale)] = {k: round(m[k], 4) for k in ("success", "pixel_success", "kept")}
        rows.append({"recipe": name, "positive": positive, "negative": negative, "distance": cal["distance"], "strength": cal["strength"], "cells": cells})
        print(f"{name:40s} distance {cal['distance']:.2f}", "  ".join(f"{s}: {c['success']:.2f}/{c['pixel_success']:.2f}/{c['kept']:.2f}" for s, c in cells.items()), flush=True)
    meta = {"command": "python bench/contrast_probe.py", "machine": f"{platform.machine()} CPU, 1 thread", "seconds": round(time.time() - t0, 1),
            "prompts": prompts, "seeds": 2, "steps": 20, "guidance": 5.0, "judged": "success / pixel success / kept"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
