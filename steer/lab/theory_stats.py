"""Statistics of the theory lab: how spiky hidden activations are, and how much of a model's weights are copies of
training images."""

from __future__ import annotations

import torch
from torch import Tensor

COSINE_MATCH = 0.9


def activation_stats(acts: Tensor) -> dict[str, float]:
    """Mean over inputs of per-input statistics of hidden activation vectors (rows of ``acts``).

    ``std`` is the raw standard deviation over units (the paper's measure); ``l4_l2`` = ‖a‖₄/‖a‖₂ and
    ``cv`` = std/mean are scale-free spikiness measures; ``top1_share`` = max(a)/Σa; ``active`` counts
    units above 1% of the input's largest activation.
    """
    acts = acts.double()
    std = acts.std(1, unbiased=False)
    mean = acts.mean(1).clamp_min(1e-12)
    l2 = acts.norm(p=2, dim=1).clamp_min(1e-12)
    l4 = acts.norm(p=4, dim=1)
    top = acts.max(1).values
    active = (acts > 0.01 * top[:, None].clamp_min(1e-12)).sum(1).double()
    return {
        "std": float(std.mean()),
        "l4_l2": float((l4 / l2).mean()),
        "cv": float((std / mean).mean()),
        "top1_share": float((top / acts.sum(1).clamp_min(1e-12)).mean()),
        "active": float(active.mean()),
        "n_inputs": int(acts.shape[0]),
    }


def noisy_inputs(data: Tensor, n: int, noise: float, seed: int) -> tuple[Tensor, Tensor]:
    """n noisy copies of training images (cycling through the set); returns (noisy, index)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(n) % len(data) if len(data) < n else torch.randperm(len(data), generator=gen)[:n]
    return data[idx] + noise * torch.randn(n, data.shape[1], generator=gen), idx


def weight_match(weight: Tensor, data: Tensor, norm_frac: float = 0.1) -> dict[str, float]:
    """How many weight rows are (cosine > 0.9) copies of a training image.

    Rows whose norm is below ``norm_frac`` × the largest row norm are negligible (decayed, unused units).
    """
    w = weight.detach().double()
    norms = w.norm(dim=1)
    keep = norms > norm_frac * norms.max()
    cos = (w / norms[:, None].clamp_min(1e-12)) @ (data.double() / data.double().norm(dim=1, keepdim=True)).T
    best = cos.max(1).values
    match = best > COSINE_MATCH
    return {
        "rows": int(len(w)),
        "rows_nonnegligible": int(keep.sum()),
        "frac_all_rows": float(match.double().mean()),
        "frac_nonnegligible_rows": float(match[keep].double().mean()) if keep.any() else 0.0,
        "mean_best_cosine_nonnegligible": float(best[keep].mean()) if keep.any() else 0.0,
        "images_covered": int(cos[keep & match].argmax(1).unique().numel()) if (keep & match).any() else 0,
    }


def span_energy(weight: Tensor, data: Tensor) -> float:
    """Fraction of the total squared weight norm Σ‖w_k‖² lying in span(training images).

    Meaningful only when the set is small (N ≪ dim): ~1 means the rows are built from training images.
    """
    w = weight.detach().double()
    q, _ = torch.linalg.qr(data.double().T)
    return float((w @ q).pow(2).sum() / w.pow(2).sum())

