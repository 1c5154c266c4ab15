"""Steering efficacy on the demo model: does a direction edit the attribute, and what does it preserve?

    python bench/steering_efficacy.py                  # full run, writes docs/efficacy/ (results.json, plots)
    python bench/steering_efficacy.py --quick          # a small smoke version

Stage 1 (sites): a colour direction (red -> blue, ``mean_diff``, reference mode) is applied at several sites (the
paper's resnet layers, the up-block attention outputs), windows and spatial modes over a scale grid, with
``steering_normalize`` so scales are comparable. The best configuration = highest success whose class preservation stays >= 0.8.
Stage 2 (methods): at that configuration, a colour and a class direction learned with ``mean`` (paper),
``mean_diff`` and ``pca`` from prompts (fast and reference mode) and from images, over the scale grid.
Stage 3 (baselines): SEGA (`SemanticStableDiffusionPipeline` on the same components) and regenerating with the
edited prompt and the same seed.

Each test prompt either leaves the attribute open ("a sneaker" -> blue) or contradicts it ("a red sneaker" -> blue).
Success = the lab classifier sees the target attribute; preservation = the other attribute is unchanged and the
pixel similarity (1 - mean |x - x_orig|) to the unsteered image of the same seed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steer.cli.loading import load_pipeline  # noqa: E402
from steer.denoisers import default_layers, list_layers
from steer.lab import data as D  # noqa: E402
from steer.lab.classifier import load_classifier, predict  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "efficacy"


@dataclass
class Task:
    name: str
    attribute: str  # "colour" or "class": what the direction changes
    target: int
    source: int
    open_prompts: list[str]
    contra_prompts: list[str]
    edited_prompts_open: list[str]
    edited_prompts_contra: list[str]
    sega_edit: str
    sega_reverse: str


def make_tasks(n_items: int) -> list[Task]:
    blue, red = D.COLOUR_NAMES.index("blue"), D.COLOUR_NAMES.index("red")
    boot, sneaker = D.CLASS_NAMES.index("ankle boot"), D.CLASS_NAMES.index("sneaker")
    classes = [c for c in D.CLASS_NAMES][:n_items]
    colours = [c for c in D.COLOUR_NAMES if c not in ("red", "blue")][:n_items]
    colour = Task(
        "red->blue", "colour", blue, red,
        open_prompts=[f"a {c}" for c in classes],
        contra_prompts=[f"a red {c}" for c in classes],
        edited_prompts_open=[f"a blue {c}" for c in classes],
        edited_prompts_contra=[f"a blue {c}" for c in classes],
        sega_edit="a blue item", sega_reverse="a red item",
    )
    cls = Task(
        "sneaker->ankle boot", "class", boot, sneaker,
        open_prompts=[f"a {c} item" for c in colours],
        contra_prompts=[f"a {c} sneaker" for c in colours],
        edited_prompts_open=[f"a {c} ankle boot" for c in colours],
        edited_prompts_contra=[f"a {c} ankle boot" for c in colours],
        sega_edit="a ankle boot", sega_reverse="a sneaker",
    )
    return [colour, cls]


class Bench:
    def __init__(self, pipe, classifier, steps: int, guidance: float, seeds: int):
        self.pipe, self.classifier = pipe, classifier
        self.steps, self.guidance, self.seeds = steps, guidance, seeds
        self.unet_evals = 0
        self._counter = pipe.unet.register_forward_pre_hook(self._count)

    def _count(self, _m, args):
        self.unet_evals += args[0].shape[0]  # rows of the UNet batch = evaluations per image

    def sample(self, prompts: list[str], **kwargs) -> np.ndarray:
        rows = [(p, s) for s in range(self.seeds) for p in prompts]
        out = []
        for i in range(0, len(rows), 32):
            chunk = rows[i : i + 32]
            images = self.pipe(
                [p for p, _ in chunk],
                generator=[torch.Generator().manual_seed(1000 + s) for _, s in chunk],
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                output_type="np",
                **kwargs,
            ).images
            out.append(images.transpose(0, 3, 1, 2))
        return np.concatenate(out).astype(np.float32)

    def score(self, images: np.ndarray, original: np.ndarray, task: Task) -> dict:
        cls, col = predict(self.classifier, images)
        cls0, col0 = predict(self.classifier, original)
        edited, other = (col, cls) if task.attribute == "colour" else (cls, col)
        other0 = cls0 if task.attribute == "colour" else col0
        return {
            "success": float(np.mean(edited == task.target)),
            "other_kept": float(np.mean(other == other0)),
            "pixel_similarity": float(1 - np.mean(np.abs(images - original))),
        }


def learn(pipe, task: Task, method: str, source: str, layers: list[str], n: int, steps: int, guidance: float, data=None):
    """Learn a direction for ``task``; returns (vector, seconds, unet_evals_spent)."""
    t0 = time.time()
    if task.attribute == "colour":
        pos_p = [f"a blue {c}" for c in D.CLASS_NAMES]
        neg_p = [f"a red {c}" for c in D.CLASS_NAMES]
    else:
        pos_p = [f"a {c} ankle boot" for c in D.COLOUR_NAMES]
        neg_p = [f"a {c} sneaker" for c in D.COLOUR_NAMES]
    kw = dict(layers=layers, method=method, num_samples=n, num_inference_steps=steps, guidance_scale=guidance, progress=False, batch_size=16)
    negative = neg_p if method != "mean" else None
    if source in ("fast", "reference"):
        v = pipe.learn_direction(pos_p, negative, mode=source, **kw)
        evals = (2 if method != "mean" else 1) * n * steps * 2 + ((2 if method != "mean" else 1) * n if source == "reference" else 0)
    else:  # images from the training data with their own captions
        if task.attribute == "colour":
            pos_idx = np.where(data.colours == task.target)[0][:n]
            neg_idx = np.where(data.colours == task.source)[0][:n]
        else:
            pos_idx = np.where(data.classes == task.target)[0][:n]
            neg_idx = np.where(data.classes == task.source)[0][:n]
        pos_img = [torch.from_numpy(data.images[i]).float() for i in pos_idx]
        neg_img = [torch.from_numpy(data.images[i]).float() for i in neg_idx]
        caps = [D.caption_for(int(data.colours[i]), int(data.classes[i])) for i in pos_idx] + [D.caption_for(int(data.colours[i]), int(data.classes[i])) for i in neg_idx]
        kw.pop("num_samples")
        v = pipe.learn_direction(pos_img, neg_img if method != "mean" else None, image_prompts=caps, **kw)
        evals = len(pos_idx) + (len(neg_idx) if method != "mean" else 0)
    return v, time.time() - t0, evals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    pipe = load_pipeline(args.model, "cpu")
    classifier = load_classifier()
    n_items, seeds, n_learn = (4, 1, 8) if args.quick else (8, args.seeds, 24)
    scales = [0.05, 0.2] if args.quick else [0.05, 0.1, 0.2, 0.4]
    bench = Bench(pipe, classifier, args.steps, args.guidance, seeds)
    tasks = make_tasks(n_items)
    data = D.make_coloured_fashion_mnist(split="train", seed=0, limit=4000)
    unet = pipe.unet
    resnets = default_layers(unet)
    attentions = [n for n in list_layers(unet, ("attentions",)) if n.startswith("up_blocks")]
    all_sites = resnets + attentions
    results: dict = {"meta": {
        "model": str(args.model or "assets/models/demo"), "steps": args.steps, "guidance": args.guidance, "seeds": seeds,
        "items": n_items, "learn_samples": n_learn, "scales": scales, "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "command": " ".join(["python", *sys.argv]),
    }}

    originals = {}
    for task in tasks:
        for cond, prompts in (("open", task.open_prompts), ("contra", task.contra_prompts)):
            originals[(task.name, cond)] = bench.sample(prompts)

    def evaluate(task: Task, vector, label: str, **steer_kw) -> list[dict]:
        rows = []
        for cond, prompts in (("open", task.open_prompts), ("contra", task.contra_prompts)):
            for s in scales:
                before = bench.unet_evals
                imgs = bench.sample(prompts, steering=vector, steering_scale=s, steering_normalize=True, **steer_kw)
                per_image = (bench.unet_evals - before) / len(imgs)
                rows.append({"config": label, "task": task.name, "condition": cond, "scale": s, "unet_evals_per_image": per_image, **bench.score(imgs, originals[(task.name, cond)], task)})
        return rows

    # ---- stage 1: sites / window / mode, colour task, mean_diff fast ------------------------------------------------
    colour_task, class_task = tasks
    v_colour, secs, _ = learn(pipe, colour_task, "mean_diff", "reference", all_sites, n_learn, args.steps, args.guidance)
    stage1 = []
    site_sets = {"resnets (paper)": resnets, "up attentions": attentions}
    windows = {"paper (0.45,0.95)": (0.45, 0.95), "full (0,1)": (0.0, 1.0)}
    for site_name, sites in site_sets.items():
        for win_name, win in windows.items():
            for mode in ("add", "weighted"):
                label = f"{site_name} | {win_name} | {mode}"
                stage1 += evaluate(colour_task, v_colour, label, steering_layers=sites, steering_window=win, steering_mode=mode)
                print(label, [(r["condition"], r["scale"], round(r["success"], 2), round(r["other_kept"], 2)) for r in stage1[-2 * len(scales):]], flush=True)
    results["stage1"] = stage1

    def best_of(rows: list[dict]) -> dict:
        ok = [r for r in rows if r["other_kept"] >= 0.8] or rows
        return max(ok, key=lambda r: (r["success"], r["pixel_similarity"]))

    by_config: dict[str, list[dict]] = {}
    for r in stage1:
        by_config.setdefault(r["config"], []).append(r)
    ranking = sorted(by_config, key=lambda c: -np.mean([best_of([r for r in by_config[c] if r["condition"] == cond])["success"] for cond in ("open", "contra")]))
    best_label = ranking[0]
    best_scale = best_of([r for r in by_config[best_label] if r["condition"] == "open"])["scale"]
    site_name, win_name, mode = [s.strip() for s in best_label.split("|")]
    best_kw = dict(steering_layers=site_sets[site_name], steering_window=windows[win_name], steering_mode=mode)
    results["best_config"] = {"label": best_label, "scale": best_scale, "sites": site_sets[site_name], "window": windows[win_name], "mode": mode}
    print("best configuration:", best_label, flush=True)

    # ---- stage 2: methods and sources --------------------------------------------------------------------------------
    stage2, learn_costs = [], []
    sources = ["fast", "reference", "images"]
    for task in tasks:
        for method in ("mean", "mean_diff", "pca"):
            for source in sources:
                v, secs, evals = learn(pipe, task, method, source, all_sites, n_learn, args.steps, args.guidance, data)
                label = f"{method} / {source}"
                learn_costs.append({"task": task.name, "method": method, "source": source, "seconds": round(secs, 1), "unet_evals": evals})
                stage2 += evaluate(task, v, label, **best_kw)
                if task is colour_task and method == "mean_diff" and source == "reference":
                    v.metadata["recommended"] = {"window": list(best_kw["steering_window"]), "layers": best_kw["steering_layers"], "mode": mode, "normalize": True, "scale": best_scale, "scales": scales}
                    v.save(out / "red_to_blue.safetensors")
                if task is class_task and method == "mean_diff" and source == "reference":
                    v.metadata["recommended"] = {"window": list(best_kw["steering_window"]), "layers": best_kw["steering_layers"], "mode": mode, "normalize": True, "scale": best_scale, "scales": scales}
                    v.save(out / "sneaker_to_ankle_boot.safetensors")
                print(label, task.name, [(r["condition"], r["scale"], round(r["success"], 2), round(r["other_kept"], 2)) for r in stage2[-2 * len(scales):]], flush=True)
    results["stage2"] = stage2
    results["learn_costs"] = learn_costs

    # ---- stage 3: baselines ------------------------------------------------------------------------------------------
    from diffusers import SemanticStableDiffusionPipeline

    sega = SemanticStableDiffusionPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet, scheduler=pipe.scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    sega.set_progress_bar_config(disable=True)
    stage3 = []
    for task in tasks:
        for cond, prompts, edited in (("open", task.open_prompts, task.edited_prompts_open), ("contra", task.contra_prompts, task.edited_prompts_contra)):
            before = bench.unet_evals
            imgs = bench.sample(edited)
            stage3.append({"config": "prompt edit (same seed)", "task": task.name, "condition": cond, "scale": None, "unet_evals_per_image": (bench.unet_evals - before) / len(imgs), **bench.score(imgs, originals[(task.name, cond)], task)})
            for s in ([3.0, 6.0] if args.quick else [2.0, 4.0, 6.0, 8.0, 12.0]):
                edits = [task.sega_edit] + ([task.sega_reverse] if cond == "contra" else [])
                rows = [(p, k) for k in range(seeds) for p in prompts]
                t_evals = bench.unet_evals
                images = sega(
                    [p for p, _ in rows], generator=torch.Generator().manual_seed(1000), num_inference_steps=args.steps, guidance_scale=args.guidance,
                    editing_prompt=edits, reverse_editing_direction=[False] + [True] * (len(edits) - 1), edit_guidance_scale=[s] * len(edits),
                    edit_warmup_steps=[max(1, args.steps // 10)] * len(edits), edit_threshold=[0.9] * len(edits), output_type="np",
                ).images
                imgs = images.transpose(0, 3, 1, 2).astype(np.float32)
                stage3.append({"config": "SEGA", "task": task.name, "condition": cond, "scale": s, "unet_evals_per_image": (bench.unet_evals - t_evals) / len(imgs), **bench.score(imgs, originals[(task.name, cond)], task)})
            print("baselines", task.name, cond, [(r["config"], r["scale"], round(r["success"], 2), round(r["other_kept"], 2)) for r in stage3[-6:]], flush=True)
    results["stage3"] = stage3
    results["meta"]["wall_seconds"] = round(time.time() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out)
    print(f"wrote {out}/results.json in {results['meta']['wall_seconds']} s")


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey=True)
    for col, task in enumerate(sorted({r["task"] for r in results["stage2"]})):
        for row, cond in enumerate(("open", "contra")):
            ax = axes[row, col]
            for label in dict.fromkeys(r["config"] for r in results["stage2"]):
                rs = [r for r in results["stage2"] if r["config"] == label and r["task"] == task and r["condition"] == cond]
                ax.plot([r["scale"] for r in rs], [r["success"] for r in rs], marker="o", label=label)
            sega = [r for r in results["stage3"] if r["config"] == "SEGA" and r["task"] == task and r["condition"] == cond]
            if sega:
                ax.axhline(max(r["success"] for r in sega), color="grey", ls="--", label="SEGA (best scale)")
            pe = [r for r in results["stage3"] if r["config"].startswith("prompt") and r["task"] == task and r["condition"] == cond]
            if pe:
                ax.axhline(pe[0]["success"], color="black", ls=":", label="prompt edit")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{task} — {'attribute open' if cond == 'open' else 'contradicting prompt'}")
            ax.set_xlabel("normalized steering scale")
            ax.set_ylabel("success rate")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "success_vs_scale.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
