"""The take-away on an inductor-compiled denoiser: compile time of the first additive and removing calls, later calls,
and the largest difference from the eager images (tiny test pipeline, 1 CPU thread; docs/benchmarks.md "torch.compile").

    python bench/compile_take_away.py [--out compile_take_away.json]
"""
import argparse
import json
import time
import warnings

import numpy as np
import torch

from steer.testing import tiny_pipeline

STEPS = 4


def call(pipe, **kw):
    return pipe("a red sneaker", generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, output_type="np", **kw).images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="compile_take_away.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    eager = tiny_pipeline(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blue = eager.learn_direction(["a blue sneaker"], ["a sneaker"], readers="detail", num_inference_steps=3, calibration_samples=2, progress=False)
        red = eager.learn_direction(["a red sneaker"], ["a sneaker"], num_inference_steps=3, calibration_samples=2, progress=False)
    whole = dict(steering_negative="remove", steering_window=(0.0, 1.0), steering_removal_window=(0.0, 1.0))
    cases = {"add": dict(steering=[blue, red], steering_scale=[1.0, 0.5]),
             "add and remove": dict(steering=[blue, red], steering_scale=[1.0, -0.5], **whole),
             "remove only": dict(steering=[blue, red], steering_scale=[0.0, -1.0], **whole)}
    ref = {k: call(eager, **kw) for k, kw in cases.items()}
    pipe = tiny_pipeline(seed=0)
    pipe.compile_unet()
    out = {}
    for name in ["add", "add and remove", "remove only", "add", "add and remove"]:
        t = time.time()
        img = call(pipe, **cases[name])
        dt = time.time() - t
        out.setdefault(name, []).append({"seconds": round(dt, 2), "max_diff": float(np.abs(img - ref[name]).max())})
        print(name, out[name][-1], flush=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
