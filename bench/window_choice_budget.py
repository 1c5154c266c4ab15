"""Which calibration grid lets ``window="auto"`` fit the 2,000-row learning budget? Offline, from recorded curves.

    python bench/window_choice_budget.py [--model assets/models/demo-4x] [--out docs/steering/window_default/budget_grid.json]

The window choice calibrates two candidate windows, (0, 0.5) and the whole run. At a given strength both runs are
the same until the first half ends, so the first half can be sampled once and continued twice
(`steer.calibrate.calibrate_windows`): with 4 strengths that is 2 + 4 x 0.5 + 8 x 0.5 = 8 sample sets, the 1,920 rows
of a one-window calibration on the 6-point grid. Which 4 of the 6 grid strengths?

Every matrix target is learned once with the six-point grid on both windows (the choice as it was, 3,360 rows; the
curves are recorded), then every 4-point subset is scored offline against it: the same window chosen, and the
chosen strength within 10 % of the six-point one on that window. The subset is chosen on the six **tuning** targets
alone; the held-out ones are reported beside it. A matrix distance at a grid strength does not depend on the other
grid strengths in the call (rows are independent), so a subset's curve is the full curve's points.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import TUNING, C, K, prompts_for  # noqa: E402

import steer.learn as learn_module  # noqa: E402
from steer.calibrate import DEFAULT_GRID, MARGIN, curve_minimum  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402


def record(model: str | None) -> list[dict]:
    """Each target learned with ``window="auto"`` on the six-point grid (both windows sampled whole), and both windows'
    calibration curves."""
    pipe = load_pipeline(model, "cpu")
    original, captured = learn_module.calibrate_windows, {}

    def spy(*args, **kwargs):
        index, tried = original(*args, **kwargs)
        captured.update(index=index, tried=[r.to_dict() for r in tried])
        return index, tried

    learn_module.calibrate_windows = spy
    import steer.calibrate as calibrate_module

    branch = calibrate_module.branch_step
    calibrate_module.branch_step = lambda *a, **k: None  # each window sampled whole, as before the split
    rows = []
    try:
        for name in C + K:
            P = prompts_for("colour" if name in C else "class", name)
            pipe.learn_direction(P["positive"], P["negative"], window="auto", calibration_grid=DEFAULT_GRID, num_inference_steps=20,
                                 guidance_scale=5.0, progress=False)
            rows.append({"target": name, "kind": "colour" if name in C else "class", "chosen": captured["index"], "tried": captured["tried"]})
            print(name, captured["index"], [r["strength"] for r in captured["tried"]], flush=True)
    finally:
        learn_module.calibrate_windows, calibrate_module.branch_step = original, branch
    return rows


def strength_on(distances: list[float], points: list[int]) -> tuple[float, float, bool]:
    """The calibration's rule on a subset of the grid: full strength, relative distance, converged."""
    xs, ys = [0.0, *(DEFAULT_GRID[i] for i in points)], [1.0, *(distances[i] for i in points)]
    best, distance = curve_minimum(xs, ys)
    return MARGIN * (best if best > 0 else DEFAULT_GRID[points[len(points) // 2]]), distance, best > 0


def score(rows: list[dict], points: list[int]) -> dict:
    """How a subset's window choice and strengths compare with the six-point calibration's."""
    per = []
    for r in rows:
        full = [strength_on(t["distances"], list(range(len(DEFAULT_GRID)))) for t in r["tried"]]
        part = [strength_on(t["distances"], points) for t in r["tried"]]
        candidates = [i for i, p in enumerate(part) if p[2]] or [0]
        chosen = min(candidates, key=lambda i: part[i][1])
        per.append({"target": r["target"], "tuning": r["target"] in TUNING[r["kind"]], "window_full": r["chosen"], "window": chosen,
                    "strength_ratio": round(part[chosen][0] / full[chosen][0], 3)})
    out = {}
    for split, sel in (("tuning", [p for p in per if p["tuning"]]), ("held-out", [p for p in per if not p["tuning"]])):
        out[split] = {"same_window": sum(p["window"] == p["window_full"] for p in sel), "of": len(sel),
                      "strength_within_10_percent": sum(abs(p["strength_ratio"] - 1) <= 0.1 for p in sel),
                      "strength_ratio_range": [min(p["strength_ratio"] for p in sel), max(p["strength_ratio"] for p in sel)]}
    return {"grid": [DEFAULT_GRID[i] for i in points], **out, "targets": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    rows = record(args.model)
    subsets = [score(rows, list(points)) for points in itertools.combinations(range(len(DEFAULT_GRID)), 4)]
    # chosen on the tuning targets: the window as the six-point choice makes it, then the strengths
    def key(s):
        return (s["tuning"]["same_window"], s["tuning"]["strength_within_10_percent"], -max(abs(x - 1) for x in s["tuning"]["strength_ratio_range"]))
    ranked = sorted(subsets, key=key, reverse=True)
    for s in ranked:
        print(s["grid"], "tuning", s["tuning"]["same_window"], s["tuning"]["strength_within_10_percent"], s["tuning"]["strength_ratio_range"],
              "held-out", s["held-out"]["same_window"], s["held-out"]["strength_within_10_percent"], s["held-out"]["strength_ratio_range"])
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo",
                                              "seconds": round(time.time() - t0, 1), "best_on_tuning": ranked[0]["grid"],
                                              "subsets": ranked, "curves": rows}, indent=1))


if __name__ == "__main__":
    main()
