"""What the session-17 sampling changes cost and save: calls split by ``batch_size``, the take-away fit's shared half.

    python bench/sampling_cost.py [--rounds 2] [--out docs/steering/sampling_cost.json]

1. ``learn_direction`` (the defaults, the matrix's prompts for cyan, red and bag, DDIM 20, guidance 5) with
   ``batch_size=8`` (the default: every sampling call of the calibration holds at most 8 images) against
   ``batch_size=64`` (each of the calibration's sample sets in one call, up to 48 images, as before): seconds, the
   widest UNet batch seen, and the calibrated strengths (each image has its own seed, so they should agree to float
   noise).
2. ``fit_take_away`` (bundled directions, guidance 5, the fit's defaults) with the two candidate windows of a layout
   edit (`steer.take_away.WINDOWS`) sharing their first half (the default on DDIM) against each window sampled whole:
   seconds, UNet rows, and the fitted strength and window (the same run cut and resumed, so they should agree to float
   noise). Since session 40 an appearance edit (the colour pairs) is fitted over its own windows by default
   (`APPEARANCE_WINDOWS`, which share no first part): timed too, as ``fit_default``.

The variants alternate within each round so a loaded machine slows both alike. 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import prompts_for  # noqa: E402

import steer.take_away as take_away_module  # noqa: E402
from steer import SteeringVector  # noqa: E402
from steer.assets import bundled_directions  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402

TARGETS = (("colour", "cyan"), ("colour", "red"), ("class", "bag"))
PAIRS = (("to_blue", "to_red"), ("to_bag", "to_dress"), ("to_green", "to_white"))


def widest_batch(pipe, fn):
    """``fn()`` and the widest UNet batch it ran, with its wall time."""
    rows = [0]
    handle = pipe.unet.register_forward_pre_hook(lambda _m, a: rows.__setitem__(0, max(rows[0], a[0].shape[0])))
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
    finally:
        handle.remove()
    return out, rows[0], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "sampling_cost.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    learn, fit, fit_default = [], [], []
    for round_ in range(args.rounds):
        for kind, target in TARGETS:
            P = prompts_for(kind, target)
            for size in (8, 64):
                v, widest, seconds = widest_batch(pipe, lambda size=size, P=P: pipe.learn_direction(
                    P["positive"], P["negative"], num_inference_steps=20, guidance_scale=5.0, batch_size=size, progress=False))
                cal = v.metadata["calibration"]
                learn.append({"round": round_, "target": target, "batch_size": size, "seconds": round(seconds, 2), "widest_unet_batch": widest,
                              "strength": cal["strength"], "window": cal["window"], "unet_rows": cal["unet_rows"]})
                print(json.dumps(learn[-1]), flush=True)
        directions = bundled_directions()
        branch = take_away_module.branch_step
        for target, source in PAIRS:
            vector, away = SteeringVector.load(directions[target]), SteeringVector.load(directions[source])
            for shared in (True, False):
                take_away_module.branch_step = branch if shared else (lambda *a, **k: None)
                try:
                    result, widest, seconds = widest_batch(pipe, lambda v=vector, a=away: pipe.fit_take_away(v, a, guidance_scale=5.0,
                                                                                                 windows=take_away_module.WINDOWS))
                finally:
                    take_away_module.branch_step = branch
                fit.append({"round": round_, "pair": [target, source], "shared": shared, "seconds": round(seconds, 2), "unet_rows": result.unet_rows,
                            "strength": round(result.strength, 5), "window": list(result.window)})
                print(json.dumps(fit[-1]), flush=True)
            result, widest, seconds = widest_batch(pipe, lambda v=vector, a=away: pipe.fit_take_away(v, a, guidance_scale=5.0))
            fit_default.append({"round": round_, "pair": [target, source], "seconds": round(seconds, 2), "unet_rows": result.unet_rows,
                                "strength": round(result.strength, 5), "window": list(result.window), "chosen_by": result.chosen_by})
            print(json.dumps(fit_default[-1]), flush=True)

    def mean(rows, **match):
        picked = [r["seconds"] for r in rows if all(r[k] == v for k, v in match.items())]
        return round(sum(picked) / len(picked), 2)

    def agree(rows, key, a, b, field):
        by = {}
        for r in rows:
            by.setdefault((r["round"], json.dumps(r.get("target", r.get("pair")))), {})[r[key]] = r
        return max(abs(g[a][field] - g[b][field]) / max(abs(g[b][field]), 1e-12) for g in by.values())

    summary = {
        "learn_seconds": {"batch_size_8": mean(learn, batch_size=8), "batch_size_64": mean(learn, batch_size=64)},
        "learn_widest_unet_batch": {"batch_size_8": max(r["widest_unet_batch"] for r in learn if r["batch_size"] == 8),
                                    "batch_size_64": max(r["widest_unet_batch"] for r in learn if r["batch_size"] == 64)},
        "learn_strength_max_relative_difference": agree(learn, "batch_size", 8, 64, "strength"),
        "fit_seconds": {"shared": mean(fit, shared=True), "whole": mean(fit, shared=False)},
        "fit_unet_rows": {"shared": fit[0]["unet_rows"], "whole": fit[1]["unet_rows"]},
        "fit_strength_max_relative_difference": agree(fit, "shared", True, False, "strength"),
        "fit_same_windows": all(a["window"] == b["window"] for a, b in zip(fit[::2], fit[1::2], strict=True)),
        "fit_default": {"/".join(pair): {"seconds": mean(fit_default, pair=list(pair)), "unet_rows": next(r["unet_rows"] for r in fit_default if r["pair"] == list(pair))}
                        for pair in PAIRS},
    }
    print(json.dumps(summary))
    meta = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "machine": f"{platform.machine()} CPU, 1 thread",
            "model": "assets/models/demo"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "summary": summary, "learn": learn, "fit": fit, "fit_default": fit_default}, indent=1))


if __name__ == "__main__":
    main()
