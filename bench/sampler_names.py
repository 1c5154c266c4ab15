"""Every named sampler on the demo model: does the model still draw what its own prompt says?

    python bench/sampler_names.py [--steps 20] [--out docs/steering/samplers/by_name]

For each sampler `steer.samplers.sampler_names` offers the model: all 80 prompts "a <colour> <class>" (8 colours x 10
classes), one seed each (the same seed per prompt for every sampler), at the given steps and guidance 5; judged by the
lab classifier (colour and class) and the pixel colour measure of `bench/steering_matrix.py`. Writes ``<out>.json``
and a grid ``<out>.png`` (one row per sampler: 8 prompts) to look at. Not a steering benchmark: it tells which samplers
the small demo model samples cleanly at this step count, before any steering is read on them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import C, K, judge  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.samplers import sampler_name, sampler_names  # noqa: E402

SHOWN = [(c, K[(2 * i + 1) % 10]) for i, c in enumerate(C)]  # one prompt per colour in the grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "samplers" / "by_name"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, classifier = load_pipeline(None, "cpu"), load_classifier()
    pairs = [(c, k) for c in C for k in K]
    prompts = [f"a {c} {k}" for c, k in pairs]
    rows, tiles = [], []
    own = sampler_name(pipe.scheduler)
    for name in [own, *(n for n in sampler_names(pipe.scheduler) if n != own)]:
        sampled = pipe.with_sampler(name)
        t0 = time.perf_counter()
        images = []
        for i in range(0, len(prompts), 16):
            chunk = prompts[i:i + 16]
            gens = [torch.Generator().manual_seed(2000 + i + j) for j in range(len(chunk))]
            images.append(sampled(chunk, generator=gens, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                  output_type="np").images)
        seconds = time.perf_counter() - t0
        x = np.concatenate(images).transpose(0, 3, 1, 2)
        j = judge(classifier, x)
        colour = np.array([C.index(c) for c, _ in pairs])
        kind = np.array([K.index(k) for _, k in pairs])
        row = {
            "sampler": name,
            "scheduler": type(sampled.scheduler).__name__,
            "colour": float((j["colour"] == colour).mean()),
            "pixel_colour": float((j["pixel_colour"] == colour).mean()),
            "class": float((j["class"] == kind).mean()),
            "both": float(((j["colour"] == colour) & (j["class"] == kind)).mean()),
            "seconds": round(seconds, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        shown = [prompts.index(f"a {c} {k}") for c, k in SHOWN]
        tiles.append((name, [Image.fromarray((x[i].transpose(1, 2, 0) * 255).round().astype("uint8")) for i in shown]))
    size, label = 64, 150
    grid = Image.new("RGB", (label + size * len(SHOWN), size * len(tiles)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (name, ims) in enumerate(tiles):
        draw.text((6, r * size + size // 2 - 6), name, fill="black")
        for c, im in enumerate(ims):
            grid.paste(im.resize((size, size), Image.NEAREST), (label + c * size, r * size))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out.with_suffix(".png"))
    meta = {"command": " ".join(["python", *sys.argv]), "machine": f"{platform.machine()}, {platform.processor() or '?'}, 1 torch thread",
            "steps": args.steps, "guidance": args.guidance, "prompts": len(prompts), "grid_prompts": [f"a {c} {k}" for c, k in SHOWN]}
    out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
