"""Screen: would a read-out rule (the issue's suggestion) place ``steering_scale=1.0`` in the passing band better than
the calibration's latent-distance rule?

    python bench/readout_screen.py [--out docs/steering/readout_screen.json]

For each matrix target, the direction is learned with the defaults (its calibrated scale is 1.0). The calibration's
own samples are drawn again at the matrix's settings: the positive prompts, and the open prompts (`steer.calibrate.
open_prompts`) steered at scales 0-2 (6 seeds, the calibration's). Each final latent is read by the denoiser itself:
noised to t = 10 and passed once with the empty prompt, spatial means at the up-block resnets (the paper's reference
extraction, `steer.extract.extract_from_latents`). The read-out at scale s is the open samples' mean feature moved
along ``u = mean(positives) - mean(open at 0)``, in units of ``|u|^2`` (0 unsteered, 1 = the positives' level).

Rules, fixed before the run:
- R1: the scale where the read-out first reaches 1 (linear between the scales tried).
- R2: R1, capped at the largest scale whose part orthogonal to ``u`` (mean distance from the unsteered samples'
  features, per seed) stays within the positives' own orthogonal distance.
Each rule's scale is judged against the matrix's measured passing scales (``docs/steering/results.json``, seeds
1000-1001, and ``docs/steering/replication/results.json``, seeds 2000-2003): a pass when the measured scale nearest to
it passes. The current rule is scale 1.0.
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

from steering_matrix import TUNING, C, K, passes, prompts_for  # noqa: E402

from steer.calibrate import sample_latents  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.denoisers import default_layers, denoiser_of  # noqa: E402
from steer.extract import extract_from_latents  # noqa: E402
from steer.wording import open_prompts  # noqa: E402

SCALES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
MEASURED = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def features(pipe, latents: torch.Tensor, layers: list[str]) -> torch.Tensor:
    """(N, sum C) unconditional pooled features of final latents, each layer divided by its mean norm."""
    pooled, _ = extract_from_latents(pipe, latents, [""] * len(latents), layers, generator=torch.Generator().manual_seed(0), batch_size=64)
    parts = [pooled[n].float() / pooled[n].float().norm(dim=1).mean().clamp_min(1e-6) for n in layers]
    return torch.cat(parts, dim=1)


def orthogonal(d: torch.Tensor, unit: torch.Tensor) -> float:
    """Mean norm of the rows of ``d`` with their part along ``unit`` removed."""
    return float((d - (d @ unit)[:, None] * unit).norm(dim=1).mean())


def crossing(xs: list[float], ys: list[float], level: float = 1.0) -> float | None:
    for (x0, y0), (x1, y1) in zip(zip(xs, ys, strict=True), zip(xs[1:], ys[1:], strict=True), strict=False):
        if y0 < level <= y1:
            return x0 + (x1 - x0) * (level - y0) / (y1 - y0)
    return None


def measured_bands(path: Path) -> dict[str, list[float]]:
    cells = json.loads(path.read_text())["cells"]
    out: dict[str, list[float]] = {}
    for c in cells:
        if c["method"] == "ours" and c["condition"] == "open" and c["scale"] in MEASURED and passes(c, "open", c["kind"]):
            out.setdefault(c["target"], []).append(c["scale"])
    return out


def judged(scale: float | None, band: list[float]) -> bool:
    if scale is None:
        return False
    nearest = min(MEASURED, key=lambda m: abs(m - scale))
    return nearest in band


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "readout_screen.json"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline(None, "cpu")
    layers = default_layers(denoiser_of(pipe))
    bands = {name: measured_bands(ROOT / "docs" / "steering" / f) for name, f in (("s1000", "results.json"), ("s2000", "replication/results.json"))}
    kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance)
    rows = []
    t0 = time.time()
    for name in C + K:
        kind = "colour" if name in C else "class"
        P = prompts_for(kind, name)
        v = pipe.learn_direction(P["positive"], P["negative"], progress=False, name=f"toward {name}", **kw)
        seeds = list(range(6))  # the calibration's
        pos = [P["positive"][i % len(P["positive"])] for i in seeds]
        opened = open_prompts(pos, [P["negative"][i % len(P["negative"])] for i in seeds])
        z_pos = sample_latents(pipe, pos, seeds, **kw)
        z = sample_latents(pipe, [p for _ in SCALES for p in opened], [s for _ in SCALES for s in seeds], steering=v,
                           steering_scale=[sc for sc in SCALES for _ in seeds], **kw)
        side = pipe.unet.config.sample_size
        lat = torch.cat([z_pos, z]).reshape(len(z_pos) + len(z), pipe.unet.config.in_channels, side, side)
        f = features(pipe, lat, layers)
        f_pos, f_open = f[: len(seeds)], f[len(seeds) :].reshape(len(SCALES), len(seeds), -1)
        base = f_open[0]
        u = f_pos.mean(0) - base.mean(0)
        unit = u / u.norm()
        readout = [float(((fs - base).mean(0) @ u) / (u @ u)) for fs in f_open]

        ortho = [orthogonal(fs - base, unit) for fs in f_open]
        ortho_pos = orthogonal(f_pos - base, unit)
        r1 = crossing(SCALES, readout)
        cap = max([s for s, o in zip(SCALES, ortho, strict=True) if o <= ortho_pos], default=0.0)
        r2 = min(r1, cap) if r1 is not None else None
        split = "tuning" if name in TUNING[kind] else "held-out"
        row = {"target": name, "kind": kind, "split": split, "readout": [round(x, 3) for x in readout],
               "orthogonal": [round(x, 3) for x in ortho], "orthogonal_positives": round(ortho_pos, 3),
               "R1": None if r1 is None else round(r1, 3), "R2": None if r2 is None else round(r2, 3),
               "bands": bands_of(bands, name)}
        for rule, scale in (("current", 1.0), ("R1", r1), ("R2", r2)):
            row[f"pass_{rule}"] = {seed_set: judged(scale, b.get(name, [])) for seed_set, b in bands.items()}
        rows.append(row)
        print(name, split, row["R1"], row["R2"], row["readout"], row["bands"], {k: v for k, v in row.items() if k.startswith("pass_")}, f"{time.time() - t0:.0f}s", flush=True)
    summary = {}
    for rule in ("current", "R1", "R2"):
        for split in ("tuning", "held-out"):
            for seed_set in bands:
                summary[f"{rule}|{split}|{seed_set}"] = sum(r[f"pass_{rule}"][seed_set] for r in rows if r["split"] == split)
    print(json.dumps(summary, indent=1))
    meta = {"command": " ".join(["python", *sys.argv]), "steps": args.steps, "guidance": args.guidance, "layers": layers, "wall_seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))


def bands_of(bands: dict[str, dict[str, list[float]]], name: str) -> dict[str, list[float]]:
    return {k: sorted(b.get(name, [])) for k, b in bands.items()}


if __name__ == "__main__":
    main()
