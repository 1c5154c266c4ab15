"""How much of its layout each benchmark target's own prompt edit keeps: the signal ``readers="auto"`` routes on.

    python bench/route_choice_screen.py [--model assets/models/demo-4x] [--guidance 5 7.5] \
        [--out docs/steering/route_choice/structure_demo.json]

For each of the matrix's 18 targets (`steering_matrix.prompts_for`), the calibration's own samples are drawn: the
positive prompts and the open prompts (the attribute left to the model) from the same seeds 0-5, unsteered, 20 DDIM
steps, at each guidance scale. `steer.appearance.structure_kept` (the decoded grayscale over an 8 x 8 grid of the
frame, same-seed Pearson correlation) is what the route is chosen by; the same at every pixel (``grid=None``) is
printed beside it. A target below `steer.calibrate.LAYOUT_EDIT_BELOW` is read by the layout blocks. 480 UNet rows per target
and guidance, no images judged.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import TUNING, C, K, prompts_for  # noqa: E402

from steer.appearance import structure_kept  # noqa: E402
from steer.calibrate import LAYOUT_EDIT_BELOW, sample_latents  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.wording import open_prompts  # noqa: E402

SAMPLES = 6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model folder (default: the embedded demo model)")
    ap.add_argument("--guidance", type=float, nargs="+", default=[5.0, 7.5], help="guidance scales (the matrix learns at 5, learn_direction's default is 7.5)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "route_choice" / "structure_demo.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_pipeline(args.model, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    seeds = list(range(SAMPLES))
    rows = []
    for kind, targets in (("colour", C), ("class", K)):
        for target in targets:
            P = prompts_for(kind, target)
            pos = [P["positive"][i % len(P["positive"])] for i in seeds]
            neg = [P["negative"][i % len(P["negative"])] for i in seeds]
            row = {"target": target, "kind": kind, "split": "tuning" if target in TUNING[kind] else "held-out"}
            for g in args.guidance:
                kw = {"num_inference_steps": args.steps, "guidance_scale": g}
                z_pos = sample_latents(pipe, pos, seeds, flat=False, **kw)
                z_open = sample_latents(pipe, open_prompts(pos, neg), seeds, flat=False, **kw)
                row[f"g{g:g}"] = {"layout": round(structure_kept(pipe, z_pos, z_open), 4), "full": round(structure_kept(pipe, z_pos, z_open, grid=None), 4)}
            row["route"] = {k: ("layout" if v["layout"] < LAYOUT_EDIT_BELOW else "all") for k, v in row.items() if k.startswith("g")}
            print(json.dumps(row), flush=True)
            rows.append(row)
    gap = {}
    for g in args.guidance:
        key = f"g{g:g}"
        gap[key] = {kind: [min(r[key]["layout"] for r in rows if r["kind"] == kind), max(r[key]["layout"] for r in rows if r["kind"] == kind)] for kind in ("colour", "class")}
    meta = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "machine": f"{platform.machine()} CPU, 1 thread",
            "seconds": round(time.time() - t0, 1), "threshold": LAYOUT_EDIT_BELOW, "range_by_kind": gap}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
