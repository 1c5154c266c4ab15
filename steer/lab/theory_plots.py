"""Figures of the theory lab: weight rows, hidden-activation bars, and samples next to their nearest training
images (28x28 grey tiles, matplotlib's Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tile(ax, vec: Tensor, title: str | None = None) -> None:
    img = vec.detach().reshape(28, 28).numpy()
    lim = float(np.abs(img).max()) or 1.0
    ax.imshow(img, cmap="gray", vmin=-lim if img.min() < 0 else 0, vmax=lim)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def plot_weights(path: Path, train_small: Tensor, w_mem: Tensor, w_gen: Tensor, n_show: int = 16) -> None:
    """Training images, the memorizing model's non-negligible weight rows, and the generalizing model's top rows.

    Each memorizing row is titled with its best cosine similarity to a training image.
    """
    plt = _plt()
    norms = w_mem.detach().norm(dim=1)
    mem_rows = _top_rows(w_mem, int((norms > 0.1 * norms.max()).sum()))[:n_show]
    unit = train_small / train_small.norm(dim=1, keepdim=True)
    cos = (mem_rows / mem_rows.norm(dim=1, keepdim=True)) @ unit.T
    rows = [
        ("memorizing: the 5 training images", train_small, None),
        ("memorizing: non-negligible weight rows (best cos to a training image)", mem_rows, cos.max(1).values),
        ("generalizing: largest weight rows", _top_rows(w_gen, n_show), None),
    ]
    fig, axes = plt.subplots(3, n_show, figsize=(n_show * 0.8, 3 * 1.15))
    for r, (label, vecs, notes) in enumerate(rows):
        for c in range(n_show):
            if c < len(vecs):
                _tile(axes[r, c], vecs[c], f"{float(notes[c]):.2f}" if notes is not None else None)
            else:
                axes[r, c].axis("off")
        fig.text(0.01, 1 - (r + 0.02) / 3, label, fontsize=8, va="top")
    fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=1.6)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _top_rows(weight: Tensor, n: int) -> Tensor:
    w = weight.detach()
    order = w.norm(dim=1).argsort(descending=True)
    return w[order[:n]]


def plot_activation_bars(path: Path, panels: list[tuple[str, Tensor, Tensor]]) -> None:
    """Bar plots of hidden activations: one panel per (title, noisy image, activation vector)."""
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 2, figsize=(9, 2.2 * len(panels)), gridspec_kw={"width_ratios": [1, 6]})
    axes = np.atleast_2d(axes)
    for r, (title, image, acts) in enumerate(panels):
        _tile(axes[r, 0], image)
        a = acts.detach().numpy()
        axes[r, 1].bar(np.arange(len(a)), a, width=1.0, color="C0" if r % 2 == 0 else "C3")
        axes[r, 1].set_title(
            f"{title}   std={a.std():.3f}  L4/L2={np.linalg.norm(a, 4) / max(np.linalg.norm(a), 1e-12):.3f}", fontsize=9
        )
        axes[r, 1].set_xlim(-1, len(a))
        axes[r, 1].set_ylabel("ReLU(W x̃)")
    axes[-1, 1].set_xlabel("hidden unit")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_samples(path: Path, groups: list[tuple[str, Tensor, Tensor, Tensor]], n_show: int = 12) -> None:
    """Rows of samples and their nearest training images: (label, samples, neighbours, nn ratios)."""
    plt = _plt()
    fig, axes = plt.subplots(2 * len(groups), n_show, figsize=(n_show * 0.9, 2 * len(groups) * 1.05))
    for g, (label, samples, neighbours, ratios) in enumerate(groups):
        for c in range(n_show):
            _tile(axes[2 * g, c], samples[c].clamp(-1, 1), f"r={float(ratios[c]):.2f}")
            _tile(axes[2 * g + 1, c], neighbours[c])
        axes[2 * g, 0].set_ylabel(f"{label}\nsample", fontsize=7)
        axes[2 * g + 1, 0].set_ylabel("nearest\ntrain", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

