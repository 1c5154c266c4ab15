"""Would the layout the steered open samples keep tell an overshooting colour edit? (screened 2026-12-01, not adopted)

    python bench/layout_drift_screen.py [--results docs/steering/route_choice/results.json] \
        [--out docs/steering/route_choice/layout_drift_demo.json]

Each matrix target learned with the defaults (guidance 5, 20 steps, as the matrix); the calibration's open prompts
and seeds 0-5 steered at the calibration grid (in units of the calibrated strength) and at 1.0 and 1.5; for each,
`steer.appearance.structure_kept` against the unsteered open samples, beside the positives' own (``s_pos``) and the
matrix's passing scales. The idea: a colour edit whose steered samples keep less layout than the model's own prompt
edit is changing the object (cyan's bags at 1.0). ~3.5 min on the demo model, 1 thread.
"""
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

from steer.appearance import structure_kept  # noqa: E402
from steer.calibrate import DEFAULT_GRID, sample_latents  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.wording import open_prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--results", default="docs/steering/route_choice/results.json", help="the matrix run whose passing scales are shown")
    ap.add_argument("--out", default="docs/steering/route_choice/layout_drift_demo.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_pipeline(args.model, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=20, guidance_scale=5.0)
    bands = {t: m["passing_scales"] for key, per in json.loads(Path(args.results).read_text())["summary"].items() if key.startswith("ours|open") for t, m in per.items()}
    seeds, out = list(range(6)), []
    for kind, targets in (("colour", C), ("class", K)):
        for t in targets:
            P = prompts_for(kind, t)
            v = pipe.learn_direction(P["positive"], P["negative"], progress=False, **kw)
            strength = v.metadata["calibration"]["strength"]
            pos = [P["positive"][i % len(P["positive"])] for i in seeds]
            opened = open_prompts(pos, [P["negative"][i % len(P["negative"])] for i in seeds])
            z_pos = sample_latents(pipe, pos, seeds, flat=False, **kw)
            scales = [0.0] + [g / strength for g in DEFAULT_GRID] + [1.0, 1.5]
            z = sample_latents(pipe, [p for _ in scales for p in opened], [s for _ in scales for s in seeds], flat=False,
                               steering=v, steering_scale=[x for x in scales for _ in seeds], **kw)
            z = z.reshape(len(scales), len(seeds), *z.shape[1:])
            row = {"target": t, "kind": kind, "strength": strength, "s_pos": round(structure_kept(pipe, z_pos, z[0]), 4),
                   "scales": [round(x, 3) for x in scales[1:]], "kept_layout": [round(structure_kept(pipe, z[i], z[0]), 4) for i in range(1, len(scales))],
                   "passing_scales": bands.get(t)}
            print(json.dumps(row), flush=True)
            out.append(row)
    meta = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "machine": "x86_64 CPU, 1 thread", "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": out}, indent=1))


if __name__ == "__main__":
    main()
