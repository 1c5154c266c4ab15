"""The demo app on other denoiser families: the layer slider lists the family's sites, the Learn tab learns a
direction on the family and the Generate tab steers with it (the handlers the Gradio events call)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import app
from steer.app import helpers as H
from steer.denoisers import denoiser_of

FAMILIES = {"sdxl": "steer.testing.sdxl:tiny_sdxl_pipeline", "sd3": "steer.testing.sd3:tiny_sd3_pipeline"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_learn_then_generate_in_the_app(family, tmp_path):
    module, _, fn = FAMILIES[family].partition(":")
    pipe = getattr(importlib.import_module(module), fn)(seed=0)
    steer_app = app.SteerApp(pipe, H.DirectionCatalog({}), workdir=tmp_path / "work", upload_root=tmp_path / "uploads")
    assert steer_app.layers and all(name in dict(denoiser_of(pipe).named_modules()) for name in steer_app.layers)

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


def test_batch_runs_jobs_on_another_family(tmp_path):
    """`steer batch`'s runner on a tiny SDXL pipeline: a sweep of a direction learned on it, one PNG per scale."""
    import json

    from steer.jobs import run as batch
    from steer.testing.sdxl import tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline(seed=0)
    direction = pipe.learn_direction(["a red bag"] * 2, ["a blue bag"] * 2, calibrate=False)
    direction.save(tmp_path / "red.safetensors")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a bag", "seeds": [0], "num_inference_steps": 2, "height": 32, "width": 32,
                                "directions": [{"path": "red.safetensors", "sweep": [0, 4, 2]}], "name": "bag"}) + "\n")
    summary = batch.run(jobs, pipe, tmp_path / "out", batch_size=2, progress=False)
    assert summary["written"] == 2 and summary["failed"] == 0, summary
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 2 and pngs[0].read_bytes() != pngs[1].read_bytes()


def test_api_defaults_are_the_default_directions_recommended_settings():
    """A gradio_client call of /generate that leaves the advanced fields out got the paper's window, branch and mode
    (the page fills in the direction's recommended ones on load): a weaker edit than the page shows."""
    from steer.cli.loading import load_pipeline
    from steer.vectors import SteeringVector

    demo = app.build_app(load_pipeline("assets/models/demo", "cpu"))
    values = {c["props"].get("label"): c["props"].get("value") for c in demo.config["components"] if "props" in c}
    rec = SteeringVector.load("assets/directions/to_blue.safetensors").metadata["recommended"]
    assert [values["Window start (fraction of the run)"], values["Window end"]] == list(rec["window"])
    assert values["CFG branch"] == rec["branch"] and values["Mode"] == rec["mode"]
