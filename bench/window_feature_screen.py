"""Screen (post hoc): would a feature-level distance choose the window where the latent distance misses?

    python bench/window_feature_screen.py --screens docs/steering/window_choice_demo.json docs/steering/replication/window_choice_demo.json
    python bench/window_feature_screen.py --model assets/models/demo-4x --screens docs/steering/demo4x/window_choice.json docs/steering/demo4x/replication/window_choice.json

`window="auto"` keeps the window whose calibrated samples come closer to the positives' own in latent L2; it misses
shirt on the 4x UNet and pullover on the demo model's fresh seeds (both pass only over the whole run). This screen was
written *after* those misses were seen, so it is a lead, not a measurement of a rule. For each matrix target and each
window, the direction is learned (calibrated for that window), the calibration's open prompts are sampled at its
full edit (scale 1.0, the calibration's seeds), and the final latents are read by the denoiser itself (noised to
t = 10, one pass with the empty prompt, spatial means at the up-block resnets: `steer.extract.extract_from_latents`).
Feature distance = mean over seeds of |f(steered) - f(positive)| / |f(unsteered open) - f(positive)|; the rule F keeps
the window with the smaller one. Its choices are scored against the window-choice screens' measured passes at 1.0.
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

from readout_screen import features  # noqa: E402
from steering_matrix import C, K, prompts_for  # noqa: E402

from steer.calibrate import sample_latents  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.denoisers import default_layers, denoiser_of  # noqa: E402
from steer.wording import open_prompts  # noqa: E402

WINDOWS = {"early": (0.0, 0.5), "whole": (0.0, 1.0)}
SEEDS = list(range(6))  # the calibration's own seeds (learn_direction's seed=0, calibration_samples=6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--screens", nargs="+", required=True, help="window_choice_screen.py results to score the choices against")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, "cpu")
    layers = default_layers(denoiser_of(pipe))
    kw = dict(num_inference_steps=20, guidance_scale=5.0)
    rows, t0 = [], time.time()
    for name in C + K:
        P = prompts_for("colour" if name in C else "class", name)
        pos = [P["positive"][i % len(P["positive"])] for i in SEEDS]
        neg = [P["negative"][i % len(P["negative"])] for i in SEEDS]
        opened = open_prompts(pos, neg)
        f_pos = features(pipe, as_images(pipe, sample_latents(pipe, pos, SEEDS, **kw)), layers)
        f_open = features(pipe, as_images(pipe, sample_latents(pipe, opened, SEEDS, **kw)), layers)
        start = (f_open - f_pos).norm(dim=1)
        row = {"target": name}
        for label, window in WINDOWS.items():
            v = pipe.learn_direction(P["positive"], P["negative"], window=window, progress=False, **kw)
            z = sample_latents(pipe, opened, SEEDS, steering=v, steering_scale=1.0, **kw)
            row[label] = round(float(((features(pipe, as_images(pipe, z), layers) - f_pos).norm(dim=1) / start.clamp_min(1e-6)).mean()), 4)
            row[f"latent_{label}"] = v.metadata["calibration"]["distance"]
        row["feature_choice"] = min(WINDOWS, key=lambda w: row[w])
        row["latent_choice"] = min(WINDOWS, key=lambda w: row[f"latent_{w}"])
        rows.append(row)
        print(row, f"{time.time() - t0:.0f}s", flush=True)
    scores = []
    for path in args.screens:
        screen = {r["target"]: r for r in json.loads(Path(path).read_text())["rows"]}
        at1 = {(t, w): screen[t][w]["cells"]["1.0"]["pass"] for t in screen for w in WINDOWS}
        scores.append({"screen": path, "latent_rule": sum(at1[r["target"], r["latent_choice"]] for r in rows),
                       "feature_rule": sum(at1[r["target"], r["feature_choice"]] for r in rows),
                       "better_of_two": sum(at1[r["target"], "early"] or at1[r["target"], "whole"] for r in rows)})
    print(json.dumps(scores, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo",
                                              "seconds": round(time.time() - t0, 1), "scores": scores, "rows": rows}, indent=1))


def as_images(pipe, flat: torch.Tensor) -> torch.Tensor:
    """Flattened square latents (N, C*H*W) back to (N, C, H, W)."""
    channels = pipe.unet.config.in_channels
    side = int(round((flat.shape[1] / channels) ** 0.5))
    return flat.reshape(len(flat), channels, side, side)


if __name__ == "__main__":
    main()
