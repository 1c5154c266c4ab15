"""Pool `bench/steering_matrix.py` runs of one method on independent seed sets into one cell per target and scale.

    python bench/pool_matrix_runs.py docs/steering/independent/results.json docs/steering/independent/seeds5000/results.json \
        docs/steering/independent/seeds7000/results.json --out docs/steering/independent/pooled.json

Each run must use ``--noise per-image`` (every image its own noise seed) and distinct seed bases, so that the pooled
cell holds ``runs x seeds x 8`` independent images; the rates are averaged (each run has the same number of images per
cell) and judged with the matrix's own pass rule. Prints each run's counts and the pooled per-target table; the file
also holds the contradicting prompts' pooled cells (``contra``), and `bench/ship_calibrated.py` reads it as a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from steering_matrix import MONO, check_seed_bases, passes, spearman, wilson  # noqa: E402

RATES = ("success", "pixel_success", "kept", "pixel_kept", "break", "p_target")


def run_counts(data: dict) -> dict[tuple[str, str, str], tuple[int, int, int, int]]:
    """(method, kind, split) -> (pass at 1.0, and with rho(p) >= 0.9, at some scale, targets), open prompts."""
    out = {}
    for key, per in data["summary"].items():
        method, cond, kind, split = key.split("|")
        if cond == "open":
            out[(method, kind, split)] = (sum(v["pass_at_1"] for v in per.values()), sum(v.get("pass_at_1_monotone", False) for v in per.values()),
                                          sum(bool(v["passing_scales"]) for v in per.values()), len(per))
    return out


def pooled(runs: list[dict], method: str, condition: str = "open") -> dict[str, dict]:
    """Per target: the rates of ``condition``'s prompts ("open" or "contra") averaged over the runs at every scale,
    judged as the matrix judges a cell."""
    if any(r["meta"].get("noise") != "per-image" for r in runs):
        raise SystemExit("every run must be --noise per-image: per-seed cells are not independent images")
    if len({r["meta"]["seeds"] for r in runs}) != 1:
        raise SystemExit("the runs need the same number of seeds")
    check_seed_bases([r["meta"]["seed_base"] for r in runs], "per-image", runs[0]["meta"]["seeds"])  # distinct, not overlapping
    for key in ("steps", "guidance", "model", "window", "readers", "scheduler", "kinds"):
        if len({json.dumps(r["meta"].get(key)) for r in runs}) != 1:
            raise SystemExit(f"the runs differ in {key} ({[r['meta'].get(key) for r in runs]}): they measure different things")
    learned = [{(x["target"], x.get("method")): (x.get("calibration") or {}).get("strength") for x in r.get("learn", [])} for r in runs]
    if any(other != learned[0] for other in learned[1:]):
        raise SystemExit("the runs learned different directions (their learning logs' strengths differ): not one method to pool")
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        for c in r["cells"]:
            if c["condition"] == condition and c["method"] == method:
                cells.setdefault((c["kind"], c["split"], c["target"], c["scale"]), []).append(c)
    by_target: dict[tuple, dict[float, dict]] = {}
    partial = sorted({f"{target} at {scale}" for (_, _, target, scale), cs in cells.items() if len(cs) != len(runs)})
    if partial:
        raise SystemExit(f"cells missing from some runs: {', '.join(partial[:6])}{' ...' if len(partial) > 6 else ''}")
    for (kind, split, target, scale), cs in cells.items():
        by_target.setdefault((kind, split, target), {})[scale] = {k: sum(c[k] for c in cs) / len(cs) for k in RATES}
    images = 8 * runs[0]["meta"]["seeds"] * len(runs)
    out = {}
    for (kind, split, target), by in sorted(by_target.items()):
        at1 = passes(by[1.0], condition, kind)
        rho = spearman(MONO, [by[s]["p_target"] for s in MONO])
        out[target] = {"kind": kind, "split": split, "pass_at_1": at1, "pass_at_1_monotone": at1 and round(rho, 6) >= 0.9,
                       "passing_scales": [s for s in sorted(by) if s > 0 and passes(by[s], condition, kind)],
                       "success_at_0": round(by[0.0]["success"], 3), "success_at_1": round(by[1.0]["success"], 3),
                       "success_at_1_interval": wilson(by[1.0]["success"], images), "pixel_at_1": round(by[1.0]["pixel_success"], 3),
                       "kept_at_1": round(by[1.0]["kept"], 3), "break_at_1": round(by[1.0]["break"], 3), "rho_p": round(rho, 3),
                       "rho_success": round(spearman(MONO, [by[s]["success"] for s in MONO]), 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="results.json of each run")
    ap.add_argument("--method", default="ours")
    ap.add_argument("--out", default=None, help="write the pooled table here (JSON)")
    args = ap.parse_args()
    runs = [json.loads(Path(f).read_text()) for f in args.results]
    for f, r in zip(args.results, runs, strict=True):
        counts = run_counts(r)
        for method in sorted({k[0] for k in counts}):
            rows = [counts[(method, k, s)] for k in ("colour", "class") for s in ("tuning", "held-out") if (method, k, s) in counts]
            print(f"{f} {method}: " + " ".join(f"{a}/{n}" for a, _, _, n in rows) + f" | at 1.0 {sum(r[0] for r in rows)}, "
                  f"with rho {sum(r[1] for r in rows)}, at some scale {sum(r[2] for r in rows)} of {sum(r[3] for r in rows)}")
    table = pooled(runs, args.method)
    for target, v in table.items():
        print(f"{v['kind']:6s} {v['split']:8s} {target:11s} success {v['success_at_0']:.2f} -> {v['success_at_1']:.2f} "
              f"{v['success_at_1_interval']} pixel {v['pixel_at_1']:.2f} kept {v['kept_at_1']:.2f} rho(p) {v['rho_p']:.2f} "
              f"pass {v['pass_at_1']} scales {v['passing_scales']}")
    for kind in ("colour", "class"):
        for split in ("tuning", "held-out"):
            names = [t for t, v in table.items() if v["kind"] == kind and v["split"] == split]
            print(f"{kind} {split}: {sum(table[t]['pass_at_1'] for t in names)}/{len(names)} {[t for t in names if table[t]['pass_at_1']]}")
    print(f"pooled ({8 * runs[0]['meta']['seeds'] * len(runs)} images per cell): at 1.0 {sum(v['pass_at_1'] for v in table.values())}, "
          f"with rho {sum(v['pass_at_1_monotone'] for v in table.values())}, at some scale {sum(bool(v['passing_scales']) for v in table.values())} of {len(table)}")
    if args.out:
        contra = pooled(runs, args.method, "contra")  # prompts stating another value: the take-away's case
        Path(args.out).write_text(json.dumps({"runs": args.results, "method": args.method, "targets": table, "contra": contra}, indent=1) + "\n")


if __name__ == "__main__":
    main()
