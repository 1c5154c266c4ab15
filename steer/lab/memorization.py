"""Memorization measures: nearest-neighbour distance ratio in pixel space (Gu et al.) and deduplication.

A generated image ``x`` counts as memorized when ``d(x, NN1) / d(x, NN2) < 1/3``: its nearest training image
is at least three times closer than the second nearest (distances are L2 over all pixels).
"""

from __future__ import annotations

import numpy as np
import torch

RATIO_THRESHOLD = 1.0 / 3.0


def _flat(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not torch.is_tensor(x) else x.float()
    return t.reshape(len(t), -1)


@torch.no_grad()
def nn_search(queries, train, k: int = 2, batch_size: int = 256, train_batch: int = 20000):
    """Return ``(distances [N,k], indices [N,k])`` of the k nearest training images (L2, ascending)."""
    q, tr = _flat(queries), _flat(train)
    tr_sq = (tr * tr).sum(1)
    all_d, all_i = [], []
    for i in range(0, len(q), batch_size):
        qb = q[i : i + batch_size]
        q_sq = (qb * qb).sum(1, keepdim=True)
        best_d = torch.full((len(qb), k), float("inf"))
        best_i = torch.zeros((len(qb), k), dtype=torch.long)
        for j in range(0, len(tr), train_batch):
            tb = tr[j : j + train_batch]
            d2 = (q_sq - 2 * qb @ tb.T + tr_sq[j : j + train_batch][None]).clamp_min(0)
            kk = min(k, len(tb))
            v, ix = torch.topk(d2, kk, dim=1, largest=False)
            cat_d = torch.cat([best_d, v], 1)
            cat_i = torch.cat([best_i, ix + j], 1)
            o = torch.argsort(cat_d, dim=1)[:, :k]
            best_d, best_i = torch.gather(cat_d, 1, o), torch.gather(cat_i, 1, o)
        all_d.append(best_d.sqrt())
        all_i.append(best_i)
    return torch.cat(all_d).numpy(), torch.cat(all_i).numpy()


def nn_distances(queries, train, k: int = 2, **kw) -> np.ndarray:
    return nn_search(queries, train, k=k, **kw)[0]


def nn_ratio(queries, train, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``(ratio d(x,NN1)/d(x,NN2) [N], index of NN1 [N])`` against a (deduplicated) training set."""
    d, i = nn_search(queries, train, k=2, **kw)
    return d[:, 0] / np.maximum(d[:, 1], 1e-12), i[:, 0]


def is_memorized(queries, train, threshold: float = RATIO_THRESHOLD, **kw) -> np.ndarray:
    return nn_ratio(queries, train, **kw)[0] < threshold


def memorization_rate(queries, train, threshold: float = RATIO_THRESHOLD, **kw) -> float:
    return float(np.mean(is_memorized(queries, train, threshold, **kw)))


def deduplicate(images, threshold: float = 0.05) -> np.ndarray:
    """Indices of a duplicate-free subset: an image is dropped when it lies within ``threshold`` (RMS per pixel,
    same scale as the images) of an earlier kept image."""
    x = _flat(images)
    n, dim = x.shape
    keep: list[int] = []
    lim = (threshold**2) * dim
    kept = torch.empty((0, dim))
    for i in range(n):
        if len(kept):
            d2 = ((kept - x[i]) ** 2).sum(1)
            if bool((d2 < lim).any()):
                continue
        keep.append(i)
        kept = torch.cat([kept, x[i : i + 1]])
    return np.asarray(keep, dtype=np.int64)
