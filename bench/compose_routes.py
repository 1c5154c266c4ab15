"""Two bundled directions in one call, a class edit and a colour edit that record different routes: each read where
it was calibrated (the default since this bench was written) vs both read by every cross-attention (the earlier
fallback when the routes disagreed, still `steering_readers="all"`).

    python bench/compose_routes.py --prompts empty --seeds 16 [--out docs/steering/compose_routes]
    python bench/compose_routes.py --prompts class-stated --out docs/steering/compose_routes_class_stated

Pairs (fixed before the first run): to_sneaker (layout) with to_cyan (detail), to_blue, to_red (unrouted); to_bag and
to_dress (unrouted) with to_cyan (detail). Each at [1, 1], DDIM 20, guidance 5, the demo model, on (``--prompts``)
``empty``: the prompt that leaves both attributes open (the model's captions drop both in 10 % of its training data),
16 seeds from 1000; or ``class-stated``: "a <class>" for 8 other classes x 2 seeds (the first run: its class edits
contradict the prompt, which the class directions alone do not flip); the class edit alone and the colour edit alone
(each on its own route) for reference. Judges as in `bench/steering_matrix.py`: the lab classifier (class, colour),
the pixel colour measure and the break measure. Joint success = the class target and the colour target by the
classifier and the colour by the pixel measure, on an unbroken image. Decision rule, fixed before the run: the
per-direction routes stay the default if their mean joint success over the 5 pairs is at least the every-reader one.
Writes results.json, summary.md and grid.png (rows: pair x condition, 16 images each).

``--study windows``: directions that record different *windows* (to_purple: the whole run, chosen by its calibration;
the class directions: (0, 0.5)), each applied in its own (the default since this study was added) vs the built-in
window (0.45, 0.95), the earlier fallback when the windows disagreed, and both at (0, 0.5) or over the whole run (what
a user might set instead). Pairs, fixed before the first run: to_bag, to_dress, to_trouser, to_tshirt and
to_ankle_boot (every reader, (0, 0.5)) with to_purple; the same judges and joint success. Decision rule, fixed before
the run: each direction in its own window stays the default if its mean joint success over the 5 pairs is at least
the built-in window's.

    python bench/compose_routes.py --study windows --prompts empty --seeds 16 --out docs/steering/compose_windows

``--sega``: the peer in the same run, diffusers' `SemanticStableDiffusionPipeline` on the same components with both
edits as editing prompts (the class name and the colour word, as in `bench/steering_matrix.py`), edit guidance 2, 4
and 8 for both (4 UNet batch rows per step: two edit concepts, against our 2); reported at its best scale per pair.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from steering_matrix import judge  # noqa: E402

from steer.assets import bundled_directions  # noqa: E402
from steer.cli.loading import load_pipeline  # noqa: E402
from steer.config import PAPER_WINDOW  # noqa: E402
from steer.lab import data as D  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402
from steer.vectors import SteeringVector  # noqa: E402

PAIRS = {
    "routes": (("to_sneaker", "to_cyan"), ("to_sneaker", "to_blue"), ("to_sneaker", "to_red"), ("to_bag", "to_cyan"), ("to_dress", "to_cyan")),
    "windows": (("to_bag", "to_purple"), ("to_dress", "to_purple"), ("to_trouser", "to_purple"), ("to_tshirt", "to_purple"), ("to_ankle_boot", "to_purple")),
}
CLASS_OF = {"to_sneaker": "sneaker", "to_bag": "bag", "to_dress": "dress", "to_trouser": "trouser", "to_tshirt": "t-shirt", "to_ankle_boot": "ankle boot"}
# the condition kept by default, and the one it is judged against (the decision rules above)
DECIDE = {"routes": ("routes", "all"), "windows": ("own windows", "built-in window")}


def conditions(study: str, cls: SteeringVector, col: SteeringVector) -> dict[str, dict]:
    """The calls compared for one pair (the pair at [1, 1] in each study's conditions, and each direction alone)."""
    pair = dict(steering=[cls, col], steering_scale=[1.0, 1.0])
    compared = {
        "routes": {"routes": pair, "all": {**pair, "steering_readers": "all"}},
        "windows": {"own windows": pair, "built-in window": {**pair, "steering_window": PAPER_WINDOW},
                    "both (0, 0.5)": {**pair, "steering_window": (0.0, 0.5)}, "both whole run": {**pair, "steering_window": (0.0, 1.0)}},
    }[study]
    return {**compared, "class alone": dict(steering=cls, steering_scale=1.0), "colour alone": dict(steering=col, steering_scale=1.0)}


SEGA_SCALES = (2.0, 4.0, 8.0)


def sega_sampler(pipe, steps: int, guidance: float, seed_base: int, seeds: int):
    """``sample(prompts, edits, scale)``: SEGA images (seed-major, NCHW) with every edit at edit guidance ``scale``."""
    from diffusers import SemanticStableDiffusionPipeline

    sega = SemanticStableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                                           scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sega.set_progress_bar_config(disable=True)

    def sample(prompts: list[str], edits: list[str], scale: float) -> np.ndarray:
        n = len(edits)
        out = [sega(prompts, generator=torch.Generator().manual_seed(seed_base + s), num_inference_steps=steps, guidance_scale=guidance,
                    editing_prompt=list(edits), edit_guidance_scale=[scale] * n, edit_warmup_steps=[max(1, steps // 10)] * n,
                    edit_threshold=[0.9] * n, reverse_editing_direction=[False] * n, output_type="np").images for s in range(seeds)]
        return np.concatenate(out).transpose(0, 3, 1, 2).astype(np.float32)  # one generator per call: seed-major

    return sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "assets" / "models" / "demo"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "steering" / "compose_routes"))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--prompts", choices=("empty", "class-stated"), default="empty")
    ap.add_argument("--study", choices=tuple(PAIRS), default="routes")
    ap.add_argument("--sega", action="store_true", help="add the SEGA peer (both edits as editing prompts) at edit guidance 2, 4, 8")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pipe = load_pipeline(args.model, "cpu")
    pipe.set_progress_bar_config(disable=True)
    classifier = load_classifier()
    files = bundled_directions(args.model)
    pairs = PAIRS[args.study]
    vec = {name: SteeringVector.load(files[name]) for name in {n for pair in pairs for n in pair}}

    def sample(prompts: list[str], **kw) -> np.ndarray:
        items = [(p, s) for s in range(args.seeds) for p in prompts]
        images = pipe([p for p, _ in items], generator=[torch.Generator().manual_seed(args.seed_base + s) for _, s in items],
                      num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="np", **kw).images
        return images.transpose(0, 3, 1, 2).astype(np.float32)

    sega_sample = sega_sampler(pipe, args.steps, args.guidance, args.seed_base, args.seeds) if args.sega else None
    rows, strips = [], []
    for cls_name, col_name in pairs:
        target_class, target_colour = D.CLASS_NAMES.index(CLASS_OF[cls_name]), D.COLOUR_NAMES.index(col_name[3:])
        prompts = [""] if args.prompts == "empty" else [f"a {k}" for k in D.CLASS_NAMES if k != CLASS_OF[cls_name]][:8]
        calls = conditions(args.study, vec[cls_name], vec[col_name])
        if args.sega:
            calls.update({f"SEGA {e:g}": {"sega": ([CLASS_OF[cls_name], col_name[3:]], e)} for e in SEGA_SCALES})
        for condition, kw in calls.items():
            images = sega_sample(prompts, *kw["sega"]) if "sega" in kw else sample(prompts, **kw)
            j = judge(classifier, images)
            unbroken = (j["lit_share"] <= 0.85) & (j["lit_share"] >= 0.02)
            cls_ok, col_ok, pix_ok = j["class"] == target_class, j["colour"] == target_colour, j["pixel_colour"] == target_colour
            recorded = [vec[n].metadata["recommended"] for n in (cls_name, col_name)]
            rows.append({"pair": f"{cls_name} + {col_name}", "routes": [r.get("readers") for r in recorded], "windows": [r.get("window") for r in recorded],
                         "condition": condition, "class": float(cls_ok.mean()), "colour": float(col_ok.mean()), "pixel_colour": float(pix_ok.mean()),
                         "joint": float((cls_ok & col_ok & pix_ok & unbroken).mean()), "break": float((~unbroken).mean())})
            strips.append(np.concatenate(list(images.transpose(0, 2, 3, 1)), axis=1))
            print(json.dumps(rows[-1]), flush=True)
    meta = {"command": "python bench/compose_routes.py " + " ".join(sys.argv[1:]), "machine": f"{platform.machine()} CPU, 1 thread",
            "seconds": round(time.time() - t0, 1), "study": args.study, "prompts": args.prompts, "seeds": args.seeds, "seed_base": args.seed_base, "steps": args.steps, "guidance": args.guidance}
    compared = [c for c in dict.fromkeys(r["condition"] for r in rows) if not c.endswith("alone")]
    mean = {c: float(np.mean([r["joint"] for r in rows if r["condition"] == c])) for c in compared}
    if args.sega:  # the peer at its best edit guidance, chosen per pair (in its favour)
        best = [max(r["joint"] for r in rows if r["pair"] == f"{a} + {b}" and r["condition"].startswith("SEGA")) for a, b in pairs]
        mean["SEGA at its best scale per pair"] = float(np.mean(best))
    (out / "results.json").write_text(json.dumps({"meta": meta, "mean_joint": mean, "rows": rows}, indent=1) + "\n")
    lines = [f"Command: `{meta['command']}` ({meta['machine']}, DDIM {args.steps}, guidance {args.guidance}, {args.seeds} seeds x {'1 empty prompt' if args.prompts == 'empty' else '8 prompts'}, {meta['seconds']} s)", "",
             "| pair | condition | class | colour (classifier / pixel) | joint | break |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['pair']} | {r['condition']} | {r['class']:.2f} | {r['colour']:.2f} / {r['pixel_colour']:.2f} | {r['joint']:.2f} | {r['break']:.2f} |" for r in rows]
    kept, against = DECIDE[args.study]
    lines += ["", f"Mean joint success over the {len(pairs)} pairs: " + ", ".join(f"{c} {m:.2f}" for c, m in mean.items())
              + f". Decision rule: {kept!r} stays the default if at least {against!r}: {'kept' if mean[kept] >= mean[against] else 'NOT kept'}."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    sep = np.ones((2, strips[0].shape[1], 3), dtype=np.float32)
    grid = np.concatenate([x for s in strips for x in (s, sep)][:-1])
    from PIL import Image

    Image.fromarray((grid.clip(0, 1) * 255).astype(np.uint8)).save(out / "grid.png")
    (out / "grid.txt").write_text("rows: " + ", ".join(f"{r['pair']} / {r['condition']}" for r in rows) + "\ncolumns: prompts x seeds (seed-major)\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
