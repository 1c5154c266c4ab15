"""What `steer batch` records and counts: a job's ``model`` naming this run's folder however it is written, resume
across recipes that named the model relative to where they ran, inversion jobs under ``--sampler``, a duplicate of an
image that failed, CSV prompts that look like JSON (tiny random SD pipeline, CPU)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from steer.jobs import run as batch
from steer.jobs.formats import read_jobs
from steer.recipe import recorded_path

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = 2


def write_jsonl(path: Path, jobs: list) -> Path:
    path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    return path


def test_a_jobs_model_is_this_runs_folder_however_written_and_resume_survives_relative_recipes(tiny_pipe, model_dir, tmp_path, monkeypatch):
    """Recipes record the model folder absolute since fc550f1: a job naming the same folder relative to the jobs file,
    to where the command runs, or with a trailing slash was refused as "a different model", and a batch begun when
    recipes held the relative name was made again from the start, every image under a ``-1`` name."""
    folder = Path(model_dir)
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    monkeypatch.chdir(folder.parent)
    names = [os.path.relpath(folder, jobs_dir), folder.name, str(folder) + "/"]
    jobs = [{"prompt": "a bag", "seed": i, "num_inference_steps": STEPS, "model": m} for i, m in enumerate(names)]
    jobs.append({"prompt": "a bag", "seed": 9, "num_inference_steps": STEPS, "model": str(tmp_path)})
    plan = batch.plan_jobs(list(enumerate(jobs, 1)), tiny_pipe, tmp_path / "p", model=recorded_path(folder.name), base_dir=jobs_dir)
    assert [f["line"] for f in plan.failures] == [4] and "differs from this run's model" in plan.failures[0]["reason"]
    assert len(plan.images) == 3

    plain = [{"prompt": "a bag", "seeds": [0, 1], "num_inference_steps": STEPS, "name": "bag"}]
    out = tmp_path / "out"
    first = batch.run(plain, tiny_pipe, out, model=folder.name, progress=False)  # as recipes recorded it before
    assert first["written"] == 2 and json.loads((out / batch.MANIFEST).read_text().splitlines()[0])["recipe"]["model"] == folder.name
    again = batch.run(plain, tiny_pipe, out, model=recorded_path(folder.name), progress=False)
    assert (again["written"], again["skipped"]) == (0, 2)
    assert sorted(p.name for p in out.glob("*.png")) == ["bag_seed0.png", "bag_seed1.png"]


def test_inversion_jobs_do_not_record_the_runs_sampler(tiny_pipe, tmp_path):
    """``steer batch --sampler euler-a`` recorded euler-a in an ``invert`` job's recipe, which DDIM inversion made (and
    `steer reproduce` then confirmed the false record); the other jobs still take it."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    jobs = [{"prompt": "a bag", "image": "a.png", "invert": True, "seed": 1, "num_inference_steps": STEPS},
            {"prompt": "a bag", "seed": 1, "num_inference_steps": STEPS}]
    plan = batch.plan_jobs(list(enumerate(jobs, 1)), tiny_pipe, tmp_path / "p", model="tiny", base_dir=tmp_path, sampler="euler-a")
    assert not plan.failures
    inverted, plain = (next(im for im in plan.images if im.line == n) for n in (1, 2))
    assert "sampler" not in inverted.recipe and inverted.recipe["scheduler"] == type(tiny_pipe.scheduler).__name__
    assert plain.recipe["sampler"] == "euler-a"


def test_a_duplicate_of_an_image_that_failed_is_a_failure_not_skipped(tiny_pipe, tmp_path, monkeypatch):
    """Two jobs with one recipe are made once; when that image failed (here: not finite), the second job was counted
    "skipped" (as if done) with no image for either."""
    real = batch._finite
    monkeypatch.setattr(batch, "_finite", lambda row: False)
    jobs = [{"prompt": "a bag", "seed": 0, "num_inference_steps": STEPS, "name": "first"},
            {"prompt": "a bag", "seed": 0, "num_inference_steps": STEPS, "name": "second"}]
    summary = batch.run(jobs, tiny_pipe, tmp_path / "out", model="tiny", progress=False)
    assert (summary["written"], summary["skipped"], summary["failed"]) == (0, 0, 2)
    assert summary["failures"][1] == {"line": 2, "reason": "the same image as line 1's, which failed"}
    monkeypatch.setattr(batch, "_finite", real)
    done = batch.run(jobs, tiny_pipe, tmp_path / "out", model="tiny", progress=False)
    assert (done["written"], done["skipped"], done["failed"]) == (1, 1, 0)  # made once, the duplicate done with it


def test_csv_prompts_starting_like_json_are_text_and_hub_directions_keep_their_revision(tmp_path):
    """``[masterpiece], a red bag`` in a CSV jobs file was parsed as JSON ("malformed JSON"): such a prompt could not
    be written in CSV at all; ``owner/name@main`` read ``main`` as a scale."""
    path = tmp_path / "jobs.csv"
    path.write_text('prompt,negative_prompt,seeds,directions\n"[masterpiece], a red bag",{blurry},1;2,owner/name@main@1.5\n'
                    '"{best quality} a bag",,3,owner/name@main;to_red@abc\n')
    (first_line, first), (second_line, second) = read_jobs(path)
    assert first == {"prompt": "[masterpiece], a red bag", "negative_prompt": "{blurry}", "seeds": [1, 2],
                     "directions": [{"path": "owner/name@main", "scale": 1.5}]}
    assert second_line == 3 and second.reason == "directions: the scale of direction 'to_red' must be a number, got 'abc'"
    from steer.jobs.read import _compact_direction

    for spec in ("owner/name@0a1b2c3", "owner/name@main:to_blue.safetensors"):  # a commit, the documented :file form
        assert _compact_direction(spec) == {"path": spec}
    assert _compact_direction("owner/name@0:1:3") == {"path": "owner/name", "sweep": [0.0, 1.0, 3]}


def test_resume_keys_read_any_recorded_model_and_inversions_without_the_runs_sampler():
    """A foreign recipe naming the model ``~nosuchuser/...`` made planning traceback (RuntimeError from the home folder
    look-up); an inversion's recipe from before invert jobs stopped recording ``--sampler`` keys as the same image."""
    from steer.jobs.outputs import image_key

    assert image_key({"model": "~nosuchuser-steer/model", "prompt": "a bag"}) != image_key({"model": "other", "prompt": "a bag"})
    inverted = {"model": "m", "prompt": "a bag", "scheduler": "DDIMScheduler", "edit": {"invert": True, "image": {"sha256": "ab"}}}
    before = {**inverted, "sampler": "euler-a", "scheduler": "EulerAncestralDiscreteScheduler"}
    assert image_key(before) == image_key(inverted)
    plain = {k: v for k, v in inverted.items() if k != "edit"}
    assert image_key({**plain, "sampler": "euler-a"}) != image_key(plain)  # other images: the sampler is the image
