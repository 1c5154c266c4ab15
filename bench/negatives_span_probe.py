"""Experiment: a text direction with what the negative prompts vary in projected out.

    python bench/negatives_span_probe.py --methods ours --out docs/steering/negatives_span   # the matrix

The negatives are the positives with the attribute left open ("a t-shirt", "a sneaker", ... for "toward blue";
"a red item", "a blue item", ... for "toward bag"): what they vary in among themselves is what the edit should keep
(the class under a colour edit, the colour under a class edit). The difference of means is made orthogonal to the
span of the negatives' centred token means before it is normalised and calibrated, so steering along it moves none
of what the negatives vary in. Text preset only; `steer.learn.aggregate` is patched for this run and
`bench/steering_matrix.py` runs unchanged with every argument passed on (learning, calibration, generation).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import steering_matrix  # noqa: E402

import steer.learn as L  # noqa: E402

_aggregate = L.aggregate


def orthogonal_to_negatives(positive, negative, method):
    d = _aggregate(positive, negative, method)
    if method != "mean_diff" or negative is None or negative.ndim != 2 or len(negative) < 2:
        return d
    centred = negative.double() - negative.double().mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = vh[s > 1e-6 * s[0]]
    return (d.double() - basis.T @ (basis @ d.double())).float()


if __name__ == "__main__":
    L.aggregate = orthogonal_to_negatives
    steering_matrix.main()
