"""Grid of contradicting prompts steered toward a colour (docs/steering/contra_grid.png).

    python bench/contra_grid.py

Rows: targets blue, red, green, white (the matrix's 8 contradicting prompts each, seed 1000); columns: unsteered, the
source subtracted at 1.0, the source removed (``steering_negative="remove"``) at 1.0 and at 1.5; whole-run window.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from contra_removal import add_and_remove_scales, generators, source_of  # noqa: E402
from steering_matrix import C, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402

COLUMNS = ((0.0, "subtract"), (1.0, "subtract"), (1.0, "remove"), (1.5, "remove"))


def main() -> None:
    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu")
    vectors = {}
    for c in C:
        P = prompts_for("colour", c)
        vectors[c] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=20, guidance_scale=5.0, progress=False)
    rows = []
    for target in ("blue", "red", "green", "white"):
        prompts = prompts_for("colour", target)["contra"]
        sources = [source_of("colour", p) for p in prompts]
        names = sorted(set(sources))
        steering = [vectors[target]] + [vectors[n] for n in names]
        strip = []
        for s, negative in COLUMNS:
            scale = add_and_remove_scales(sources, names, s, negative)
            images = pipe(prompts, generator=generators([1000] * len(prompts)), steering=steering, steering_scale=scale,
                          steering_window=(0, 1), steering_negative=negative, num_inference_steps=20, guidance_scale=5.0,
                          output_type="np").images
            strip += [np.concatenate(list(images), 1), np.ones((32, 4, 3))]
        rows += [np.concatenate(strip[:-1], 1), np.ones((3, sum(x.shape[1] for x in strip[:-1]), 3))]
    grid = np.concatenate(rows[:-1], 0)
    Image.fromarray((grid.clip(0, 1) * 255).astype("uint8")).save(ROOT / "docs" / "steering" / "contra_grid.png")


if __name__ == "__main__":
    main()
