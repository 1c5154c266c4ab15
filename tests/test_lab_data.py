"""Coloured Fashion-MNIST: determinism, captions, labels, the missing-data message, memorization helpers."""

import gzip
import re

import numpy as np
import pytest

from steer.lab import data as D
from steer.lab import memorization as MEM

CAPTION_RE = re.compile(
    r"^(|a ({col}) ({cls})|a ({cls})|a ({col}) item)$".format(
        col="|".join(D.COLOUR_NAMES), cls="|".join(re.escape(c) for c in D.CLASS_NAMES)
    )
)


def test_same_seed_same_data_and_other_seed_differs():
    a = D.make_coloured_fashion_mnist("train", seed=0, limit=2000)
    b = D.make_coloured_fashion_mnist("train", seed=0, limit=2000)
    c = D.make_coloured_fashion_mnist("train", seed=1, limit=2000)
    assert a.images.shape == (2000, 3, 32, 32) and a.images.dtype == np.float32
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    assert np.array_equal(a.colours, b.colours) and np.array_equal(a.classes, b.classes)
    assert not np.array_equal(a.colours, c.colours)
    assert a.captions != c.captions


def test_captions_match_labels_and_mix_of_kinds():
    ds = D.make_coloured_fashion_mnist("train", seed=0, limit=5000)
    for cap, col, cls, kind in zip(ds.captions, ds.colours, ds.classes, ds.caption_kinds, strict=True):
        assert CAPTION_RE.match(cap), cap
        assert cap == D.caption_for(int(col), int(cls), int(kind))
        if kind == D.FULL:
            assert cap == f"a {D.COLOUR_NAMES[col]} {D.CLASS_NAMES[cls]}"
    kinds = np.bincount(ds.caption_kinds, minlength=4) / len(ds)
    assert 0.45 < kinds[D.FULL] < 0.65  # full captions
    assert 0.18 < kinds[D.CLASS_ONLY] < 0.32  # colour word dropped ("a sneaker")
    assert 0.06 < kinds[D.COLOUR_ONLY] < 0.14  # class word dropped ("a red item")
    assert 0.07 < kinds[D.EMPTY] < 0.13  # empty, for classifier-free guidance
    assert "a sneaker" in ds.captions and "" in ds.captions
    assert any(c.endswith(" item") for c in ds.captions)
    assert set(np.unique(ds.colours)) == set(range(8)) and set(np.unique(ds.classes)) == set(range(10))


def test_images_are_tinted_padded_items_on_black():
    gray, labels = D.load_fashion_mnist("train")
    assert gray.shape == (60000, 28, 28) and labels.shape == (60000,)
    ds = D.make_coloured_fashion_mnist("train", seed=3, limit=50)
    assert np.all(ds.images[:, :, :2, :] == 0) and np.all(ds.images[:, :, :, -2:] == 0)  # black padding
    for i in range(50):
        tint = np.asarray(D.COLOURS[D.COLOUR_NAMES[ds.colours[i]]], dtype=np.float32)
        expect = gray[i].astype(np.float32) / 255.0
        assert np.allclose(ds.images[i, :, 2:30, 2:30], expect[None] * tint[:, None, None], atol=1e-6)
    assert np.array_equal(ds.classes, labels[:50])


def test_missing_data_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv(D.ROOT_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        D.make_coloured_fashion_mnist("train", limit=10)


def test_idx_parser_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 0x08, 3]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape) + arr.tobytes()
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(raw))
    assert np.array_equal(D.read_idx(p), arr)


def test_nn_ratio_and_dedup():
    rng = np.random.default_rng(0)
    train = rng.random((50, 3, 8, 8)).astype(np.float32)
    near = train[:5] + 0.01 * rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    far = rng.random((5, 3, 8, 8)).astype(np.float32)
    ratio, nn = MEM.nn_ratio(np.concatenate([near, far]), train)
    assert np.all(ratio[:5] < MEM.RATIO_THRESHOLD) and np.array_equal(nn[:5], np.arange(5))
    assert np.all(ratio[5:] > MEM.RATIO_THRESHOLD)
    # brute force agrees
    d = np.sqrt(((far.reshape(5, 1, -1) - train.reshape(1, 50, -1)) ** 2).sum(-1))
    ds = np.sort(d, 1)
    assert np.allclose(ratio[5:], ds[:, 0] / ds[:, 1], atol=1e-4)
    dup = np.concatenate([train[:10], train[:3] + 1e-4, train[10:12]])
    keep = MEM.deduplicate(dup, threshold=0.01)
    assert list(keep) == list(range(10)) + [13, 14]
