"""Steering efficacy matrix on the demo model: every colour target (8) and every class target (10), three methods.

    python bench/steering_matrix.py                      # full run -> docs/steering/ (results.json, summary.md, grids)
    python bench/steering_matrix.py --quick              # 1 seed, 2 targets of each kind, our method only

For each target the direction is learned "toward X" from prompts (positive: X with every value of the other
attribute, "a blue t-shirt", "a red dress"; negative: the same prompts with X left open, "a t-shirt", "a red item"; a
probe on the tuning colours found this contrast edits better than "X vs the other values of its attribute", and on the
tuning classes it edits as well as "X vs the other classes", docs/steering.md), then applied to prompts that leave the attribute open
("a sneaker" -> blue; "a red item" -> ankle boot) and prompts that contradict it ("a red sneaker" -> blue), 8 prompts
x seeds per cell, at scales 0, 0.25, 0.5, 0.75, 1.0 (and 1.5, 2.0 to see past the full edit).

Methods in the same run:
Scales 1.5 and 2.0 are run for the calibrated methods only. Run the methods as separate processes to use several cores
(``--methods ours``, ``--methods paper,sega --out docs/steering/peers``, ``--methods casteer --out docs/steering/casteer``).

- ``ours``: `learn_direction` with its defaults (the text-token site, split CFG branch, token-norm units with norm
  preservation, classifier-free calibration): scale 1.0 = the self-calibrated full edit.
- ``casteer``: ``preset="casteer"`` (CASteer's recipe: per-step cross-attention output differences of paired same-seed
  trajectories at every ``attn2``, one vector per step bucket, over the whole run), calibrated like ours.
- ``attn2``, ``attn2-1``, ``blocks``, ``resnets``: the site ablation (`CALIBRATED`): CASteer's extraction at every
  cross-attention output (4 step buckets; ``attn2-1``: one), every transformer block output, every resnet output,
  applied and calibrated as ours over its window (0, 0.5).
- ``paper``: ``preset="paper"`` (mean of the positive set's reference samples at the up-block resnets, added on the
  conditional branch over (0.45, 0.95)); scale s means the paper's alpha = 0.5 s (its largest alpha is 0.5).
- ``sega``: diffusers' `SemanticStableDiffusionPipeline` on the same components, editing prompt = the target word,
  edit guidance scale = 8 s (3 UNet batch rows per step instead of 2).

Judges: the lab classifier (class and colour heads; success = the target is seen; kept = the other attribute equals
the unsteered image's), a pixel-level colour measure (the mean colour of the lit pixels, nearest of the 8 tints) and a
break measure (the lit share of the frame outside [0.02, 0.85]: nothing left, or a full-frame wash). A target passes at
scale 1.0 when success >= 0.8 (classifier; for colour also the pixel measure), kept >= 0.8 and break <= 5 %.
Monotonicity: Spearman's rho of the success rate and of the mean target probability over scales 0 -> 1; the issue's
full rule (the pass at 1.0 and rho of the target probability >= 0.9) is counted apart. Every image has its own noise
seed (``--noise per-image``, since 2026-12-03; before, the 8 prompts of a seed shared it, so a cell was ``seeds``
draws, not ``8 x seeds`` images), shared by the reference, every scale and every method, SEGA included.

The tuning set (used while developing the method) and the held-out set were fixed before the matrix was run;
results are reported apart.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.lab import data as D  # noqa: E402
from steer.lab.classifier import load_classifier  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "steering"
C, K = D.COLOUR_NAMES, D.CLASS_NAMES
TUNING = {"colour": ("blue", "red", "green"), "class": ("ankle boot", "trouser", "bag")}
SCALES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
MONO = (0.0, 0.25, 0.5, 0.75, 1.0)
FEATURE_GRID = (0.0025, 0.005, 0.01, 0.02, 0.04, 0.08)
# calibrated methods (1.0 = full edit) -> their `learn_direction` arguments
CALIBRATED: dict[str, dict] = {
    "ours": {"preset": "text"},
    "casteer": {"preset": "casteer"},
    # the site ablation: CASteer's extraction (paired same-seed trajectories, pos - neg per step bucket) at each kind of
    # denoiser site, with everything else as ours (window (0, 0.5), split branch, token-norm units, norm preserved,
    # calibrated), so the site is the only difference from `ours` (which reads the text tokens themselves)
    "attn2": {"preset": "casteer", "window": (0.0, 0.5)},  # every cross-attention output, 4 step buckets
    "attn2-1": {"preset": "casteer", "window": (0.0, 0.5), "step_buckets": 1},  # the same, one vector for every step
    # transformer block outputs and every resnet output; their grid starts 32x lower (the default grid's smallest
    # strength, 0.08 of each position's norm, already moves the samples 4.8x farther from the positives' own than the
    # unsteered ones at these sites)
    "blocks": {"preset": "casteer", "window": (0.0, 0.5), "layers": "*attentions.[0-9]", "calibration_grid": FEATURE_GRID},
    "resnets": {"preset": "casteer", "window": (0.0, 0.5), "layers": "*resnets.[0-9]", "calibration_grid": FEATURE_GRID},
}
TINTS = np.asarray([D.COLOURS[c] for c in C], dtype=np.float32)


def direction_name(target: str) -> str:
    """The bundled direction a target ships as: ``to_<target>``, spaces as ``_`` and hyphens dropped (``to_tshirt``)."""
    return "to_" + target.replace(" ", "_").replace("-", "")


def prompts_for(kind: str, target: str) -> dict[str, list[str]]:
    """Learning and evaluation prompts of one target."""
    if kind == "colour":
        t = C.index(target)
        others = [c for c in C if c != target]
        return {
            "positive": [f"a {target} {k}" for k in K],
            "negative": [f"a {k}" for k in K],
            "open": [f"a {K[(i + t) % 10]}" for i in range(8)],
            "contra": [f"a {others[(i + t) % 7]} {K[(i + 2 * t) % 10]}" for i in range(8)],
        }
    t = K.index(target)
    others = [k for k in K if k != target]
    return {
        "positive": [f"a {c} {target}" for c in C],
        "negative": [f"a {c} item" for c in C],
        "open": [f"a {C[(i + t) % 8]} item" for i in range(8)],
        "contra": [f"a {C[(i + t) % 8]} {others[(i + t) % 9]}" for i in range(8)],
    }


@torch.no_grad()
def judge(classifier, images: np.ndarray) -> dict[str, np.ndarray]:
    """Classifier predictions and probabilities, pixel colour and lit share of [N, 3, 32, 32] images in [0, 1]."""
    x = torch.as_tensor(images)
    cls_logits, col_logits = classifier(x)
    lit = images.max(1) > 0.25  # [N, 32, 32]
    share = lit.mean((1, 2))
    mean_rgb = (images * lit[:, None]).sum((2, 3)) / np.maximum(lit.sum((1, 2)), 1)[:, None]
    chroma = mean_rgb / np.maximum(mean_rgb.max(1, keepdims=True), 1e-6)
    pixel_colour = np.argmin(((chroma[:, None, :] - TINTS[None]) ** 2).sum(-1), axis=1)
    return {
        "class": cls_logits.argmax(1).numpy(), "colour": col_logits.argmax(1).numpy(),
        "p_class": cls_logits.softmax(1).numpy(), "p_colour": col_logits.softmax(1).numpy(),
        "pixel_colour": pixel_colour, "lit_share": share,
    }


def spearman(xs, ys) -> float:
    from scipy.stats import spearmanr

    if np.allclose(ys, ys[0]):
        return 0.0
    return float(spearmanr(xs, ys).statistic)


class Runner:
    def __init__(self, pipe, classifier, steps: int, guidance: float, seeds: int, seed_base: int = 1000, noise: str = "per-seed"):
        self.pipe, self.classifier, self.steps, self.guidance, self.seeds = pipe, classifier, steps, guidance, seeds
        self.seed_base = seed_base
        # "per-image" (this script's default since 2026-12-03, `--noise`): prompt i of draw s starts from seed
        # seed_base + s * len(prompts) + i, so a cell's images are independent draws; "per-seed" (every run before,
        # and the default for the other benches that import this class, so that their documented runs reproduce):
        # every prompt of draw s from seed_base + s, so the 8 prompts of a draw share their noise and a cell of
        # 2 seeds x 8 prompts was 2 draws (class-open prompts differ by a colour word only: one layout per draw)
        self.noise = noise
        self.rows = 0
        pipe.unet.register_forward_pre_hook(lambda _m, a: setattr(self, "rows", self.rows + a[0].shape[0]))
        self._sega = None

    def seed(self, draw: int, index: int, count: int) -> int:
        """The noise seed of prompt ``index`` (of ``count``) in ``draw``: the same for the reference, every scale and
        every method, so that a steered image is judged against the unsteered one from its own noise."""
        return self.seed_base + (draw * count + index if self.noise == "per-image" else draw)

    def sample(self, prompts: list[str], scales: list[float] | None = None, **kw) -> np.ndarray:
        """Every prompt x seed, once per scale (one batched call per scale chunk)."""
        scales = scales if scales is not None else [None]
        items = [(i, s, sc) for sc in scales for s in range(self.seeds) for i in range(len(prompts))]
        out = []
        for i in range(0, len(items), 48):
            chunk = items[i : i + 48]
            extra = dict(kw)
            if chunk[0][2] is not None:
                extra["steering_scale"] = [sc for _, _, sc in chunk]
            images = self.pipe(
                [prompts[i] for i, _, _ in chunk], generator=[torch.Generator().manual_seed(self.seed(s, i, len(prompts))) for i, s, _ in chunk],
                num_inference_steps=self.steps, guidance_scale=self.guidance, output_type="np", **extra,
            ).images
            out.append(images.transpose(0, 3, 1, 2))
        return np.concatenate(out).astype(np.float32)

    def sega(self, prompts: list[str], edit: str, scale: float) -> np.ndarray:
        from diffusers import SemanticStableDiffusionPipeline

        if self._sega is None:
            p = self.pipe
            self._sega = SemanticStableDiffusionPipeline(
                vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet, scheduler=p.scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            )
            self._sega.set_progress_bar_config(disable=True)
        out = []
        for s in range(self.seeds):  # one generator per image, the reference's (one per call drew 7 of 8 from other noise)
            images = self._sega(
                prompts, generator=[torch.Generator().manual_seed(self.seed(s, i, len(prompts))) for i in range(len(prompts))],
                num_inference_steps=self.steps,
                guidance_scale=self.guidance, editing_prompt=[edit], edit_guidance_scale=[scale],
                edit_warmup_steps=[max(1, self.steps // 10)], edit_threshold=[0.9], output_type="np",
            ).images
            out.append(images.transpose(0, 3, 1, 2))
        # seed-major like `sample`
        return np.concatenate(out).astype(np.float32)


def check_seed_bases(bases: list[int], noise: str, seeds: int, prompts: int = 8) -> None:
    """Refuse seed bases whose images would not be independent when pooled: a base twice, several bases with per-seed
    noise (every prompt of a draw shares it), or per-image ranges (``base .. base + seeds x prompts``) that overlap."""
    if len(set(bases)) != len(bases):
        raise SystemExit(f"--seed-base {' '.join(map(str, bases))}: a base given twice would count its images twice")
    if noise == "per-seed" and len(bases) > 1:
        raise SystemExit("--noise per-seed with several seed bases: per-seed cells are not independent images to pool")
    ranges = sorted((b, b + seeds * prompts) for b in bases)
    if any(a[1] > b[0] for a, b in zip(ranges, ranges[1:], strict=False)):
        raise SystemExit(f"--seed-base {' '.join(map(str, bases))}: their noise seeds overlap ({ranges}) at {seeds} seeds")


def cell_metrics(j: dict, ref: dict, kind: str, target: int) -> dict[str, float]:
    edited, other = ("colour", "class") if kind == "colour" else ("class", "colour")
    success = j[edited] == target
    pixel = j["pixel_colour"] == target if kind == "colour" else success
    broken = (j["lit_share"] > 0.85) | (j["lit_share"] < 0.02)
    kept = j[other] == ref[other]
    # the colour a class edit keeps, by the pixel measure too (the classifier's colour head reads a faint background
    # tint as a hue change: docs/steering.md); a colour edit's other attribute is the class, judged by the classifier
    pixel_kept = j["pixel_colour"] == ref["pixel_colour"] if kind == "class" else kept
    return {
        "success": float(success.mean()),
        "pixel_success": float(pixel.mean()),
        "kept": float(kept.mean()),
        "pixel_kept": float(pixel_kept.mean()),
        "break": float(broken.mean()),
        "p_target": float(j["p_" + edited][:, target].mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=1000, help="first sample seed (a replication on fresh seeds: e.g. 2000)")
    ap.add_argument("--noise", choices=("per-image", "per-seed"), default="per-image",
                    help="per-image: every image its own noise seed (default since 2026-12-03); per-seed: the 8 prompts of a "
                         "seed share their noise, as every run before (to reproduce them)")
    ap.add_argument("--methods", default="ours,paper,sega")
    ap.add_argument("--sega-wide", action="store_true", help="sweep SEGA's edit guidance to 12 and 16 too (scales 1.5, 2.0), as "
                    "far past its default range as ours goes past its full edit")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default=None, help="pipeline folder (default: the embedded demo model)")
    ap.add_argument("--kinds", default="colour,class", help="target kinds to run (colour, class or both)")
    ap.add_argument("--targets", default=None, help="comma-separated targets to run, of the kinds run (default: every one)")
    ap.add_argument("--learn-steps", type=int, default=None, help="sampling steps of the calibrated methods' learning (default: --steps)")
    ap.add_argument("--window", default=None, help="learn the calibrated methods with this window: 'auto' or start,end (default: the preset's)")
    ap.add_argument("--scheduler", default=None, help="a diffusers scheduler class to learn and sample with, from the model's own config "
                    "(e.g. DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler; default: the model's)")
    ap.add_argument("--readers", default=None, help="learn text directions read only by these cross-attentions ('auto', 'all', 'layout', 'detail' or comma-separated attn2 globs; default: the preset's, 'auto')")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    pipe = load_pipeline(args.model, "cpu")
    if args.scheduler:  # every method learns and samples with it (SEGA too: it shares the pipeline's scheduler)
        import diffusers

        pipe.scheduler = getattr(diffusers, args.scheduler).from_config(pipe.scheduler.config)
    classifier = load_classifier()
    seeds = 1 if args.quick else args.seeds
    run = Runner(pipe, classifier, args.steps, args.guidance, seeds, args.seed_base, args.noise)
    methods = args.methods.split(",")
    kinds = args.kinds.split(",")
    window = {} if args.window is None else {"window": "auto" if args.window == "auto" else tuple(float(x) for x in args.window.split(","))}
    if args.readers is not None:
        window["readers"] = args.readers.split(",") if "," in args.readers else args.readers
    targets = [("colour", c) for c in C if "colour" in kinds] + [("class", k) for k in K if "class" in kinds]
    if args.targets is not None:
        wanted = args.targets.split(",")
        unknown = [t for t in wanted if t not in C and t not in K]
        if unknown:
            raise SystemExit(f"--targets: {', '.join(unknown)} is no colour or class of the demo data")
        targets = [(kind, name) for kind, name in targets if name in wanted]
    if args.quick:
        targets = [("colour", "blue"), ("colour", "orange"), ("class", "ankle boot"), ("class", "sneaker")]
        methods = ["ours"]
    results: list[dict] = []
    learn_log: list[dict] = []
    grids: dict[str, dict[str, np.ndarray]] = {}
    for kind, name in targets:
        P = prompts_for(kind, name)
        target = (C if kind == "colour" else K).index(name)
        split = "tuning" if name in TUNING[kind] else "held-out"
        refs = {cond: run.sample(P[cond]) for cond in ("open", "contra")}
        ref_j = {cond: judge(classifier, refs[cond]) for cond in refs}
        for method in methods:
            rows0, t_learn = run.rows, time.time()
            if method in CALIBRATED:  # ours (the text preset, the default), CASteer's recipe or a site of the ablation
                v = pipe.learn_direction(P["positive"], P["negative"], **{**CALIBRATED[method], **window}, num_inference_steps=args.learn_steps or args.steps, guidance_scale=args.guidance, progress=False, name=f"toward {name}")
                learn_log.append({"target": name, "method": method, "unet_rows": run.rows - rows0, "seconds": round(time.time() - t_learn, 1), "calibration": v.metadata["calibration"],
                                  **{k: v.metadata[k] for k in ("window_choice", "route_choice") if k in v.metadata}})
                steer_kw = {"steering": v}
            elif method == "paper":
                v = pipe.learn_direction(P["positive"], preset="paper", num_samples=8, num_inference_steps=args.steps, guidance_scale=args.guidance, progress=False)
                learn_log.append({"target": name, "method": "paper", "unet_rows": run.rows - rows0, "seconds": round(time.time() - t_learn, 1)})
                steer_kw = {"steering": 0.5 * v}
            for cond in ("open", "contra"):
                for sc in (SCALES if method in CALIBRATED or (method == "sega" and args.sega_wide) else MONO):
                    rows_before = run.rows
                    if sc == 0.0:
                        imgs = refs[cond]
                    elif method == "sega":
                        imgs = run.sega(P[cond], name, 8.0 * sc)
                    else:
                        imgs = run.sample(P[cond], [sc], **steer_kw)
                    per_image_rows = (run.rows - rows_before) / len(imgs) / args.steps if sc else 2.0
                    m = cell_metrics(judge(classifier, imgs), ref_j[cond], kind, target)
                    m["pixel_similarity"] = float(1 - np.abs(imgs - refs[cond]).mean())
                    results.append({"kind": kind, "target": name, "split": split, "method": method, "condition": cond, "scale": sc, "rows_per_step": per_image_rows, **m})
                    if cond == "open" and sc in MONO:
                        grids.setdefault(f"{kind}:{name}", {})[f"{method}@{sc}"] = imgs[: len(P[cond])]
            shown = [r for r in results if r["target"] == name and r["method"] == method]
            print(f"{kind} {name} {method}", [(r["condition"], r["scale"], round(r["success"], 2), round(r["kept"], 2), round(r["break"], 2)) for r in shown], f"{time.time() - t0:.0f}s", flush=True)
    meta = {"command": " ".join(["python", *sys.argv]), "model": args.model or "assets/models/demo", "machine": f"{platform.machine()} CPU, {args.threads} thread(s)", "steps": args.steps,
            "guidance": args.guidance, "seeds": seeds, "seed_base": args.seed_base, "noise": args.noise, "window": args.window, "readers": args.readers, "scheduler": type(pipe.scheduler).__name__, "prompts_per_cell": 8, "wall_seconds": round(time.time() - t0, 1)}
    summary = summarise(results, methods, images=8 * seeds)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "learn": learn_log, "cells": results}, indent=1))
    (out / "summary.md").write_text(render(summary, meta, learn_log))
    save_grids(grids, out, methods)
    print(render(summary, meta, learn_log))


def passes(r: dict, cond: str, kind: str, kept: str = "kept") -> bool:
    """The pass rule of one cell: success >= 0.8 on open prompts, >= 0.5 on contradicting ones (colour: by the
    classifier and the pixel measure), the other attribute ``kept`` >= 0.8 and break <= 5 %."""
    need = 0.8 if cond == "open" else 0.5
    ok = r["success"] >= need and r[kept] >= 0.8 and r["break"] <= 0.05
    return ok and (kind != "colour" or r["pixel_success"] >= need)


def wilson(rate: float, n: int, z: float = 1.96) -> list[float]:
    """The 95 % Wilson interval of a rate measured on ``n`` independent images (a cell's images are independent only
    with ``--noise per-image``; with per-seed noise they are ``seeds`` clusters and this understates the width)."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(float(centre - half), 3), round(float(centre + half), 3)]


def non_decreasing(values: list[float], images: int) -> bool:
    """Whether a success curve never falls by more than one image's worth (``1 / images``) from one scale to the next:
    monotone in the sense the slider needs, where Spearman also counts ties at a saturated 1.0 against it
    ([0, 0.5, 1, 1, 1] has rho 0.89)."""
    return all(b >= a - 1.0 / images - 1e-9 for a, b in zip(values, values[1:], strict=False))


def summarise(results: list[dict], methods: list[str], images: int = 16) -> dict:
    """Per method x split x kind x condition: targets passing at 1.0 (and at the method's best scale), monotonicity
    (``images``: per cell, for `non_decreasing`)."""
    out: dict = {}
    for method in methods:
        for cond in ("open", "contra"):
            for kind in ("colour", "class"):
                for split in ("tuning", "held-out"):
                    rows = [r for r in results if r["method"] == method and r["condition"] == cond and r["kind"] == kind and r["split"] == split]
                    names = sorted({r["target"] for r in rows})
                    per = {}
                    for n in names:
                        rs = {r["scale"]: r for r in rows if r["target"] == n}
                        passing = [s for s in SCALES if s > 0 and s in rs and passes(rs[s], cond, kind)]
                        rho_p = spearman(MONO, [rs[s]["p_target"] for s in MONO])
                        per[n] = {
                            "pass_at_1": passes(rs[1.0], cond, kind),
                            # the full rule: the pass at 1.0 and Spearman >= 0.9 of the target probability over
                            # 0 -> 1 (continuous: the success rate's saturated ties read [0, .5, 1, 1, 1] as 0.89)
                            "pass_at_1_monotone": passes(rs[1.0], cond, kind) and round(rho_p, 6) >= 0.9,
                            "success_at_0": rs[0.0]["success"] if 0.0 in rs else None,
                            "success_at_1_interval": wilson(rs[1.0]["success"], images),
                            "pass_at_1_pixel_kept": passes(rs[1.0], cond, kind, kept="pixel_kept"),
                            "passing_scales": passing,
                            "success_at_1": rs[1.0]["success"], "kept_at_1": rs[1.0]["kept"], "pixel_kept_at_1": rs[1.0]["pixel_kept"], "break_at_1": rs[1.0]["break"],
                            "pixel_at_1": rs[1.0]["pixel_success"],
                            "rho_success": spearman(MONO, [rs[s]["success"] for s in MONO]),
                            "rho_p": rho_p,
                            "non_decreasing": non_decreasing([rs[s]["success"] for s in MONO], images),
                        }
                    if per:
                        out[f"{method}|{cond}|{kind}|{split}"] = per
    return out


def render(summary: dict, meta: dict, learn_log: list[dict]) -> str:
    sampler = meta.get("scheduler", "DDIMScheduler").removesuffix("Scheduler")  # runs before --scheduler: the model's DDIM
    lines = [f"Command: `{meta['command']}` ({meta['machine']}, {sampler} {meta['steps']}, guidance {meta['guidance']}, "
             f"{meta['seeds']} seeds x {meta['prompts_per_cell']} prompts per cell, {meta['wall_seconds']} s)", "",
             "| method | prompts | kind | split | pass at 1.0 | pass at 1.0 and rho(p) >= 0.9 | pass at 1.0, kept by pixel colour | pass at any scale | mean success / kept / break at 1.0 | median rho (success, p) | success non-decreasing 0 -> 1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, per in summary.items():
        method, cond, kind, split = key.split("|")
        vals = list(per.values())
        at1 = sum(v["pass_at_1"] for v in vals)
        at1_pixel = sum(v["pass_at_1_pixel_kept"] for v in vals)
        at1_mono = sum(v.get("pass_at_1_monotone", False) for v in vals)
        anyp = sum(bool(v["passing_scales"]) for v in vals)
        mean = {k: np.mean([v[k] for v in vals]) for k in ("success_at_1", "kept_at_1", "break_at_1")}
        med = {k: np.median([v[k] for v in vals]) for k in ("rho_success", "rho_p")}
        lines.append(f"| {method} | {cond} | {kind} | {split} | {at1}/{len(vals)} | {at1_mono}/{len(vals)} | {at1_pixel}/{len(vals)} | {anyp}/{len(vals)} | "
                     f"{mean['success_at_1']:.2f} / {mean['kept_at_1']:.2f} / {mean['break_at_1']:.2f} | {med['rho_success']:.2f}, {med['rho_p']:.2f} | "
                     f"{sum(v.get('non_decreasing', False) for v in vals)}/{len(vals)} |")
    for method in CALIBRATED:
        logs = [x for x in learn_log if x.get("method", "ours") == method]
        if logs:
            lines += ["", f"Learning ({method}): {np.mean([x['unet_rows'] for x in logs]):.0f} UNet batch rows and "
                      f"{np.mean([x['seconds'] for x in logs]):.1f} s per direction on average; calibrated strengths "
                      f"{min(x['calibration']['strength'] for x in logs):.3f}-{max(x['calibration']['strength'] for x in logs):.3f}."]
    return "\n".join(lines) + "\n"


def save_grids(grids: dict, out: Path, methods: list[str]) -> None:
    """One PNG per target kind: rows = target x method, columns = scales 0..1, each cell 8 open-prompt images."""
    from PIL import Image

    for kind in ("colour", "class"):
        keys = [k for k in grids if k.startswith(kind)]
        if not keys:
            continue
        rows = []
        for key in keys:
            for method in methods:
                cells = [grids[key].get(f"{method}@{s}") for s in MONO]
                if any(c is None for c in cells):
                    continue
                strip = [np.concatenate(list(c.transpose(0, 2, 3, 1)), axis=1) for c in cells]  # 8 images side by side
                sep = np.ones((32, 4, 3), dtype=np.float32)
                rows.append(np.concatenate([x for s in strip for x in (s, sep)][:-1], axis=1))
        grid = np.concatenate([np.concatenate([r, np.ones((2, r.shape[1], 3), dtype=np.float32)]) for r in rows])
        Image.fromarray((grid.clip(0, 1) * 255).astype(np.uint8)).save(out / f"grid_{kind}.png")
        (out / f"grid_{kind}.txt").write_text("rows: " + ", ".join(f"{k.split(':')[1]}/{m}" for k in keys for m in methods) + "\ncolumns: scales " + ", ".join(map(str, MONO)) + " (8 open prompts each)\n")


if __name__ == "__main__":
    main()
