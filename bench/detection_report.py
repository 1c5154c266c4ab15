"""Metrics, plots and the Markdown report of the memorization-detection benchmark (``bench/detection.py``):
AUROC and TPR at 1 % FPR with bootstrap intervals, the selection/held-out split table, histograms and ROC curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------------
def tpr_at_fpr(y: np.ndarray, s: np.ndarray, fpr: float = 0.01) -> float:
    from sklearn.metrics import roc_curve

    f, t, _ = roc_curve(y, s)
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def metrics(y: np.ndarray, s: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """AUROC and TPR@1%FPR with stratified bootstrap 95 % intervals."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    auc, tpr = float(roc_auc_score(y, s)), tpr_at_fpr(y, s)
    boots_auc, boots_tpr = [], []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        boots_auc.append(roc_auc_score(y[idx], s[idx]))
        boots_tpr.append(tpr_at_fpr(y[idx], s[idx]))
    q = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]  # noqa: E731
    return {"auroc": auc, "auroc_ci": q(boots_auc), "tpr1": tpr, "tpr1_ci": q(boots_tpr)}


# ----------------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------------
def plots(y: np.ndarray, named: dict[str, np.ndarray], out: Path, suffix: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, len(named), figsize=(3.2 * len(named), 2.8))
    for ax, (name, s) in zip(np.atleast_1d(axes), named.items(), strict=True):
        bins = np.linspace(s.min(), s.max(), 40)
        ax.hist(s[y == 0], bins=bins, alpha=0.6, label="not memorized", color="#4477aa")
        ax.hist(s[y == 1], bins=bins, alpha=0.6, label="memorized", color="#cc3311")
        ax.set_title(name, fontsize=9)
        ax.set_yscale("log")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"histograms{suffix}.png", dpi=110)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, s in named.items():
        f, t, _ = roc_curve(y, s)
        a1.plot(f, t, label=name)
        a2.plot(np.maximum(f, 1e-4), t, label=name)
    a1.plot([0, 1], [0, 1], "k:", lw=0.8)
    a1.set_xlabel("FPR")
    a1.set_ylabel("TPR")
    a2.set_xscale("log")
    a2.axvline(0.01, color="k", ls=":", lw=0.8)
    a2.set_xlabel("FPR (log)")
    a1.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / f"roc{suffix}.png", dpi=110)
    plt.close(fig)


def steering_plot(res: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3))
    for name, rows in res["groups"].items():
        ax.plot(res["scales"], rows["rms_change"], "o-", label=f"{name} (n={rows['n']})")
    ax.set_xlabel("steering scale (normalized)")
    ax.set_ylabel("RMS pixel change vs scale 0")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "steering.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------------
def split_table(y: np.ndarray, scores: dict[str, np.ndarray], split_a: np.ndarray) -> dict[str, dict[str, float]]:
    """AUROC and TPR@1%FPR of every variant on split A (selection) and split B (held out)."""
    from sklearn.metrics import roc_auc_score

    table = {}
    if len(np.unique(y[split_a])) < 2 or len(np.unique(y[~split_a])) < 2:
        return table
    for name, s in scores.items():
        table[name] = {"auroc_a": float(roc_auc_score(y[split_a], s[split_a])), "tpr1_a": tpr_at_fpr(y[split_a], s[split_a]),
                       "auroc_b": float(roc_auc_score(y[~split_a], s[~split_a])), "tpr1_b": tpr_at_fpr(y[~split_a], s[~split_a])}
    return table


def render(r: dict) -> str:
    lines = [
        f"Model `{r['model']}`: {r['samples']} samples, {r['memorized_samples']} memorized by the NN-ratio criterion "
        f"(memorized prompts {r['memorized_rate']['memorized_prompts']:.0%}, ordinary prompts {r['memorized_rate']['ordinary_prompts']:.0%}).",
    ]
    near = r.get("near_copies")
    if near:
        lines += ["", f"Memorized-prompt samples that miss the 1/3 criterion: {near['near_copies']} of {near['samples']} "
                  f"(items {near['near_copy_items']}). Distance to the duplicated image, copies vs near copies (5/50/95 %): "
                  f"{near['d1_copies_p5_50_95']} vs {near['d1_near_copies_p5_50_95']}; that image's distance to its nearest other "
                  f"training image: {near['d_item_copies_p5_50_95']} vs {near['d_item_near_copies_p5_50_95']}."]
    for name, ev in r["evaluations"].items():
        what = "NN-ratio ground truth (d(x,NN1)/d(x,NN2) < 1/3)" if name == "nn" else "prompt-list labels (memorized prompt vs ordinary prompt)"
        lines += [
            "",
            f"**Labels: {what}** — {ev['positives']} positives, {ev['negatives']} negatives"
            + (" (primary)" if name == r["primary_labels"] else ""),
            "",
            "| method | AUROC [95 % CI] | TPR@1%FPR [95 % CI] | held-out odd seeds AUROC / TPR | UNet evals / sample (extra over generation) | CPU s / sample | wall s / sample |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in ev["headline"]:
            b = row["held_out_b"]
            held = f"{b['auroc_b']:.3f} / {b['tpr1_b']:.2f}" if b else "–"
            wall = f"{row['wall_s_per_sample']:.4f}" if row["wall_s_per_sample"] is not None else "–"
            cpu = f"{row['cpu_s_per_sample']:.4f}" if row["cpu_s_per_sample"] is not None else "–"
            lines.append(
                f"| {row['method']} | {row['auroc']:.3f} [{row['auroc_ci'][0]:.3f}, {row['auroc_ci'][1]:.3f}] | "
                f"{row['tpr1']:.2f} [{row['tpr1_ci'][0]:.2f}, {row['tpr1_ci'][1]:.2f}] | {held} | {row['unet_evals']} ({row['extra_evals']}) | {cpu} | {wall} |"
            )
    t = r["timing_s_per_sample"]
    for clock in ("cpu", "wall"):
        lines += ["", f"{clock} seconds per sample (median of {r['settings']['timing_repeats']} rounds, batch of {r['settings']['timing_samples']}): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in t[clock].items())]
    s = r.get("steering")
    if s:
        lines += ["", f"Steering (groups by {s.get('groups_by')}):", "",
                  "| steering scale | " + " | ".join(f"{x:g}" for x in s["scales"]) + " |", "|---" * (len(s["scales"]) + 1) + "|"]
        for key, label in (("blue", "blue share"), ("changed", "colour changed"), ("rms_change", "RMS pixel change")):
            for name, rows in s["groups"].items():
                lines.append(f"| {name} (n={rows['n']}) {label} | " + " | ".join(f"{v:.3f}" for v in rows[key]) + " |")
            for other in ("generalized", "generalized, colour open"):
                ratio = s[f"ratio {other} / memorized"][key]
                lines.append(f"| ratio {other} / memorized ({label}) | " + " | ".join("–" if v is None else f"{v:.2f}" for v in ratio) + " |")
    return "\n".join(lines) + "\n"


