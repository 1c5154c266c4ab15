"""Memorization measures: nearest-neighbour distance ratio in pixel space (Gu et al.) and deduplication.

A generated image ``x`` counts as memorized when ``d(x, NN1) / d(x, NN2) < 1/3``: its nearest training image
is at least three times closer than the second nearest (distances are L2 over all pixels).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from . import data as D
from .models import load_pipeline, sample

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
    kept = torch.empty((n, dim))
    sq = (x * x).sum(1)
    for i in range(n):
        if keep:
            k = len(keep)
            d2 = sq[keep] - 2 * kept[:k] @ x[i] + sq[i]
            if bool((d2 < lim).any()):
                continue
        kept[len(keep)] = x[i]
        keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def sample_memorization(pipe, prompts: list[str], train_images, seed: int = 0, steps: int = 25, guidance: float = 5.0,
                        per_prompt: int = 1) -> dict:
    """Generate ``per_prompt`` images per prompt and report the NN-ratio memorization rate against ``train_images``."""
    ps = [p for p in prompts for _ in range(per_prompt)]
    images = sample(pipe, ps, seed=seed, steps=steps, guidance=guidance)
    ratio, nn = nn_ratio(images, train_images)
    return {"n": len(ps), "rate": float(np.mean(ratio < RATIO_THRESHOLD)), "median_ratio": float(np.median(ratio)),
            "ratios": ratio.tolist(), "nn_index": nn.tolist(), "images": images}


def save_nn_grid(path, samples: np.ndarray, neighbours: np.ndarray) -> None:
    """Save samples (top row block) above their nearest training images (bottom), one column per sample."""
    from PIL import Image

    n = len(samples)
    grid = D.to_uint8_grid(np.concatenate([samples, neighbours]), nrow=n)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m steer.lab.memorization",
                                description="NN-ratio memorization rate of a pipeline's samples (Gu et al., ratio < 1/3)")
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", required=True, help="text file, one prompt per line (relative paths: inside --model)")
    p.add_argument("--per-prompt", type=int, default=1)
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--grid", default=None, help="PNG: the first 16 samples (top) above their nearest training images")
    p.add_argument("--against", choices=("train", "memorized"), default="train",
                   help="training set for the NN ratio: the full coloured Fashion-MNIST train split, or only the items "
                        "listed in MODEL/memorized_images.json (the whole training set of the `mem` variant)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    path = Path(a.prompts)
    if not path.is_file():
        path = Path(a.model) / a.prompts
    prompts = [x for x in path.read_text().splitlines() if x.strip()][: a.limit]
    train = D.make_coloured_fashion_mnist("train", seed=a.data_seed).images
    if a.against == "memorized":
        train = train[json.loads((Path(a.model) / "memorized_images.json").read_text())["indices"]]
    res = sample_memorization(load_pipeline(a.model, device=a.device), prompts, train, seed=a.seed, steps=a.steps,
                              guidance=a.guidance, per_prompt=a.per_prompt)
    images = res.pop("images")
    if a.grid:
        save_nn_grid(a.grid, images[:16], train[np.asarray(res["nn_index"][:16])])
    out = {k: v for k, v in res.items() if k not in ("ratios", "nn_index")}
    out.update(model=a.model, prompts=str(path), steps=a.steps, guidance=a.guidance, seed=a.seed, against=a.against,
               train_size=len(train))
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps({**out, "ratios": res["ratios"], "nn_index": res["nn_index"]}, indent=1))


if __name__ == "__main__":
    main()
