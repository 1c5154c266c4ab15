"""Strips of one colour target's contradicting prompts at the fitted take-away, to look at (not a judged benchmark).

For each of the target's eight contradicting prompts (`steering_matrix.prompts_for(...)["contra"]`: "a green dress" ->
orange), the pair's `fit_take_away` and then, for 4 seeds, rows of: the rewritten prompt unsteered (the model's own
"an orange dress"), the prompt steered at ``mult`` x the fitted strength for each ``--mults`` entry (0: the prompt
itself), the source taken away as the fit sets it. Prints each row's verdicts (classifier colour, pixel colour, class)
and writes one PNG: prompts left to right, rows top to bottom.

    python bench/take_away_strips.py --target orange --out docs/steering/take_away_colour/orange_by_colour.png
    python bench/take_away_strips.py --target orange --fit-by distance --mults 0 0.75 1 1.5 2 --out strip.png
    python bench/take_away_strips.py --target red --windows 0,0.5 0,1 --out red_before.png   # session 39's windows
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from contra_removal import generators, source_of  # noqa: E402
from steering_matrix import C, K, judge, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.config import REMOVING, TAKE_AWAY_NEGATIVE  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.take_away import pair_scales  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--negative", choices=REMOVING, default=TAKE_AWAY_NEGATIVE,
                    help="how the take-away acts (default: the library's; remove: without the word swap, as before session 41)")
    ap.add_argument("--target", choices=C, default="orange")
    ap.add_argument("--mults", type=float, nargs="+", default=[0.0, 1.0], help="multiples of the fitted strength, one row each")
    ap.add_argument("--fit-by", choices=("auto", "distance"), default="auto")
    ap.add_argument("--windows", nargs="+", default=None,
                    help="the fits' candidate windows as start,end (default: fit_take_away's own), e.g. 0,0.5 0,1 (before session 40)")
    ap.add_argument("--seed-base", type=int, default=3000, help="seeds seed_base .. seed_base + 3")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    ap.add_argument("--out", required=True, help="the PNG to write")
    args = ap.parse_args()
    windows = [tuple(float(x) for x in w.split(",")) for w in args.windows] if args.windows else None
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the fits' advice is printed with each row instead
    pipe, classifier = load_pipeline(args.model, "cpu"), load_classifier()
    contra = prompts_for("colour", args.target)["contra"]
    vectors = {}
    for colour in [args.target, *sorted({source_of("colour", p) for p in contra})]:
        P = prompts_for("colour", colour)
        vectors[colour] = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=args.steps, guidance_scale=args.guidance, progress=False)
    seeds = [args.seed_base + i for i in range(4)]
    sampling = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np")
    columns = []
    for prompt in contra:
        source = source_of("colour", prompt)
        fit = pipe.fit_take_away(vectors[args.target], vectors[source], guidance_scale=args.guidance, fit_by=args.fit_by, windows=windows,
                                 negative=args.negative)
        own = pipe([prompt.replace(source, args.target, 1)] * 4, generator=generators(seeds), **sampling).images
        rows = [own]
        for mult in args.mults:
            images = pipe([prompt] * 4, generator=generators(seeds), steering=[vectors[args.target], vectors[source]],
                          steering_scale=pair_scales(fit.strength * mult), steering_negative=fit.negative, steering_window=fit.window,
                          **sampling).images
            rows.append(images)
            j = judge(classifier, images.transpose(0, 3, 1, 2))
            print(f"{prompt}: fit {fit.strength:.2f} over {fit.window[0]:g}-{fit.window[1]:g} by {fit.chosen_by}, x{mult:g}: colour",
                  [C[c] for c in j["colour"]], "pixel", [C[c] for c in j["pixel_colour"]], "class", [K[c] for c in j["class"]], flush=True)
        columns.append(np.concatenate([np.concatenate(list(images), 1) for images in rows], 0))
    grid = (np.concatenate(columns, 1) * 255).round().astype(np.uint8)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.out)
    print(f"wrote {args.out}: prompts {contra} left to right; rows: the rewritten prompt, then x {args.mults}")


if __name__ == "__main__":
    main()
