"""The take-away fit's strengths against the layout they keep, on the tuning pairs only: where would a layout bound cut?

    python bench/take_away_layout_screen.py [--part one-sided|sliders] [--out docs/steering/take_away_layout/<part>.json]

Session 34 (2026-12-04). Session 33 found that extending `steer.take_away.GRID` to 3.0 lets a fit follow the latent
distance past the strength where the garment is redrawn (a slider side's kept fell 0.91 -> 0.78). This screen fits
every tuning pair with the grid to 3.0 and records, per window and grid strength, the latent distance and the layout
agreement (`steer.appearance.layout_agreement`: the decoded grayscale over an 8 x 8 grid, correlated) of the steered
samples with the rewritten prompts' samples, beside the unsteered sources' agreement: the fit's own samples (its
prompts, seeds 0-5, 12 steps), drawn again for the layout. The question, asked before any held-out pair was fitted:
does a strength past the one the bench can afford show in the layout, so that a bound could stop the fit there? Pairs: the matrix's tuning targets (colours red, blue, green; classes
ankle boot, bag, trouser) against every source their contradicting prompts state (``one-sided``), and the tuning
sliders' eight sides (``sliders``: red/blue, green/red, blue/green, trouser/bag, learned as `bench/two_sided.py` does).
Learning at DDIM 20, the fits at their own 12 steps, guidance 5, 1 thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from contra_removal import source_of  # noqa: E402
from steering_matrix import TUNING, C, K, prompts_for  # noqa: E402
from two_sided import PAIRS, pair_prompts  # noqa: E402

from steer.appearance import layout_agreement, layout_signatures  # noqa: E402
from steer.calibrate import sample_latents  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.take_away import FIT_STEPS, pair_scales  # noqa: E402

GRID = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)


def record(pipe, fit, toward, away, **what) -> dict:
    """The fit, with the layout agreement of its samples at each window and grid strength and of the unsteered sources."""
    sources, targets = [s for s, _ in fit.prompts], [t for _, t in fit.prompts]
    seeds = list(range(len(sources)))  # the fit's own: seed 0 on
    kw = dict(num_inference_steps=FIT_STEPS, guidance_scale=5.0, batch_size=8)
    target = layout_signatures(pipe, sample_latents(pipe, targets, seeds, flat=False, **kw))
    layouts = {}
    for key in fit.distances:
        window = tuple(float(x) for x in key.split(","))
        layouts[key] = [rounded(layout_agreement(layout_signatures(pipe, sample_latents(
            pipe, sources, seeds, flat=False, steering=[toward, away], steering_scale=pair_scales(g), steering_negative="remove",
            steering_window=window, **kw)), target)) for g in fit.grid]
    source = layout_agreement(layout_signatures(pipe, sample_latents(pipe, sources, seeds, flat=False, **kw)), target)
    d = fit.to_dict()
    return {**what, **{k: d[k] for k in ("strength", "window", "distance", "distances")}, "layouts": layouts, "source_layout": rounded(source)}


def rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def show(row: dict, t0: float) -> None:
    print(row.get("target", row.get("side")), row.get("source", row.get("pair")), round(row["strength"], 3), row["window"],
          f"src {row['source_layout']}", {k: [None if x is None else round(x, 2) for x in v] for k, v in row["layouts"].items()}, f"{time.time() - t0:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("one-sided", "sliders"), default="one-sided")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or ROOT / "docs" / "steering" / "take_away_layout" / f"{args.part}.json")
    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=20, guidance_scale=5.0, progress=False)
    rows = []
    if args.part == "one-sided":
        for kind, values in (("colour", C), ("class", K)):
            vectors = {v: pipe.learn_direction(prompts_for(kind, v)["positive"], prompts_for(kind, v)["negative"], **kw) for v in values}
            for target in TUNING[kind]:
                for src in sorted({source_of(kind, p) for p in prompts_for(kind, target)["contra"]}):
                    fit = pipe.fit_take_away(vectors[target], vectors[src], grid=GRID, guidance_scale=5.0, negative="remove")  # sampled so, below
                    rows.append(record(pipe, fit, vectors[target], vectors[src], kind=kind, target=target, source=src))
                    show(rows[-1], t0)
    else:
        for kind, pos, neg in PAIRS["tuning"]:
            P = pair_prompts(kind, pos, neg)
            slider = pipe.learn_direction(P["positive"], P["negative"], two_sided=True, flip_stated=False, **kw)
            for side, toward, away in ((pos, slider.one_sided, slider.opposite), (neg, slider.opposite, slider.one_sided)):
                fit = pipe.fit_take_away(toward, away, grid=GRID, guidance_scale=5.0, negative="remove")
                rows.append(record(pipe, fit, toward, away, kind=kind, pair=[pos, neg], side=side))
                show(rows[-1], t0)
    meta = {"command": " ".join(["python", *sys.argv]), "grid": list(GRID), "wall_seconds": round(time.time() - t0, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
