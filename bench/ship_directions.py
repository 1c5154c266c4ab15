"""Learn the bundled directions of the demo model (assets/directions) and measure each one before shipping it.

    python bench/ship_directions.py [--model assets/models/demo] [--out assets/directions]

Each direction is learned training-free from real training images (the best source in docs/benchmarks.md:
``mean_diff`` from images with their own captions) and carries the settings the efficacy benchmark picked
(up-block attention outputs, window (0, 1), uniform add, normalized scale) plus its measured success rate on
attribute-open prompts, so `steer generate --direction NAME` uses them by default.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steer.hooks import list_layers  # noqa: E402
from steer.lab import data as D  # noqa: E402
from steer.lab.classifier import load_classifier, predict  # noqa: E402
from steer.loading import DIRECTIONS_DIR, load_pipeline  # noqa: E402

COLOUR_PAIRS = [("red", "blue"), ("red", "green"), ("white", "yellow")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(DIRECTIONS_DIR))
    ap.add_argument("--scale", type=float, default=0.4)
    ap.add_argument("--n", type=int, default=24, help="training images per side")
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--min-success", type=float, default=0.5, help="ship only directions at least this successful")
    args = ap.parse_args()
    pipe = load_pipeline(args.model, "cpu")
    classifier = load_classifier()
    data = D.make_coloured_fashion_mnist(split="train", seed=0, limit=4000)
    sites = [n for n in list_layers(pipe.unet, ("attentions",)) if n.startswith("up_blocks")]
    prompts = [f"a {c}" for c in D.CLASS_NAMES[:8]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for src, dst in COLOUR_PAIRS:
        si, di = D.COLOUR_NAMES.index(src), D.COLOUR_NAMES.index(dst)
        pos_idx = np.where(data.colours == di)[0][: args.n]
        neg_idx = np.where(data.colours == si)[0][: args.n]
        images = [torch.from_numpy(data.images[i]) for i in pos_idx], [torch.from_numpy(data.images[i]) for i in neg_idx]
        captions = [data.captions[i] for i in pos_idx] + [data.captions[i] for i in neg_idx]
        v = pipe.learn_direction(images[0], images[1], layers=sites, method="mean_diff", image_prompts=captions, name=f"{src}_to_{dst}", progress=False)
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(prompts))]
        kw = dict(num_inference_steps=args.steps, guidance_scale=5.0, output_type="np")
        steered = pipe(prompts, generator=gens, steering=v, steering_scale=args.scale, steering_window=(0.0, 1.0), steering_normalize=True, **kw).images
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(prompts))]
        plain = pipe(prompts, generator=gens, **kw).images
        cls_s, col_s = predict(classifier, steered.transpose(0, 3, 1, 2))
        cls_p, _ = predict(classifier, plain.transpose(0, 3, 1, 2))
        measured = {"prompts": prompts, "scale": args.scale, "steps": args.steps, "success": float(np.mean(col_s == di)), "class_kept": float(np.mean(cls_s == cls_p))}
        v.metadata["recommended"] = {"layers": sites, "window": [0.0, 1.0], "mode": "add", "normalize": True, "scale": args.scale, "scales": [0.1, 0.6]}
        v.metadata["measured"] = measured
        path = out / f"{src}_to_{dst}.safetensors"
        measured["shipped"] = measured["success"] >= args.min_success
        if measured["shipped"]:
            v.save(path)
        else:
            path.unlink(missing_ok=True)
        summary[f"{src}_to_{dst}"] = measured
        print(f"{src}_to_{dst}", measured, flush=True)
    (out / "README.md").write_text(
        "# Bundled directions (demo model)\n\nLearned by `python bench/ship_directions.py`: `mean_diff` from "
        f"{args.n} + {args.n} training images with their captions, at the up-block attention outputs. Each file's "
        "metadata carries the recommended settings (window (0, 1), uniform add, normalized scale) that "
        "`steer generate` applies by default, and the success measured on attribute-open prompts:\n\n"
        f"Only directions with success >= {args.min_success} are shipped.\n\n"
        "| direction | scale | success (classifier sees the target colour) | class kept | shipped |\n|---|---|---|---|---|\n"
        + "".join(f"| {k} | {m['scale']} | {m['success']:.2f} | {m['class_kept']:.2f} | {'yes' if m['shipped'] else 'no'} |\n" for k, m in summary.items())
        + "\nClass directions (e.g. sneaker -> ankle boot) are not shipped: the efficacy benchmark measured 0 success for them "
        "at every site and scale that kept the image intact (docs/benchmarks.md).\n"
    )
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
