"""Screen a calibration grid that reaches further: does the full edit move into the matrix's passing band?

    python bench/calibration_grid_screen.py --model assets/models/demo --matrix docs/steering/results.json
    python bench/calibration_grid_screen.py --model assets/models/demo-4x --matrix docs/steering/demo4x/ours-colour/results.json docs/steering/demo4x/ours-class/results.json

The default grid (0.08-0.7) tops out for directions whose samples keep coming closer to the positives' own at 0.7
(2 of 18 on the demo model, 10 of 18 on the 4x UNet). Each matrix target is re-learned with the candidate grid
(same prompts, seeds and settings as the matrix: only the strength can change, the unit direction is the same), and
its new strength is placed on the matrix's measured scale axis (new / old strength): the rule "passes" a target when
the nearest measured scale passes there (coarse: the matrix measured 0.25, 0.5, 0.75, 1, 1.5, 2).
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

from steering_matrix import SCALES, C, prompts_for  # noqa: E402

from steer.cli.loading import load_pipeline  # noqa: E402

CANDIDATE = (0.13, 0.2, 0.3, 0.45, 0.7, 1.0)  # the same number of strengths (same cost): 0.08 out, 1.0 in


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--matrix", nargs="+", required=True, help="results.json of bench/steering_matrix.py (ours)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(args.model, "cpu")
    rows, t0 = [], time.time()
    for path in args.matrix:
        res = json.loads(Path(path).read_text())
        meta = res["meta"]
        for log in res["learn"]:
            name = log["target"]
            kind = "colour" if name in C else "class"
            key = [k for k in res["summary"] if k.startswith(f"ours|open|{kind}|")]
            per = next(res["summary"][k][name] for k in key if name in res["summary"][k])
            P = prompts_for(kind, name)
            v = pipe.learn_direction(P["positive"], P["negative"], num_inference_steps=meta["steps"],
                                     guidance_scale=meta["guidance"], progress=False,
                                     calibration_grid=CANDIDATE)
            new, old = v.metadata["calibration"]["strength"], log["calibration"]["strength"]
            at = min((s for s in SCALES if s > 0), key=lambda s: abs(s - new / old))
            rows.append({"target": name, "kind": kind, "old_strength": old, "new_strength": round(new, 4),
                         "old_closest": log["calibration"]["closest"], "new_closest": v.metadata["calibration"]["closest"],
                         "new_on_old_axis": round(new / old, 3), "nearest_scale": at, "passing_scales": per["passing_scales"],
                         "old_passes": 1.0 in per["passing_scales"], "new_passes": at in per["passing_scales"]})
            print(rows[-1], f"{time.time() - t0:.0f}s", flush=True)
    summary = {"old": sum(r["old_passes"] for r in rows), "new": sum(r["new_passes"] for r in rows), "targets": len(rows),
               "top_of_grid_old": sum(r["old_closest"] >= 0.7 for r in rows), "top_of_grid_new": sum(r["new_closest"] >= 1.0 for r in rows)}
    print(summary)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "candidate_grid": CANDIDATE,
                                              "summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
