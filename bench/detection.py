"""Memorization-detection benchmark on a hybrid lab model (docs/detection.md).

Generates from the model's memorized and ordinary prompts (several seeds each), labels every generated sample with
the nearest-neighbour criterion against the training set (memorized if d(x, NN1) / d(x, NN2) < 1/3), and scores
each sample with:

- the paper's detector (re-encode, t = 10, empty prompt, std of the max-pooled SiLU of the last up_blocks.0 resnet);
- the inline variant (same layer, recorded during sampling; final-window score and first-step early warning);
- Wen et al. 2024 (||eps(x_t, c) - eps(x_t, 0)||, first k = 1 and 10 steps);
- a grid of variants (layers, statistics, windows), chosen on even seeds and reported on odd seeds.

It reports AUROC, TPR at 1 % FPR (bootstrap 95 % interval), UNet evaluations per sample and wall time per sample,
and measures the paper's steering claim: a colour direction moves generalized samples more than memorized ones.

    python bench/detection.py --model assets/models/demo-hybrid --seeds 4 --out docs/detection

Stages cache their arrays under ``--cache`` (default runs/detection/<model name>), so a rerun only redoes what
changed (``--fresh`` ignores the cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from steer.detect.baselines import NoiseDifferenceRecorder, wen_scores  # noqa: E402
from steer.detect.detector import MemorizationDetector
from steer.detect.scores import (
    DEFAULT_INLINE_WINDOW,
    RECOMMENDED_INLINE,
    cfg_distance,
    default_detection_layer,
    spikiness,
)
from steer.engine import ActivationRecorder, window_bounds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection_report import metrics, plots, render, split_table, steering_plot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STATS = ("std", "l4_l2", "max_over_mean")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------
def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def training_images(model_dir: Path) -> np.ndarray:
    """The distinct training images of a lab model, rebuilt from its training arguments (float [N,3,32,32])."""
    from steer.lab.data import make_coloured_fashion_mnist

    args = {}
    info = model_dir / "training.json"
    if info.is_file():
        args = json.loads(info.read_text()).get("args") or {}
    return make_coloured_fashion_mnist("train", seed=int(args.get("seed", 0)), limit=args.get("limit")).images


def candidate_layers(unet) -> list[str]:
    """Detection layers to compare: every resnet of mid_block / up_blocks.0 / up_blocks.1, its SiLU and its output."""
    names = []
    for prefix, block in [("mid_block", unet.mid_block), ("up_blocks.0", unet.up_blocks[0]), ("up_blocks.1", unet.up_blocks[1])]:
        for i, _ in enumerate(block.resnets):
            names += [f"{prefix}.resnets.{i}.nonlinearity", f"{prefix}.resnets.{i}"]
    return names


def gens(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


# ----------------------------------------------------------------------------------------------------------------------
# Stage 1: generate, recording everything inline
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(pipe, items: list[tuple[str, str, int]], layers: list[str], args) -> dict[str, np.ndarray]:
    """Images, API inline scores, per-step pooled activations (cond branch, max) and per-step Wen norms."""
    det = MemorizationDetector(pipe)
    out: dict[str, list] = {"images": [], "inline": [], "early": [], "wen": [], **{f"act:{n}": [] for n in layers},
                            **{f"actu:{n}": [] for n in layers}}
    for i in range(0, len(items), args.batch_size):
        chunk = items[i : i + args.batch_size]
        rec = ActivationRecorder(pipe.unet, layers, "max", cfg=True, branch="both")
        wen = NoiseDifferenceRecorder(pipe.unet)
        with rec, wen:
            res = pipe(
                [p for p, _, _ in chunk],
                generator=gens([s for _, _, s in chunk]),
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                output_type="pt",
                memorization_detector=det,
            )
        out["images"].append(res.images.float().cpu().numpy())
        out["inline"].append(res.memorization_scores.numpy())
        out["early"].append(res.memorization_early_scores.numpy())
        out["wen"].append(wen.step_scores().numpy())
        for n in layers:
            steps = rec.by_step(n)
            both = torch.stack([steps[s] for s in sorted(steps)]).numpy()  # (steps, 2B, C): [uncond, cond]
            out[f"actu:{n}"].append(both[:, : len(chunk)])
            out[f"act:{n}"].append(both[:, len(chunk) :])
        log(f"generated {i + len(chunk)}/{len(items)}")
    cat = {k: np.concatenate(v, axis=1 if (k == "wen" or k.startswith(("act:", "actu:"))) else 0) for k, v in out.items()}
    return cat


@torch.no_grad()
def reencode(pipe, images: np.ndarray, prompts: list[str], layers: list[str]) -> dict[str, np.ndarray]:
    """Max-pooled activations of the paper's re-encode pass (t = 10), empty prompt and own prompt."""
    x = torch.from_numpy(images)
    out = {}
    for mode in ("empty", "own"):
        det = MemorizationDetector(pipe, layers=layers, prompt=mode, batch_size=100)
        reps = det.representations(x, prompts if mode == "own" else None)
        out.update({f"{mode}:{n}": v.numpy() for n, v in reps.items()})
    return out


def ground_truth(images: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from steer.lab.memorization import nn_ratio

    ratio, nn1 = nn_ratio(images, train)
    return ratio, nn1


def near_copy_diagnostic(model: Path, images: np.ndarray, prompts: np.ndarray, ratio: np.ndarray, train: np.ndarray) -> dict | None:
    """Why a memorized-prompt sample misses the 1/3 criterion: its distance to the duplicated image (d1) against the
    distance from that image to its nearest *other* training image (d_item), for copies and near copies alike."""
    from steer.lab.memorization import nn_search

    info = model / "memorized_images.json"
    if not info.is_file():
        return None
    meta = json.loads(info.read_text())
    item_of = {c: i for i, c in enumerate(meta["captions"])}
    rows = np.array([k for k, pr in enumerate(prompts) if pr in item_of])
    if not len(rows):
        return None
    dup = train[np.asarray(meta["indices"])]
    d_item = nn_search(dup, train, k=2)[0][:, 1]  # [:, 0] is the image itself
    item = np.array([item_of[prompts[k]] for k in rows])
    d1 = np.sqrt(((images[rows] - dup[item]) ** 2).reshape(len(rows), -1).sum(1))
    near = ratio[rows] >= 1 / 3
    pct = lambda a: [round(float(v), 3) for v in np.percentile(a, [5, 50, 95])] if len(a) else []  # noqa: E731
    return {"samples": int(len(rows)), "near_copies": int(near.sum()), "near_copy_items": sorted({int(i) for i in item[near]}),
            "d1_copies_p5_50_95": pct(d1[~near]), "d1_near_copies_p5_50_95": pct(d1[near]),
            "d_item_copies_p5_50_95": pct(d_item[item[~near]]), "d_item_near_copies_p5_50_95": pct(d_item[item[near]])}


def window_mean(per_step: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Mean over the steps of a fractional window of a (steps, N) array."""
    n = per_step.shape[0]
    first, stop = window_bounds(window, n)
    first = min(first, n - 1)
    return per_step[first : max(stop, first + 1)].mean(0)


def stat_np(v: np.ndarray, statistic: str) -> np.ndarray:
    return spikiness(torch.from_numpy(v), statistic).numpy()


def variant_scores(data: dict[str, np.ndarray], layers: list[str]) -> dict[str, np.ndarray]:
    """Scores of every variant, keyed ``family|layer|statistic|window``."""
    out: dict[str, np.ndarray] = {}
    windows = {"last": (0.96, 1.0), "last10%": (0.9, 1.0), "last20%": (0.8, 1.0), "last50%": (0.5, 1.0), "all": (0.0, 1.0)}
    steps = data[f"act:{layers[0]}"].shape[0]
    for n in layers:
        for st in STATS:
            per_step = stat_np(data[f"act:{n}"], st)  # (steps, N)
            for wname, w in windows.items():
                out[f"inline|{n}|{st}|{wname}"] = window_mean(per_step, w)
            for k in (1, 2, 3, 5, 10):
                if k <= steps:
                    out[f"early|{n}|{st}|first{k}"] = per_step[:k].mean(0)
            per_step_u = stat_np(data[f"actu:{n}"], st)
            for wname, w in windows.items():
                out[f"inline-uncond|{n}|{st}|{wname}"] = window_mean(per_step_u, w)
            for mode in ("empty", "own"):
                out[f"reencode-{mode}|{n}|{st}|t10"] = stat_np(data[f"{mode}:{n}"], st)
        # ours: distance between the guidance branches' pooled activations (free during CFG sampling)
        dist = cfg_distance(torch.from_numpy(data[f"actu:{n}"]), torch.from_numpy(data[f"act:{n}"])).numpy()
        for wname, w in windows.items():
            out[f"cfg-distance|{n}|l2|{wname}"] = window_mean(dist, w)
        for k in (1, 2, 3, 5, 10):
            if k <= steps:
                out[f"cfg-distance-early|{n}|l2|first{k}"] = dist[:k].mean(0)
    wen = data["wen"]
    for k in (1, 2, 3, 5, 10):
        out[f"wen|-|-|first{k}"] = wen[:k].mean(0)
    out["wen|-|-|all"] = wen.mean(0)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------------
class _Clock:
    """Wall and process-CPU seconds of a block, appended to ``wall[key]`` / ``cpu[key]``."""

    def __init__(self, wall: dict, cpu: dict, key: str):
        self.wall, self.cpu, self.key = wall, cpu, key

    def __enter__(self):
        self.t, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc) -> None:
        self.wall.setdefault(self.key, []).append(time.perf_counter() - self.t)
        self.cpu.setdefault(self.key, []).append(time.process_time() - self.c)


@torch.no_grad()
def timing(pipe, prompts: list[str], args, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Seconds per sample of each method (wall and process CPU), median over ``repeats`` alternating rounds.

    The machine is shared, so wall time is noisy; CPU time of this process is the steadier cost measure.
    """
    det = MemorizationDetector(pipe)
    det_cfg = MemorizationDetector(pipe, **RECOMMENDED_INLINE)
    kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt")
    seeds = list(range(len(prompts)))
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    pipe(prompts, generator=gens(seeds), **kw)  # warm-up, not timed
    for _ in range(repeats):
        with _Clock(wall, cpu, "plain"):
            images = pipe(prompts, generator=gens(seeds), **kw).images
        with _Clock(wall, cpu, "inline"):
            pipe(prompts, generator=gens(seeds), detect_memorization=det, **kw)
        with _Clock(wall, cpu, "inline-cfg"):
            pipe(prompts, generator=gens(seeds), detect_memorization=det_cfg, **kw)
        with _Clock(wall, cpu, "reencode"):
            det.score(images)
        for k in (1, 10):
            with _Clock(wall, cpu, f"wen{k}"):
                wen_scores(pipe, prompts, k=min(k, args.steps), generator=gens(seeds), num_inference_steps=args.steps, guidance_scale=args.guidance)
    n = len(prompts)
    return {
        "wall": {k: float(np.median(v)) / n for k, v in wall.items()},
        "cpu": {k: float(np.median(v)) / n for k, v in cpu.items()},
    }


# ----------------------------------------------------------------------------------------------------------------------
# Steering claim
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def steering_claim(pipe, data: dict, memorized: np.ndarray, args) -> dict:
    """How far the demo benchmark's red->blue direction moves memorized vs generalized samples.

    The direction (``--direction``, default the shipped ``assets/directions/red_to_blue``) is applied with the
    settings recorded in its metadata (layers, window, normalization) at the scales ``--steer-scales``; it was
    learned on the demo model, which the hybrid is fine-tuned from (``steering_strict=False``). Groups:
    ``memorized`` = samples meeting the NN criterion (memorized prompts); ``generalized`` = ordinary-prompt samples that
    are not (their prompts name a colour, like the memorized captions do); ``generalized, colour open`` = the same
    classes and seeds with the colour left open (``"a {class}"``), the setting the direction was selected for.
    Reported per scale: share classified blue, share whose colour changed, and the RMS pixel change vs scale 0."""
    from steer.lab.classifier import load_classifier, predict
    from steer.lab.data import CLASS_NAMES, COLOUR_NAMES
    from steer.vectors import SteeringVector

    clf = load_classifier()
    blue = COLOUR_NAMES.index("blue")
    _, colour0 = predict(clf, data["images"])
    cls0, _ = predict(clf, data["images"])
    vec = SteeringVector.load(args.direction)
    rec = vec.metadata.get("recommended") or {}
    settings = dict(steering_layers=rec.get("layers"), steering_window=tuple(rec.get("window", (0.0, 1.0))),
                    steering_normalize=bool(rec.get("normalize", True)), steering_strict=False)
    prompts, seeds = data["prompts"], data["seeds"]
    rng = np.random.default_rng(0)
    from_mem_prompt = np.asarray(data["groups"]) == "memorized"
    picks = {}
    for name, mask in (("memorized", memorized), ("generalized", ~memorized & ~from_mem_prompt)):
        idx = np.flatnonzero(mask & (colour0 != blue))
        picks[name] = np.sort(rng.choice(idx, min(len(idx), args.steer_samples), replace=False)) if len(idx) else idx
    groups = {name: ([prompts[j] for j in idx], seeds[idx]) for name, idx in picks.items()}
    g_idx = picks["generalized"]
    groups["generalized, colour open"] = ([f"a {CLASS_NAMES[c]}" for c in cls0[g_idx]], seeds[g_idx])
    results: dict = {"scales": list(args.steer_scales), "direction": str(args.direction), "settings": {**settings,
                     "steering_window": list(settings["steering_window"])}, "groups": {}}
    for name, (ps, sd) in groups.items():
        rows = {"n": len(ps), "blue": [], "changed": [], "rms_change": []}
        base = None
        for scale in args.steer_scales:
            imgs = []
            for i in range(0, len(ps), args.batch_size):
                res = pipe(ps[i : i + args.batch_size], generator=gens(sd[i : i + args.batch_size]), num_inference_steps=args.steps,
                           guidance_scale=args.guidance, output_type="np", steering=vec, steering_scale=scale, **settings)
                imgs.append(np.asarray(res.images, dtype=np.float32).transpose(0, 3, 1, 2))
            if not imgs:
                for k in ("blue", "changed", "rms_change"):
                    rows[k].append(float("nan"))
                continue
            x = np.concatenate(imgs)
            if base is None:
                base = x
            _, col = predict(clf, x)
            _, col_base = predict(clf, base)
            rows["blue"].append(float(np.mean(col == blue)))
            rows["changed"].append(float(np.mean(col != col_base)))
            rows["rms_change"].append(float(np.sqrt(((x - base) ** 2).reshape(len(x), -1).mean(1)).mean()))
            log(f"steering {name} scale {scale}: blue {rows['blue'][-1]:.2f} changed {rows['changed'][-1]:.2f} "
                f"rms {rows['rms_change'][-1]:.4f}")
        results["groups"][name] = rows
    m = results["groups"]["memorized"]
    for other in ("generalized", "generalized, colour open"):
        g = results["groups"][other]
        results[f"ratio {other} / memorized"] = {
            k: [a / b if b > 0 else None for a, b in zip(g[k], m[k], strict=True)] for k in ("blue", "changed", "rms_change")}
    return results


FAMILIES = ("reencode-empty", "reencode-own", "inline", "inline-uncond", "early", "cfg-distance", "cfg-distance-early", "wen")


def best_variants(table: dict[str, dict[str, float]]) -> dict[str, str]:
    """Per family, the variant with the best (TPR@1%FPR, AUROC) on split A."""
    best = {}
    for family in FAMILIES:
        fam = {k: v for k, v in table.items() if k.startswith(family + "|")}
        if fam:
            best[family] = max(fam, key=lambda k: (fam[k]["tpr1_a"], fam[k]["auroc_a"]))
    return best


def headline_methods(default_layer: str, steps: int, best: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """Label -> (variant key, UNet evaluations per sample, extra evaluations over a normal generation)."""
    methods = {
        "paper detector (re-encode, std, t=10, empty prompt)": (f"reencode-empty|{default_layer}|std|t10", f"{2 * steps} + 1", "1"),
        "inline (std, last 20 % of steps)": (f"inline|{default_layer}|std|last20%", f"{2 * steps}", "0"),
        "inline early warning (std, first step)": (f"early|{default_layer}|std|first1", "2", "0"),
        "ours: inline CFG distance (up_blocks.1.resnets.0.nonlinearity, all steps)": (
            "cfg-distance|up_blocks.1.resnets.0.nonlinearity|l2|all", f"{2 * steps}", "0"),
        "ours: early CFG distance (same layer, first 10 steps)": (
            "cfg-distance-early|up_blocks.1.resnets.0.nonlinearity|l2|first10", "20", "0 inline / 20 standalone"),
        "Wen et al. k=1": ("wen|-|-|first1", "2", "0 inline / 2 standalone"),
        "Wen et al. k=10": ("wen|-|-|first10", "20", "0 inline / 20 standalone"),
    }
    for family, k in best.items():
        window = k.split("|")[-1]
        evals = {"reencode-empty": (f"{2 * steps} + 1", "1"), "reencode-own": (f"{2 * steps} + 1", "1"),
                 "inline": (f"{2 * steps}", "0"), "inline-uncond": (f"{2 * steps}", "0"),
                 "cfg-distance": (f"{2 * steps}", "0"), "cfg-distance-early": (f"2k ({window})", "0"),
                 "early": (f"2k ({window})", "0"), "wen": (f"2k ({window})", "0")}[family]
        methods[f"best {family} on even seeds: {k}"] = (k, *evals)
    return methods


def method_cost(cost: dict[str, float], key: str) -> float | None:
    """Seconds per sample of a scored variant: a stand-alone run of what it needs (generation included)."""
    fam, _, _, window = key.split("|")
    if fam == "cfg-distance":
        return cost.get("inline-cfg", cost.get("inline"))
    if fam in ("wen", "early", "cfg-distance-early"):
        if window == "first1":
            return cost["wen1"]  # the first step with CFG: the same UNet work for both
        if window == "first10":
            return cost["wen10"]
        return None
    return cost.get(fam)


def cached(path: Path, fresh: bool, fn):
    if path.is_file() and not fresh:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **value)
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "assets/models/demo-hybrid"))
    p.add_argument("--seeds", type=int, default=2, help="seeds per prompt")
    p.add_argument("--max-prompts", type=int, default=None, help="at most this many prompts per group (default all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--timing-samples", type=int, default=10)
    p.add_argument("--timing-repeats", type=int, default=2)
    p.add_argument("--steer-samples", type=int, default=30)
    p.add_argument("--steer-scales", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.6])
    p.add_argument("--direction", default=str(ROOT / "assets/directions/red_to_blue.safetensors"),
                   help="direction for the steering claim (its recommended settings are applied)")
    p.add_argument("--direction-samples", type=int, default=16)
    p.add_argument("--skip-steering", action="store_true")
    p.add_argument("--skip-timing", action="store_true", help="no timing stage (cost columns stay empty)")
    p.add_argument("--analyze", type=float, nargs="+", default=None, metavar="RATIO",
                   help="only re-analyse the cached samples with NN-ratio thresholds RATIO (e.g. 0.3333 0.5); writes analysis.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", default=None)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--out", default=str(ROOT / "docs/detection"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from steer.cli.loading import load_pipeline

    model = Path(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else ROOT / "runs/detection" / model.name
    t_start = time.time()
    pipe = load_pipeline(model, device="cpu")
    unet = pipe.unet
    layers = candidate_layers(unet)
    default_layer = default_detection_layer(unet)

    mem_prompts = read_lines(model / "memorized_prompts.txt")[: args.max_prompts]
    ord_prompts = read_lines(model / "ordinary_prompts.txt")[: args.max_prompts]
    items = [(pr, g, 1000 * s + j) for g, ps in (("memorized", mem_prompts), ("ordinary", ord_prompts))
             for s in range(args.seeds) for j, pr in enumerate(ps)]
    key = f"s{args.seeds}-p{args.max_prompts}-n{args.steps}-g{args.guidance}"
    log(f"{model}: {len(mem_prompts)} memorized + {len(ord_prompts)} ordinary prompts x {args.seeds} seeds = {len(items)} samples")

    t0 = time.time()
    data = cached(cache / f"generate-{key}.npz", args.fresh, lambda: generate(pipe, items, layers, args))
    t_gen = time.time() - t0
    data["prompts"] = np.array([p for p, _, _ in items])
    data["groups"] = np.array([g for _, g, _ in items])
    data["seeds"] = np.array([s for _, _, s in items])
    data.update(cached(cache / f"reencode-{key}.npz", args.fresh, lambda: reencode(pipe, data["images"], list(data["prompts"]), layers)))
    train = training_images(model)
    gt = cached(cache / f"gt-{key}.npz", args.fresh, lambda: dict(zip(("ratio", "nn1"), ground_truth(data["images"], train), strict=True)))
    y = (gt["ratio"] < 1 / 3).astype(int)
    from_mem_prompt = data["groups"] == "memorized"
    log(f"ground truth: {y.sum()} memorized of {len(y)} (memorized prompts: {y[from_mem_prompt].mean():.2f}, ordinary: {y[~from_mem_prompt].mean():.2f})")

    near = near_copy_diagnostic(model, data["images"], data["prompts"], gt["ratio"], train)
    if near:
        log(f"memorized-prompt samples missing 1/3: {near['near_copies']} of {near['samples']} (items {near['near_copy_items']})")
    scores = variant_scores(data, layers)
    # sanity: the API's inline scores equal the benchmark's recomputation
    api_inline = scores[f"inline|{default_layer}|std|last20%"]
    assert np.allclose(api_inline, data["inline"], rtol=1e-4, atol=1e-5), "API inline score differs from recomputation"
    assert DEFAULT_INLINE_WINDOW == (0.8, 1.0)

    split_a = (data["seeds"] // 1000) % 2 == 0
    labels = {"nn": y, "prompt": from_mem_prompt.astype(int)}
    usable = {name: lab for name, lab in labels.items() if min(lab.sum(), len(lab) - lab.sum()) >= 2}
    primary = "nn" if "nn" in usable and y.sum() >= 10 else "prompt"
    log(f"primary labels: {primary} (nn-criterion positives: {int(y.sum())})")

    if args.analyze:
        return analyze(args, out, gt["ratio"], from_mem_prompt, scores, split_a, default_layer)

    log("timing")
    if args.skip_timing:
        tim = {clock: dict.fromkeys(("plain", "inline", "inline-cfg", "reencode", "wen1", "wen10"), float("nan"))
               for clock in ("wall", "cpu")}
    else:
        tim = timing(pipe, ord_prompts[: args.timing_samples], args, repeats=args.timing_repeats)
    cost = {}
    for clock, t in tim.items():
        cost[clock] = {"reencode-empty": t["plain"] + t["reencode"], "reencode-own": t["plain"] + t["reencode"],
                       "inline": t["inline"], "inline-uncond": t["inline"], "inline-cfg": t["inline-cfg"],
                       "wen1": t["wen1"], "wen10": t["wen10"]}

    evaluations = {}
    for name, lab in usable.items():
        table = split_table(lab, scores, split_a)
        best = best_variants(table)
        rows = []
        for label, (k, evals, extra) in headline_methods(default_layer, args.steps, best).items():
            rows.append({"method": label, "key": k, **metrics(lab, scores[k]), "held_out_b": table.get(k, {}),
                         "unet_evals": evals, "extra_evals": extra,
                         "wall_s_per_sample": method_cost(cost["wall"], k), "cpu_s_per_sample": method_cost(cost["cpu"], k)})
        evaluations[name] = {"positives": int(lab.sum()), "negatives": int(len(lab) - lab.sum()), "headline": rows,
                             "variants": table, "best": best}
        named = {r["method"].split(" (")[0].split(" on even")[0]: scores[r["key"]] for r in rows[:5]}
        plots(lab, named, out, suffix="" if name == primary else f"-{name}")

    steer_res = None
    if not args.skip_steering:
        steer_res = steering_claim(pipe, data, y.astype(bool) if primary == "nn" else from_mem_prompt, args)
        steer_res["groups_by"] = "nn-criterion" if primary == "nn" else "prompt list"
        steering_plot(steer_res, out)

    result = {
        "model": str(model),
        "training": json.loads((model / "training.json").read_text()) if (model / "training.json").is_file() else None,
        "settings": {k: v for k, v in vars(args).items()},
        "samples": int(len(y)),
        "memorized_samples": int(y.sum()),
        "memorized_rate": {"memorized_prompts": float(y[from_mem_prompt].mean()), "ordinary_prompts": float(y[~from_mem_prompt].mean())},
        "near_copies": near,
        "timing_s_per_sample": tim,
        "primary_labels": primary,
        "evaluations": evaluations,
        "steering": steer_res,
        "generation_s": t_gen,
        "total_s": time.time() - t_start,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(render(result))
    print(render(result))
    return 0


def analyze(args, out: Path, ratio: np.ndarray, from_mem_prompt: np.ndarray, scores: dict, split_a: np.ndarray,
            default_layer: str) -> int:
    """Metrics of the cached samples under several NN-ratio thresholds (no timing, no steering)."""
    lines, result = [], {}
    for thr in args.analyze:
        lab = (ratio < thr).astype(int)
        if min(lab.sum(), len(lab) - lab.sum()) < 2:
            lines.append(f"NN ratio < {thr:.3g}: {int(lab.sum())} positives — too few to evaluate")
            continue
        best = best_variants(split_table(lab, scores, split_a))
        rows = {label: {"key": k, **metrics(lab, scores[k])} for label, (k, _, _) in headline_methods(default_layer, args.steps, best).items()}
        result[f"{thr:.4g}"] = {"positives": int(lab.sum()), "from_memorized_prompts": int(lab[from_mem_prompt].sum()), "rows": rows}
        lines += ["", f"**NN ratio < {thr:.3g}**: {int(lab.sum())} positives ({int(lab[from_mem_prompt].sum())} from memorized prompts), "
                  f"{int(len(lab) - lab.sum())} negatives", "", "| method | AUROC [95 % CI] | TPR@1%FPR [95 % CI] |", "|---|---|---|"]
        for label, m in rows.items():
            lines.append(f"| {label} | {m['auroc']:.3f} [{m['auroc_ci'][0]:.3f}, {m['auroc_ci'][1]:.3f}] | "
                         f"{m['tpr1']:.2f} [{m['tpr1_ci'][0]:.2f}, {m['tpr1_ci'][1]:.2f}] |")
    q = lambda a: ", ".join(f"{v:.2f}" for v in np.percentile(a, [5, 25, 50, 75, 95]))  # noqa: E731
    lines += ["", f"NN-ratio percentiles (5/25/50/75/95): memorized prompts {q(ratio[from_mem_prompt])}; ordinary prompts {q(ratio[~from_mem_prompt])}"]
    (out / "analysis.json").write_text(json.dumps(result, indent=1))
    (out / "analysis.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
