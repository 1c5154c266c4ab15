"""Grids of contradicting prompts steered toward another value (docs/steering/contra_grid.png, contra_grid_class.png).

    python bench/contra_grid.py [--kind colour|class] [--model assets/models/demo-4x --out docs/steering/demo4x/contra_grid_class.png]

Colour: rows blue, red, green, white (the matrix's 8 contradicting prompts each, seed 1000); columns: unsteered, the
source subtracted at 1.0, the source removed (``steering_negative="remove"``) at 1.0 and at 1.5; whole-run window.
Class: rows bag, trouser, sneaker, dress; columns: unsteered, the target alone at 1.0, the source removed at 1.0 with
the removal stopping with the window, and going on to the end of the run (the directions' recommended removal
window); the directions' own window (0, 0.5). Both end with a column at each (target, source) pair's fitted strength
and window (`steer.take_away.fit_take_away`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from contra_removal import add_and_remove_scales, generators, source_of  # noqa: E402
from steering_matrix import C, K, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402

# per kind: rows, and columns as (scale, negative, remove the source?, extra steering options)
GRIDS = {
    "colour": (("blue", "red", "green", "white"), "contra_grid.png", (
        (0.0, "subtract", True, {"steering_window": (0, 1)}),
        (1.0, "subtract", True, {"steering_window": (0, 1)}),
        (1.0, "remove", True, {"steering_window": (0, 1)}),
        (1.5, "remove", True, {"steering_window": (0, 1)}),
        (None, "remove", True, {}),
    )),
    "class": (("bag", "trouser", "sneaker", "dress"), "contra_grid_class.png", (
        (0.0, "subtract", False, {}),
        (1.0, "subtract", False, {}),
        (1.0, "remove", True, {"steering_removal_window": (0, 0.5)}),
        (1.0, "remove", True, {}),
        (None, "remove", True, {}),
    )),
}


def fitted(pipe, vector, away, prompt: str) -> np.ndarray:
    """``prompt`` (seed 1000) with ``away`` replaced by ``vector`` at the pair's fitted strength and window."""
    fit = pipe.fit_take_away(vector, away, guidance_scale=5.0)
    return pipe(prompt, generator=generators([1000]), steering=[vector, away], num_inference_steps=20, guidance_scale=5.0, output_type="np",
                **fit.options()).images[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", choices=tuple(GRIDS), default="colour")
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    ap.add_argument("--out", default=None, help="PNG path (default: docs/steering/ and the kind's file name)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, "cpu")
    targets, out, columns = GRIDS[args.kind]
    vectors = {}
    for value in C if args.kind == "colour" else K:
        P = prompts_for(args.kind, value)
        vectors[value] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=20, guidance_scale=5.0, progress=False)
    rows = []
    for target in targets:
        prompts = prompts_for(args.kind, target)["contra"]
        sources = [source_of(args.kind, p) for p in prompts]
        names = sorted(set(sources))
        strip = []
        for s, negative, remove_source, options in columns:
            if s is None:  # each row at its (target, source) pair's fitted strength and window
                images = np.stack([fitted(pipe, vectors[target], vectors[src], p) for p, src in zip(prompts, sources, strict=True)])
            else:
                if remove_source:
                    steering, scale = [vectors[target]] + [vectors[n] for n in names], add_and_remove_scales(sources, names, s, negative)
                else:
                    steering, scale = vectors[target], s
                images = pipe(prompts, generator=generators([1000] * len(prompts)), steering=steering, steering_scale=scale,
                              steering_negative=negative, num_inference_steps=20, guidance_scale=5.0, output_type="np", **options).images
            strip += [np.concatenate(list(images), 1), np.ones((32, 4, 3))]
        rows += [np.concatenate(strip[:-1], 1), np.ones((3, sum(x.shape[1] for x in strip[:-1]), 3))]
    grid = np.concatenate(rows[:-1], 0)
    Image.fromarray((grid.clip(0, 1) * 255).astype("uint8")).save(args.out or ROOT / "docs" / "steering" / out)


if __name__ == "__main__":
    main()
