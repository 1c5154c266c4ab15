"""Draw every calibrated bundled direction at strength 1 on attribute-open prompts (assets/directions/gallery.png), or
every bundled slider across its range (``--sliders``: assets/directions/sliders.png).

    python scripts/bundled_gallery.py [--out assets/directions/gallery.png]
    python scripts/bundled_gallery.py --model assets/models/demo-4x   # -> assets/models/demo-4x/directions/gallery.png

Rows: the unsteered prompts, then each ``to_<colour>`` direction on "a t-shirt", "a sneaker", ... (first block) and
each ``to_<class>`` direction on "a red item", "a green item", ... (second block), at ``steering_scale=1.0`` with the
direction's recommended settings; the demo model (or ``--model``, with the directions shipped for it), seed 1000 for every image, DDIM 20, guidance 5 (the directions'
calibration settings). The legacy ``*_to_blue`` files are left out. A row label column names the direction.

    python scripts/bundled_gallery.py --sliders   # -> assets/directions/sliders.png

With ``--sliders``: one row per ``*_slider`` direction shipped for the model: its first open prompt ("a t-shirt"), its
first positive prompt ("a red t-shirt": the + end stated) and its first negative prompt ("a blue t-shirt": the - end
stated), each at ``steering_scale`` -1, -0.5, 0, 0.5, 1 with the slider's recommended settings (a stated end is
turned at the other end and held at its own); seed 1000, DDIM 20, guidance 5.
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


SCALES = (-1.0, -0.5, 0.0, 0.5, 1.0)
SLIDER_LABEL_WIDTH, SLIDER_CELL, GAP = 132, 48, 8


def strip(pipe, prompt: str, slider: SteeringVector) -> np.ndarray:
    images = pipe([prompt] * len(SCALES), generator=[torch.Generator().manual_seed(1000) for _ in SCALES], num_inference_steps=20,
                  guidance_scale=5.0, output_type="np", steering=slider, steering_scale=list(SCALES)).images
    return np.concatenate(list(images), axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    ap.add_argument("--sliders", action="store_true", help="draw the bundled sliders across their range instead")
    ap.add_argument("--out", default=None, help="default: gallery.png (sliders.png) beside the model's directions")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, "cpu")
    pipe.set_progress_bar_config(disable=True)
    out = args.out or str(directions_dir(args.model) / ("sliders.png" if args.sliders else "gallery.png"))
    canvas, count = (slider_gallery if args.sliders else direction_gallery)(pipe, args.model)
    canvas.save(out, optimize=True)
    print("wrote", out, f"({count} rows)")


def direction_gallery(pipe, model: str | None) -> tuple[Image.Image, int]:
    found = {name: path for name, path in bundled_directions(model).items() if name.startswith("to_")}
    colours = [n for n in found if n[3:] in D.COLOUR_NAMES]
    classes = [n for n in found if n not in colours]
    rows: list[tuple[str, np.ndarray]] = []
    for names, prompts in ((colours, COLOUR_PROMPTS), (classes, CLASS_PROMPTS)):
        rows.append(("unsteered", sample(pipe, prompts, None)))
        rows += [(name, sample(pipe, prompts, SteeringVector.load(found[name]))) for name in names]
    side = rows[0][1].shape[0]
    canvas = Image.new("RGB", (LABEL_WIDTH + len(COLOUR_PROMPTS) * CELL, len(rows) * (CELL + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, row) in enumerate(rows):
        image = Image.fromarray((row.clip(0, 1) * 255).astype(np.uint8)).resize((row.shape[1] * CELL // side, CELL), Image.NEAREST)
        canvas.paste(image, (LABEL_WIDTH, i * (CELL + 2)))
        draw.text((4, i * (CELL + 2) + CELL // 2 - 6), label, fill="black")
    return canvas, len(rows)


def slider_gallery(pipe, model: str | None) -> tuple[Image.Image, int]:
    rows = []
    for name, path in bundled_directions(model).items():
        if not name.endswith("_slider"):
            continue
        slider = SteeringVector.load(path)
        ends = slider.metadata["two_sided"]
        prompts = [slider.metadata["calibration"]["open_prompts"][0], ends["positive"][0], ends["negative"][0]]
        rows.append((name, prompts, [strip(pipe, p, slider) for p in prompts]))
    span = len(SCALES) * SLIDER_CELL
    canvas = Image.new("RGB", (SLIDER_LABEL_WIDTH + 3 * span + 2 * GAP, 14 + len(rows) * (SLIDER_CELL + 14)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, caption in enumerate(("open prompt", "+ end stated", "- end stated")):
        draw.text((SLIDER_LABEL_WIDTH + j * (span + GAP) + 2, 1), f"{caption}: -1 -0.5 0 0.5 1", fill="black")
    for i, (name, prompts, strips) in enumerate(rows):
        top = 14 + i * (SLIDER_CELL + 14)
        draw.text((4, top + SLIDER_CELL // 2 - 6), name, fill="black")
        for j, (prompt, row) in enumerate(zip(prompts, strips, strict=True)):
            image = Image.fromarray((row.clip(0, 1) * 255).astype(np.uint8)).resize((span, SLIDER_CELL), Image.NEAREST)
            left = SLIDER_LABEL_WIDTH + j * (span + GAP)
            canvas.paste(image, (left, top))
            draw.text((left + 2, top + SLIDER_CELL), repr(prompt), fill="black")
    return canvas, len(rows)


if __name__ == "__main__":
    main()
