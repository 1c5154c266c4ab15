"""What each cross-attention alone does with a bundled direction: the grid behind the app's layer slider for
directions on the prompt's tokens (README, the app).

    python scripts/one_reader_grid.py [--out docs/steering/routing/one_reader.png]

Rows: to_blue on "a sneaker", to_bag on "a red item", to_green on "a dress", each at scale 1 (the full edit) and 3;
columns: unsteered, the direction's own route, then read by one cross-attention only (``steering_readers=[path]``),
input side first. Demo model, DDIM 20, guidance 5, seed 0; ~25 s on one CPU thread.
"""

import argparse
from pathlib import Path

import torch
from diffusers.utils import make_image_grid

from steer.assets import bundled_directions
from steer.cli.loading import load_pipeline
from steer.denoisers import cross_attention_sites
from steer.vectors import SteeringVector

ROWS = (("to_blue", "a sneaker"), ("to_bag", "a red item"), ("to_green", "a dress"))
SCALES = (1.0, 3.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/steering/routing/one_reader.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    readers = cross_attention_sites(pipe.unet)
    kw = dict(num_inference_steps=20, guidance_scale=5.0)
    tiles = []
    for name, prompt in ROWS:
        vector = SteeringVector.load(bundled_directions(None)[name])
        for scale in SCALES:
            calls = [dict(steering_scale=0.0), dict(steering_scale=scale)] + [dict(steering_scale=scale, steering_readers=[r]) for r in readers]
            for call in calls:
                image = pipe(prompt, steering=vector, generator=torch.Generator().manual_seed(0), **kw, **call).images[0]
                tiles.append(image.resize((96, 96), 0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    make_image_grid(tiles, rows=len(ROWS) * len(SCALES), cols=len(readers) + 2).save(out)
    columns = ["unsteered", "own route"] + readers
    rows = [f"{name} on {prompt!r} at {scale:g}" for name, prompt in ROWS for scale in SCALES]
    out.with_suffix(".txt").write_text("columns: " + " | ".join(columns) + "\nrows: " + " | ".join(rows) + "\n")
    print(out)


if __name__ == "__main__":
    main()
