"""Inpainting on the demo model: the left half of four of the model's own images repainted, steered toward blue
(the bundled `to_blue`) at scales 0 -> 1, against the prompt rewrite ("a blue t-shirt"), at strengths 0.6 and 1.0.

    python bench/inpaint_probe.py [--out docs/steering/edit/inpaint_probe.png]

A look, not a benchmark (four sources, one seed each): rows are (strength, source); columns the source, scales 0,
0.25, 0.5, 0.75, 1.0 and the rewrite. The demo UNet has 4 input channels (no inpainting training), so diffusers
blends the kept half back from the image at every step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steer.assets import bundled_directions, default_model  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.pipelines.factory import editing_pipeline  # noqa: E402
from steer.vectors import SteeringVector  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "edit" / "inpaint_probe.png"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(default_model(), "cpu", progress=False)
    inpaint = editing_pipeline(pipe, "inpaint")
    blue = SteeringVector.load(bundled_directions(default_model())["to_blue"])
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 16, 32))  # the left half is repainted
    kw = dict(num_inference_steps=20, guidance_scale=5.0)
    items = [("red", "t-shirt"), ("green", "dress"), ("white", "bag"), ("yellow", "sneaker")]
    sources = [pipe(f"a {c} {k}", generator=torch.Generator().manual_seed(s), **kw).images[0] for s, (c, k) in enumerate(items)]
    rows = []
    for strength in (0.6, 1.0):
        for seed, (source, (_, item)) in enumerate(zip(sources, items, strict=True)):
            scales = (0.0, 0.25, 0.5, 0.75, 1.0)
            steered = inpaint([f"a {item}"] * 5, image=[source] * 5, mask_image=[mask] * 5, strength=strength,
                              generator=[torch.Generator().manual_seed(seed) for _ in scales], steering=blue,
                              steering_scale=[[s] for s in scales], **kw).images
            rewrite = inpaint([f"a blue {item}"], image=[source], mask_image=[mask], strength=strength,
                              generator=torch.Generator().manual_seed(seed), **kw).images
            rows.append([source, *steered, *rewrite])
    side = 32
    grid = Image.new("RGB", (side * len(rows[0]), side * len(rows)))
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * side, r * side))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
