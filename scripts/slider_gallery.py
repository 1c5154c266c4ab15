"""Draw every bundled slider across its range (assets/directions/sliders.png).

    python scripts/slider_gallery.py [--model MODEL] [--out assets/directions/sliders.png]

One row per ``*_slider`` direction shipped for the model: its first open prompt ("a t-shirt"), its first positive
prompt ("a red t-shirt": the + end stated) and its first negative prompt ("a blue t-shirt": the - end stated), each at
``steering_scale`` -1, -0.5, 0, 0.5, 1 with the slider's recommended settings (a stated end is turned at the other
end and held at its own); seed 1000 for every image, DDIM 20, guidance 5 (the sliders' calibration settings).
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
from steer.vectors import SteeringVector  # noqa: E402

SCALES = (-1.0, -0.5, 0.0, 0.5, 1.0)
LABEL_WIDTH, CELL, GAP = 132, 48, 8


def strip(pipe, prompt: str, slider: SteeringVector) -> np.ndarray:
    images = pipe([prompt] * len(SCALES), generator=[torch.Generator().manual_seed(1000) for _ in SCALES], num_inference_steps=20,
                  guidance_scale=5.0, output_type="np", steering=slider, steering_scale=list(SCALES)).images
    return np.concatenate(list(images), axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    ap.add_argument("--out", default=None, help="default: sliders.png beside the model's directions")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, "cpu")
    pipe.set_progress_bar_config(disable=True)
    out = args.out or str(directions_dir(args.model) / "sliders.png")
    rows = []
    for name, path in bundled_directions(args.model).items():
        if not name.endswith("_slider"):
            continue
        slider = SteeringVector.load(path)
        ends = slider.metadata["two_sided"]
        prompts = [slider.metadata["calibration"]["open_prompts"][0], ends["positive"][0], ends["negative"][0]]
        rows.append((name, prompts, [strip(pipe, p, slider) for p in prompts]))
    side = rows[0][2][0].shape[0]
    width = LABEL_WIDTH + 3 * len(SCALES) * CELL + 2 * GAP
    canvas = Image.new("RGB", (width, 14 + len(rows) * (CELL + 14)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, caption in enumerate(("open prompt", "+ end stated", "- end stated")):
        draw.text((LABEL_WIDTH + j * (len(SCALES) * CELL + GAP) + 2, 1), f"{caption}: -1 -0.5 0 0.5 1", fill="black")
    for i, (name, prompts, strips) in enumerate(rows):
        top = 14 + i * (CELL + 14)
        draw.text((4, top + CELL // 2 - 6), name, fill="black")
        for j, (prompt, s) in enumerate(zip(prompts, strips, strict=True)):
            image = Image.fromarray((s.clip(0, 1) * 255).astype(np.uint8)).resize((len(SCALES) * CELL, CELL), Image.NEAREST)
            left = LABEL_WIDTH + j * (len(SCALES) * CELL + GAP)
            canvas.paste(image, (left, top))
            draw.text((left + 2, top + CELL), repr(prompt), fill="black")
    assert side > 0
    canvas.save(out, optimize=True)
    print("wrote", out, f"({len(rows)} sliders)")


if __name__ == "__main__":
    main()
