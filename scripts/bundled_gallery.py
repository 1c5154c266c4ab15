"""Draw every calibrated bundled direction at strength 1 on attribute-open prompts (assets/directions/gallery.png).

    python scripts/bundled_gallery.py [--out assets/directions/gallery.png]
    python scripts/bundled_gallery.py --model assets/models/demo-4x   # -> assets/models/demo-4x/directions/gallery.png

Rows: the unsteered prompts, then each ``to_<colour>`` direction on "a t-shirt", "a sneaker", ... (first block) and
each ``to_<class>`` direction on "a red item", "a green item", ... (second block), at ``steering_scale=1.0`` with the
direction's recommended settings; the demo model (or ``--model``, with the directions shipped for it), seed 1000 for every image, DDIM 20, guidance 5 (the directions'
calibration settings). The legacy ``*_to_blue`` files are left out. A row label column names the direction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steer.assets import bundled_directions, directions_dir  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab import data as D  # noqa: E402
from steer.vectors import SteeringVector  # noqa: E402

COLOUR_PROMPTS = ["a t-shirt", "a sneaker", "a bag", "a dress", "a pullover", "a trouser", "an ankle boot", "a coat"]
CLASS_PROMPTS = ["a red item", "an orange item", "a yellow item", "a green item", "a cyan item", "a blue item", "a purple item", "a white item"]
LABEL_WIDTH, CELL = 92, 64


def sample(pipe, prompts: list[str], vector: SteeringVector | None) -> np.ndarray:
    steer = {} if vector is None else {"steering": vector, "steering_scale": 1.0}
    images = pipe(prompts, generator=[torch.Generator().manual_seed(1000) for _ in prompts], num_inference_steps=20,
                  guidance_scale=5.0, output_type="np", **steer).images
    return np.concatenate(list(images), axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    ap.add_argument("--out", default=None, help="default: gallery.png beside the model's directions")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, "cpu")
    out = args.out or str(directions_dir(args.model) / "gallery.png")
    found = {name: path for name, path in bundled_directions(args.model).items() if name.startswith("to_")}
    colours = [n for n in found if n[3:] in D.COLOUR_NAMES]
    classes = [n for n in found if n not in colours]
    rows: list[tuple[str, np.ndarray]] = []
    for names, prompts in ((colours, COLOUR_PROMPTS), (classes, CLASS_PROMPTS)):
        rows.append(("unsteered", sample(pipe, prompts, None)))
        rows += [(name, sample(pipe, prompts, SteeringVector.load(found[name]))) for name in names]
    side = rows[0][1].shape[0]
    canvas = Image.new("RGB", (LABEL_WIDTH + len(COLOUR_PROMPTS) * CELL, len(rows) * (CELL + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, strip) in enumerate(rows):
        image = Image.fromarray((strip.clip(0, 1) * 255).astype(np.uint8)).resize((strip.shape[1] * CELL // side, CELL), Image.NEAREST)
        canvas.paste(image, (LABEL_WIDTH, i * (CELL + 2)))
        draw.text((4, i * (CELL + 2) + CELL // 2 - 6), label, fill="black")
    canvas.save(out, optimize=True)
    print("wrote", out, f"({len(rows)} rows)")


if __name__ == "__main__":
    main()
