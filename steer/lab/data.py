"""Coloured Fashion-MNIST: the lab's small, real text-to-image data set.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``).
Each 28x28 grey item is padded to 32x32 and tinted one of eight colours on black; its caption is
``"a {colour} {class}"``, with the colour word dropped from a share of captions (``"a sneaker"``), the class
word from some (``"a red item"``) and about 10% left empty for classifier-free guidance.  Everything is a
pure function of the seed, and the colour / class labels are kept next to the captions.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
ROOT_ENV = "STEER_FASHION_MNIST"

CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

# name -> RGB multiplier applied to the grey intensity (black background stays black)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.05),
    "yellow": (1.0, 1.0, 0.1),
    "green": (0.1, 0.9, 0.1),
    "cyan": (0.1, 1.0, 1.0),
    "blue": (0.15, 0.3, 1.0),
    "purple": (0.65, 0.15, 1.0),
    "white": (1.0, 1.0, 1.0),
}
COLOUR_NAMES = tuple(COLOURS)

# caption kinds
FULL, CLASS_ONLY, COLOUR_ONLY, EMPTY = 0, 1, 2, 3
CAPTION_KIND_PROBS = (0.55, 0.25, 0.10, 0.10)

IMAGE_SIZE = 32


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"Fashion-MNIST file {path} not found. Install the data set with "
        f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point ${ROOT_ENV} at a folder holding "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz."
    )


def data_root(root: str | Path | None = None) -> Path:
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT))


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an (optionally gzipped) IDX file into a numpy array."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    dtype = np.dtype(dtypes[raw[2]])
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=offset)
    return data.reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N,28,28], labels int64 [N])`` for ``split`` in {"train", "test"}."""
    prefix = {"train": "train", "test": "t10k", "t10k": "t10k"}[split]
    root = data_root(root)
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels


def caption_for(colour: int, cls: int, kind: int = FULL) -> str:
    if kind == FULL:
        return f"a {COLOUR_NAMES[colour]} {CLASS_NAMES[cls]}"
    if kind == CLASS_ONLY:
        return f"a {CLASS_NAMES[cls]}"
    if kind == COLOUR_ONLY:
        return f"a {COLOUR_NAMES[colour]} item"
    if kind == EMPTY:
        return ""
    raise ValueError(f"unknown caption kind {kind}")


def colourize(gray: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """``gray`` uint8 [N,28,28], ``colours`` int [N] -> float32 [N,3,32,32] in [0,1], padded with black."""
    g = gray.astype(np.float32) / 255.0
    g = np.pad(g, ((0, 0), (2, 2), (2, 2)))
    tint = np.asarray([COLOURS[c] for c in COLOUR_NAMES], dtype=np.float32)[colours]  # [N,3]
    return g[:, None, :, :] * tint[:, :, None, None]


@dataclass
class ColouredFashionMNIST:
    """Images in [0,1] float32 [N,3,32,32] with captions and labels."""

    images: np.ndarray
    captions: list[str]
    classes: np.ndarray
    colours: np.ndarray
    caption_kinds: np.ndarray
    source_index: np.ndarray  # index into the Fashion-MNIST split

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, idx) -> ColouredFashionMNIST:
        idx = np.asarray(idx)
        return ColouredFashionMNIST(
            self.images[idx],
            [self.captions[i] for i in idx],
            self.classes[idx],
            self.colours[idx],
            self.caption_kinds[idx],
            self.source_index[idx],
        )


def make_coloured_fashion_mnist(
    split: str = "train",
    seed: int = 0,
    limit: int | None = None,
    root: str | Path | None = None,
    kind_probs: tuple[float, float, float, float] = CAPTION_KIND_PROBS,
) -> ColouredFashionMNIST:
    """Deterministic coloured Fashion-MNIST: the same (split, seed, limit) always gives the same data."""
    gray, classes = load_fashion_mnist(split, root)
    if limit is not None:
        gray, classes = gray[:limit], classes[:limit]
    n = len(classes)
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    colours = rng.integers(0, len(COLOUR_NAMES), size=n)
    kinds = rng.choice(4, size=n, p=np.asarray(kind_probs) / np.sum(kind_probs))
    captions = [caption_for(int(c), int(k), int(t)) for c, k, t in zip(colours, classes, kinds, strict=True)]
    return ColouredFashionMNIST(
        images=colourize(gray, colours),
        captions=captions,
        classes=classes,
        colours=colours.astype(np.int64),
        caption_kinds=kinds.astype(np.int64),
        source_index=np.arange(n, dtype=np.int64),
    )


def all_full_prompts() -> list[tuple[str, int, int]]:
    """Every ``("a {colour} {class}", colour, class)`` prompt, colour-major."""
    return [(caption_for(c, k), c, k) for c in range(len(COLOUR_NAMES)) for k in range(len(CLASS_NAMES))]


def to_uint8_grid(images: np.ndarray, nrow: int = 8) -> np.ndarray:
    """float [N,3,H,W] in [0,1] -> uint8 [H*, W*, 3] grid image."""
    images = np.clip(np.asarray(images, dtype=np.float32), 0, 1)
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    grid = np.zeros((nrows * (h + 2) + 2, ncol * (w + 2) + 2, 3), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + q * (w + 2) : 2 + q * (w + 2) + w] = images[i].transpose(1, 2, 0)
    return (grid * 255).round().astype(np.uint8)
