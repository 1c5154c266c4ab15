"""Data of the theory lab: grey Fashion-MNIST images as flat vectors in [-1, 1], and a set with duplicated images."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from . import data as D


def to_vectors(images: np.ndarray) -> Tensor:
    """Flatten uint8 images to float vectors in [-1, 1]."""
    return torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 127.5 - 1.0)


def training_vectors(n: int, seed: int) -> Tensor:
    """n distinct training images chosen at random, as vectors."""
    images = D.load_fashion_mnist("train")[0]
    idx = np.random.default_rng(seed).choice(len(images), size=n, replace=False)
    return to_vectors(images[np.sort(idx)])


def hybrid_set(n_total: int, n_dup: int, copies: int, seed: int) -> tuple[Tensor, Tensor]:
    """A training set of n_total vectors where n_dup images appear ``copies`` times each.

    Returns (data, is_duplicated) where the mask marks the rows that are copies.
    """
    n_unique = n_total - n_dup * copies
    base = training_vectors(n_unique + n_dup, seed)
    dup = base[:n_dup].repeat(copies, 1)
    data = torch.cat([dup, base[n_dup:]])
    mask = torch.zeros(len(data), dtype=torch.bool)
    mask[: len(dup)] = True
    return data, mask

