"""The demo app on other denoiser families: the layer slider lists the family's sites, the Learn tab learns a
direction on the family and the Generate tab steers with it (the handlers the Gradio events call)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import app
from steer.app import helpers as H

FAMILIES = {"sdxl": "steer.testing.sdxl:tiny_sdxl_pipeline", "sd3": "steer.testing.sd3:tiny_sd3_pipeline"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_learn_then_generate_in_the_app(family, tmp_path):
    module, _, fn = FAMILIES[family].partition(":")
    pipe = getattr(importlib.import_module(module), fn)(seed=0)
    steer_app = app.SteerApp(pipe, H.DirectionCatalog({}), workdir=tmp_path / "work", upload_root=tmp_path / "uploads")
    assert steer_app.layers and all(name in dict(H.denoiser_of(pipe).named_modules()) for name in steer_app.layers)

    session, _, _, status = steer_app.learn({}, "a red bag", "a blue bag", None, None, "mean_diff", "fast",
                                            "all layers", [], 2, 2, 5.0, 0, "red", "")
    assert "Learned **red**" in status, status
    choice = next(iter(session))
    values = dict(prompt="a bag", negative_prompt="", seed=3, steps=2, guidance=5.0, size=steer_app.size, strength=4.0,
                  layer=0, layers=[], window_start=0.0, window_end=1.0, branch="cond", normalize=False, mode="add",
                  strict=True)
    original, steered, png, last, note = steer_app.generate(choice, session, **values)
    assert "Steered with **red**" in note, note
    assert not np.array_equal(np.asarray(original), np.asarray(steered))  # the family's image moved
