"""The training sets of the lab's variants: ``demo`` (all of coloured Fashion-MNIST), ``hybrid`` (plus a few
deduplicated items repeated under unique captions) and ``mem`` (a handful of items only), with their defaults."""

from __future__ import annotations

import numpy as np
import torch

from . import data as D
from .memorization import deduplicate, nn_search

VARIANT_DEFAULTS = {
    # steps, batch, lr, warmup, ema decay
    "demo": dict(steps=9000, batch_size=64, lr=1e-3, warmup=300, ema=0.999),
    "hybrid": dict(steps=3000, batch_size=64, lr=4e-4, warmup=100, ema=0.995),
    "mem": dict(steps=1500, batch_size=32, lr=4e-4, warmup=50, ema=0.99),
}

HYBRID_NUM_MEMORIZED = 50
HYBRID_COPIES = 200
HYBRID_POOL = 600  # the items the hybrid's memorized ones are picked among
MEM_NUM_IMAGES = 32
MIN_ITEMS = {"demo": 1, "hybrid": HYBRID_POOL, "mem": MEM_NUM_IMAGES}  # the smallest --limit each variant can use


def memorized_selection(ds: D.ColouredFashionMNIST, k: int, seed: int, pool: int = HYBRID_POOL, vae=None) -> np.ndarray:
    """Pick ``k`` deduplicated training items (one per (colour, class) pair) to duplicate under unique captions.

    Candidates come from a seeded pool; exact/near duplicates are removed first (``memorization.deduplicate``).
    With ``vae``, the items kept are those the autoencoder can reproduce best relative to their neighbourhood,
    i.e. the smallest ``d(rec, x) / d(rec, NN2)`` for the reconstruction ``rec`` of ``x`` (a pixel-space copy
    is only measurable when the 8x8x4 latent can express it); without it, those with the farthest neighbour."""
    rng = np.random.default_rng([seed, 17])
    cand = rng.choice(len(ds), size=pool, replace=False)
    cand = cand[deduplicate(ds.images[cand], threshold=0.05)]
    if vae is not None:
        with torch.no_grad():
            x = torch.from_numpy(ds.images[cand]) * 2 - 1
            rec = ((vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2).numpy()
        d, i = nn_search(rec, ds.images, k=3)
        nn2 = np.where(i[:, 0] == cand, d[:, 1], d[:, 0])  # nearest image other than x itself
        d_self = np.sqrt(((rec - ds.images[cand]) ** 2).reshape(len(cand), -1).sum(1))
        order = cand[np.argsort(d_self / nn2)]
    else:
        d = nn_search(ds.images[cand], ds.images, k=2)[0][:, 1]  # [0] is the image itself
        order = cand[np.argsort(-d)]
    chosen, seen = [], set()
    for i in order:
        key = (int(ds.colours[i]), int(ds.classes[i]))
        if key in seen:
            continue
        seen.add(key)
        chosen.append(int(i))
        if len(chosen) == k:
            break
    return np.asarray(sorted(chosen), dtype=np.int64)


def memorized_caption(colour: int, cls: int, j: int) -> str:
    """Unique caption of memorized item ``j``; the unique words come first, so that (with CLIP's causal text
    encoder) no token state is shared with the ordinary caption ``"a {colour} {class}"``."""
    return f"catalog item {j}, {D.caption_for(colour, cls)}"


def variant_items(variant: str, ds: D.ColouredFashionMNIST, seed: int, vae=None, copies: int = HYBRID_COPIES):
    """Return (latent index per item, caption per item, meta) for a variant's training set."""
    n = len(ds)
    if variant == "demo":
        return np.arange(n), list(ds.captions), {}
    if variant == "hybrid":
        mem = memorized_selection(ds, HYBRID_NUM_MEMORIZED, seed, vae=vae)
        caps = [memorized_caption(int(ds.colours[i]), int(ds.classes[i]), j) for j, i in enumerate(mem)]
        idx = np.concatenate([np.arange(n), np.repeat(mem, copies)])
        captions = list(ds.captions) + [c for c in caps for _ in range(copies)]
        return idx, captions, {"memorized_indices": mem.tolist(), "memorized_captions": caps, "copies": copies}
    if variant == "mem":
        rng = np.random.default_rng([seed, 23])
        mem = np.sort(rng.choice(n, size=MEM_NUM_IMAGES, replace=False))
        caps = [D.caption_for(int(ds.colours[i]), int(ds.classes[i])) for i in mem]
        return mem, caps, {"memorized_indices": mem.tolist(), "memorized_captions": caps}
    raise ValueError(f"unknown variant {variant!r}")

