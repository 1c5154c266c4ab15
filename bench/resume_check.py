"""The shared first half on the demo model's own weights, with the schedulers users pick: the same choice, fewer rows.

    python bench/resume_check.py [--samplers dpm++2m euler ...] [--out docs/steering/resume_check.json]

The demo model's DDIM scheduler swapped for DPM-Solver++ (2M, diffusers' default settings), Euler discrete, UniPC
(order 2, its corrector on), Euler ancestral (noise drawn at every step: each image's generator handed on) and PNDM
with ``skip_prk_steps`` (SD 1.x's default: 21 denoiser calls for 20 steps); for
purple (a colour the window choice sends to the whole run) and coat (a class), `learn_direction` with its defaults
(DDIM 20 steps, guidance 5) twice: with the two candidate windows sharing their first half (`steer.partial_run`, the
default) and with each sampled whole. Printed and saved: seconds, UNet rows, both windows' distances and strengths and
the chosen window. 1 torch thread. ``--samplers``: others by name (`steer.samplers`), e.g. the second-order and
linear-multistep ones that resume since session 19 (``heun dpm2-a-karras lms-karras dpm++2s ddpm``).
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
from diffusers import (
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import prompts_for  # noqa: E402

import steer.calibrate as calibrate_module  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samplers", nargs="+", default=None, help="sampler names (default: the five above)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "resume_check.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    branch = calibrate_module.branch_step
    rows = []
    schedulers = (DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler, EulerAncestralDiscreteScheduler, PNDMScheduler)
    own, base = pipe.scheduler.config, pipe
    for scheduler in args.samplers or schedulers:
        if isinstance(scheduler, str):
            name, pipe = scheduler, base.with_sampler(scheduler)
        else:
            name = scheduler.__name__
            pipe.scheduler = scheduler.from_config(own, **({"skip_prk_steps": True} if scheduler is PNDMScheduler else {}))
        for kind, target in (("colour", "purple"), ("class", "coat")):
            P = prompts_for(kind, target)
            for shared in (True, False):
                calibrate_module.branch_step = branch if shared else (lambda *a, **k: None)
                t0 = time.perf_counter()
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        v = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=20, guidance_scale=5.0, progress=False)
                finally:
                    calibrate_module.branch_step = branch
                choice = v.metadata["window_choice"]
                rows.append({"scheduler": name, "target": target, "shared": shared, "seconds": round(time.perf_counter() - t0, 1),
                             "unet_rows": v.metadata["calibration"]["unet_rows"], "distances": choice["distances"],
                             "strengths": choice["strengths"], "chosen": choice["chosen"]})
                print(json.dumps(rows[-1]), flush=True)
    same = all(a["distances"] == b["distances"] and a["strengths"] == b["strengths"] and a["chosen"] == b["chosen"]
               for a, b in zip(rows[::2], rows[1::2], strict=True))
    meta = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "machine": f"{platform.machine()} CPU, 1 thread",
            "model": "assets/models/demo", "same_choice_and_strengths": same}
    print(json.dumps(meta))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
