"""Is the feature sites' colour failure a sign error? Apply their direction both ways and count the hues.

    python bench/site_sign_probe.py --target blue      # ~120 s on 1 CPU thread -> docs/steering/sites/sign_probe_blue.json

The site ablation (`steering_matrix.py --methods blocks,resnets`) found "toward blue" at the transformer block and
resnet outputs turns the garments red. This learns the same uncalibrated unit direction (paired trajectories, 4 step
buckets) at each site and applies it at positive and negative strengths, as the matrix does (split branch, token-norm
units, norm preserved) and as a plain conditional-branch add in units of the layer's activation norm, over (0, 0.5), to
the matrix's 8 open prompts x 2 seeds; it records how many of the 16 items the pixel measure reads as each tint.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steering_matrix import CALIBRATED, OUT, C, Runner, judge, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402

APPLICATIONS = {  # name -> (steering_branch, steering_mode, preserve_norm, normalize, strengths)
    "split-token": ("split", "token", True, False, (-0.03, -0.01, 0.01, 0.03)),
    "cond-add": ("cond", "add", False, True, (-1.0, -0.3, 0.3, 1.0)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="blue", choices=C)
    ap.add_argument("--out", default=None, help="JSON path (default: docs/steering/sites/sign_probe_<target>.json)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the uncalibrated learning warns about nothing here
    pipe = load_pipeline(None, "cpu")
    run = Runner(pipe, load_classifier(), steps=20, guidance=5.0, seeds=2)
    prompts = prompts_for("colour", args.target)
    rows = []
    for site in ("blocks", "resnets"):
        learn_kw = {k: v for k, v in CALIBRATED[site].items() if k != "calibration_grid"}
        unit = pipe.learn_direction(prompts["positive"], prompts["negative"], **learn_kw, calibrate=False, num_inference_steps=20, guidance_scale=5.0, progress=False)
        for name, (branch, mode, preserve, normalize, strengths) in APPLICATIONS.items():
            for strength in strengths:
                images = run.sample(prompts["open"], [strength], steering=unit, steering_branch=branch, steering_mode=mode,
                                    steering_preserve_norm=preserve, steering_normalize=normalize, steering_window=(0, 0.5))
                counts = np.bincount(judge(run.classifier, images)["pixel_colour"], minlength=len(C))
                rows.append({"site": site, "application": name, "strength": strength, "pixel_colours": dict(zip(C, counts.tolist(), strict=True))})
                print(site, name, strength, {c: n for c, n in rows[-1]["pixel_colours"].items() if n}, flush=True)
    out = Path(args.out) if args.out else OUT / "sites" / f"sign_probe_{args.target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "target": args.target, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
