"""Could ``window="auto"`` fit the 2,000-row learning budget? The same choice from fewer calibration samples.

    python bench/auto_window_cost.py [--model assets/models/demo-4x] [--samples 3] [--steps 20] [--out docs/steering/auto_window/cost.json]

`learn_direction(window="auto")` costs 3,360 UNet rows with the default 6 calibration samples ((2 + 2 x 6) sets x 6
samples x 20 steps x 2); with 3 samples it costs 1,680. Each matrix target is learned both ways (same prompts,
seeds and settings as the matrix) and the chosen windows and calibrated strengths are compared. ``--steps`` makes
the cheaper variant calibrate at fewer sampling steps instead (or as well): the text preset samples only to
calibrate, so ``num_inference_steps`` is the calibration's step count. No images are
judged: a choice or strength that matches the 6-sample one inherits its measured result.
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

from steering_matrix import C, K, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--samples", type=int, default=3, help="calibration samples of the cheaper variant")
    ap.add_argument("--steps", type=int, default=20, help="calibration sampling steps of the cheaper variant")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, "cpu")
    rows, t0 = [], time.time()
    for name in C + K:
        P = prompts_for("colour" if name in C else "class", name)
        learned = {}
        for key, samples, steps in (("full", 6, 20), ("cheap", args.samples, args.steps)):
            v = pipe.learn_direction(P["positive"], P["negative"], window="auto", calibration_samples=samples,
                                     num_inference_steps=steps, guidance_scale=5.0, progress=False)
            learned[key] = {"window_choice": v.metadata["window_choice"], "strength": v.metadata["calibration"]["strength"],
                                "unet_rows": v.metadata["calibration"]["unet_rows"]}
        full, cheap = learned["full"], learned["cheap"]
        rows.append({"target": name, "full": full, "cheap": cheap, "same_window": full["window_choice"]["chosen"] == cheap["window_choice"]["chosen"],
                     "strength_ratio": round(cheap["strength"] / full["strength"], 3)})
        print(name, rows[-1]["same_window"], rows[-1]["strength_ratio"], full["window_choice"]["chosen"], cheap["window_choice"]["chosen"], f"{time.time() - t0:.0f}s", flush=True)
    ratios = sorted(r["strength_ratio"] for r in rows)
    summary = {"targets": len(rows), "same_window": sum(r["same_window"] for r in rows), "strength_ratio_range": [ratios[0], ratios[-1]],
               "within_10_percent": sum(abs(r - 1) <= 0.1 for r in ratios), "rows_full": rows[0]["full"]["unet_rows"], "rows_cheap": rows[0]["cheap"]["unet_rows"]}
    print(summary)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo",
                                              "seconds": round(time.time() - t0, 1), "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
