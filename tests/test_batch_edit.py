"""`steer batch` jobs that edit given images (``image``, ``mask``, ``strength``): the same pixels as the Python API,
batched with other rows, resumable by the inputs' bytes, reproducible with `steer reproduce`, one-line refusals
while planning and a changed input failing only its image (tiny random SD pipeline, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steer.denoisers import CONTEXT_SITE
from steer.images import EditInputs, file_sha256
from steer.jobs import run as batch
from steer.pipelines.factory import editing_pipeline
from steer.recipe import read_recipe
from steer.testing import random_vector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = 4


@pytest.fixture(scope="module")
def files(tiny_pipe, tmp_path_factory):
    """Two source images (40 x 48, not the model's size), a mask of the left half, a direction."""
    folder = tmp_path_factory.mktemp("batch-edit")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / name)
    mask = np.zeros((48, 40), dtype=np.uint8)
    mask[:, :20] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    random_vector(tiny_pipe, [CONTEXT_SITE], scale=3.0).save(folder / "dir.safetensors")
    return folder


def write_jobs(folder: Path, jobs: list) -> Path:
    path = folder / "jobs.jsonl"
    path.write_text("".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs))
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def api_image(pipe, files: Path, source: str, seed: int, scale: float, strength: float, mask: bool = False):
    """The Python API's edit of one image (the call `steer generate --image` makes)."""
    from steer.vectors import SteeringVector

    edit_pipe = editing_pipeline(pipe, "inpaint" if mask else "img2img")
    inputs = EditInputs.read(files / source, files / "mask.png" if mask else None, strength).prepared(48, 40)
    if mask:
        inputs.update(height=48, width=40)
    return edit_pipe("a bag", num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator().manual_seed(seed),
                     steering=SteeringVector.load(files / "dir.safetensors"), steering_scale=scale, **inputs).images[0]


def test_edit_jobs_are_the_api_calls_batched_resumed_by_bytes_and_reproduced(tiny_pipe, files, tmp_path, capsys):
    work = tmp_path / "work"
    shutil.copytree(files, work)
    jobs = [
        {"prompt": "a bag", "image": "a.png", "seeds": [0, 1], "num_inference_steps": STEPS, "strength": 0.75,
         "directions": [{"path": "dir.safetensors", "sweep": [0, 1, 2]}], "name": "a"},
        {"prompt": "a bag", "image": "b.png", "seed": 0, "num_inference_steps": STEPS, "strength": 0.75,
         "directions": [{"path": "dir.safetensors", "scale": 1.0}], "name": "b"},
        {"prompt": "a bag", "image": "a.png", "mask": "mask.png", "seed": 2, "num_inference_steps": STEPS,
         "directions": [{"path": "dir.safetensors", "scale": 1.0}], "name": "inpaint"},
        {"prompt": "a bag", "seed": 0, "num_inference_steps": STEPS, "name": "from-noise"},
    ]
    plan = batch.plan_jobs([(i + 1, j) for i, j in enumerate(jobs)], tiny_pipe, tmp_path / "plan", model="tiny",
                           base_dir=work, batch_size=8)
    # the img2img rows of both images share one call; inpainting and the text-to-image job are their own
    assert sorted(len(b) for b in plan.batches) == [1, 1, 5] and not plan.failures
    out = tmp_path / "out"
    summary = batch.run(write_jobs(work, jobs), tiny_pipe, out, batch_size=8, model="tiny", progress=False)
    assert (summary["written"], summary["failed"]) == (7, 0), summary["failures"]
    for name, source, seed, scale, strength, mask in [
        ("a_seed0_s+0", "a.png", 0, 0.0, 0.75, False), ("a_seed1_s+1", "a.png", 1, 1.0, 0.75, False),
        ("b", "b.png", 0, 1.0, 0.75, False), ("inpaint", "a.png", 2, 1.0, 1.0, True),
    ]:
        made = pixels(out / f"{name}.png")
        assert made.shape == (48, 40, 3), name  # the image's own size
        expected = np.asarray(api_image(tiny_pipe, work, source, seed, scale, strength, mask), dtype=np.int16)
        assert np.abs(made - expected).max() <= 1, name  # a row of a batched call may round one level otherwise
    assert not np.array_equal(pixels(out / "a_seed0_s+0.png"), pixels(out / "a_seed0_s+1.png"))  # the direction edits
    recipe = read_recipe(out / "inpaint.png")
    assert recipe["edit"] == {"image": {"path": str((work / "a.png").resolve()), "sha256": file_sha256(work / "a.png")},
                              "mask": {"path": str((work / "mask.png").resolve()), "sha256": file_sha256(work / "mask.png")},
                              "strength": 1.0}  # the inpainting pipeline's default strength, recorded
    assert "edit" not in read_recipe(out / "from-noise.png")

    # the inputs moved with the same bytes: every image is the same one, nothing is made again
    moved = tmp_path / "moved"
    shutil.copytree(work, moved)
    shutil.rmtree(work)
    again = batch.run(write_jobs(moved, jobs), tiny_pipe, out, batch_size=8, model="tiny", progress=False)
    assert (again["written"], again["skipped"]) == (0, 7)
    # `steer reproduce` finds inputs that moved by their sha256 next to the image
    for name in ("a.png", "mask.png"):
        shutil.copy(moved / name, out / name)
    from steer.cli.main import main

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    capsys.readouterr()
    assert main(["reproduce", str(out / "a_seed1_s+1.png"), str(out / "inpaint.png"), "--model", str(model), "--directions", str(moved),
                 "--tolerance", "1"]) == 0  # a row of a batched call, made again alone, may round one level otherwise
    assert capsys.readouterr().out.count("batch recipe") == 2

    # another picture under a's name: its images are new ones
    Image.fromarray(255 - pixels(moved / "a.png").astype(np.uint8)).save(moved / "a.png")
    changed = batch.run(write_jobs(moved, jobs), tiny_pipe, out, batch_size=8, model="tiny", progress=False)
    assert (changed["written"], changed["skipped"]) == (5, 2)  # a's four sweep rows and its inpainting; b and the noise job kept


@pytest.mark.parametrize(
    ("job", "needles"),
    [
        ({"mask": "mask.png"}, ("mask goes with an image to edit",)),
        ({"strength": 0.5}, ("strength goes with an image to edit",)),
        ({"image": "nowhere.png"}, ("the image", "is not a file (looked for", "work/nowhere.png and nowhere.png)")),
        ({"image": "notes.png"}, ("the image", "not a readable image")),
        ({"image": "a.png", "mask": "small.png"}, ("the mask is 8x8 and the image 40x48",)),
        ({"image": "a.png", "strength": 0}, ("strength must be in (0, 1]",)),
        ({"image": "a.png", "strength": 1.5}, ("strength must be in [0, 1]",)),
        ({"image": "a.png", "strength": 0.2}, ("runs no denoising step",)),
        ({"image": 7}, ("image must be a file path",)),
        ({"image": "a.png", "height": 12}, ("height must be a multiple of 8",)),
        ({"image": "a.png", "take_away": "dir.safetensors", "take_away_fit": True}, ("take_away_fit fits text-to-image",)),
    ],
    ids=["mask-alone", "strength-alone", "missing", "not-an-image", "mask-size", "strength-0", "strength-big", "no-step",
         "not-a-path", "odd-height", "take-away-fit"],
)
def test_a_bad_edit_field_fails_its_job_in_one_line_and_the_others_run(job, needles, tiny_pipe, files, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(files, work)
    (work / "notes.png").write_text("not a picture")
    Image.new("L", (8, 8), 255).save(work / "small.png")
    good = {"prompt": "a bag", "image": "a.png", "num_inference_steps": STEPS, "name": "good"}
    bad = {"prompt": "a bag", "num_inference_steps": STEPS, "directions": ["dir.safetensors"], **job}
    reported: list[str] = []
    summary = batch.run(write_jobs(work, [good, bad]), tiny_pipe, tmp_path / "out", model="tiny", progress=False, report=reported.append)
    assert (summary["written"], summary["failed"]) == (1, 1)
    (failure,) = summary["failures"]
    assert failure["line"] == 2 and all(n in failure["reason"] for n in needles), failure
    assert reported == [f"line 2: {failure['reason']}"] and "\n" not in failure["reason"]


def test_an_input_changed_after_planning_fails_only_its_image(tiny_pipe, files, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(files, work)
    jobs = [{"prompt": "a bag", "image": name, "seed": 0, "num_inference_steps": STEPS, "name": name[0]} for name in ("a.png", "b.png")]
    changed = []

    def change_b(entry):  # after the first image is written, b.png gets other bytes (planned with the old ones)
        if not changed:
            changed.append(entry["path"])
            (work / "b.png").write_bytes((work / "mask.png").read_bytes())

    summary = batch.run(write_jobs(work, jobs), tiny_pipe, tmp_path / "out", batch_size=1, model="tiny", progress=False, on_image=change_b)
    assert summary["written"] == 1 and changed == ["a.png"]
    (failure,) = summary["failures"]
    assert failure["line"] == 2 and "b.png changed or went away since the run was planned" in failure["reason"]
    assert not (tmp_path / "out" / "b.png").exists()


def test_a_csv_jobs_file_takes_image_mask_and_strength_columns(tiny_pipe, files, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(files, work)
    (work / "jobs.csv").write_text(f"prompt,image,mask,strength,num_inference_steps,name\na bag,a.png,mask.png,0.5,{STEPS},x\n")
    summary = batch.run(work / "jobs.csv", tiny_pipe, tmp_path / "out", model="tiny", progress=False)
    assert summary["written"] == 1, summary["failures"]
    assert read_recipe(tmp_path / "out" / "x.png")["edit"]["strength"] == 0.5


def test_edit_jobs_run_on_sdxl_and_fail_in_one_line_where_the_family_has_no_steered_edit(files, tmp_path):
    """SDXL's image-to-image pipeline takes the edits at its own default strength (0.3); PixArt has none in
    diffusers: each of its edit jobs fails in one line while planning."""
    from steer.testing.pixart import tiny_pixart_pipeline
    from steer.testing.sdxl import tiny_sdxl_pipeline

    for name, make in (("sdxl", tiny_sdxl_pipeline), ("pixart", tiny_pixart_pipeline)):
        pipe = make(0)
        pipe.set_progress_bar_config(disable=True)
        work = tmp_path / name
        work.mkdir()
        shutil.copy(files / "a.png", work / "a.png")
        random_vector(pipe, [CONTEXT_SITE], scale=2.0).save(work / "dir.safetensors")
        jobs = [{"prompt": "a bag", "image": "a.png", "num_inference_steps": STEPS, "directions": ["dir.safetensors"], "name": "edit"},
                {"prompt": "a bag", "image": "a.png", "num_inference_steps": STEPS, "name": "plain"}]
        summary = batch.run(write_jobs(work, jobs), pipe, work / "out", model=name, progress=False)
        if name == "sdxl":
            assert (summary["written"], summary["failed"]) == (2, 0), summary["failures"]
            recipe = read_recipe(work / "out" / "edit.png")
            assert recipe["edit"]["strength"] == 0.3 and (recipe["height"], recipe["width"]) == (48, 40)
            assert Image.open(work / "out" / "edit.png").size == (40, 48)
        else:
            assert summary["written"] == 0 and summary["failures"] == [
                {"line": n, "reason": "diffusers has no img2img pipeline for a PixArtSigmaPipeline"} for n in (1, 2)]


def test_invert_jobs_replay_each_pictures_inversion_in_one_call_and_reproduce(tiny_pipe, files, tmp_path, capsys):
    """``invert: true``: each row replays its own picture's inversion (the seed draws its noise), rows of two pictures
    share one call and equal the Python API's replay; scale 0 is the picture; recipes say so and reproduce."""
    from steer.inversion import invert_image
    from steer.vectors import SteeringVector

    work = tmp_path / "work"
    shutil.copytree(files, work)
    jobs = [{"prompt": "a bag", "image": name, "invert": True, "seed": 3, "num_inference_steps": STEPS,
             "directions": [{"path": "dir.safetensors", "sweep": [0, 1, 2]}], "name": name[0]} for name in ("a.png", "b.png")]
    plan = batch.plan_jobs([(i + 1, j) for i, j in enumerate(jobs)], tiny_pipe, tmp_path / "plan", model="tiny", base_dir=work, batch_size=8)
    assert [len(b) for b in plan.batches] == [4] and not plan.failures
    out = tmp_path / "out"
    summary = batch.run(write_jobs(work, jobs), tiny_pipe, out, batch_size=8, model="tiny", progress=False)
    assert (summary["written"], summary["failed"]) == (4, 0), summary["failures"]
    vector = SteeringVector.load(work / "dir.safetensors")
    for name in ("a", "b"):
        picture = EditInputs.read(work / f"{name}.png").prepared(48, 40)["image"]
        inversion = invert_image(tiny_pipe, picture, "a bag", num_inference_steps=STEPS, guidance_scale=7.5, generator=torch.Generator().manual_seed(3))
        want = inversion.edit(tiny_pipe, rows=2, steering=vector, steering_scale=[0.0, 1.0]).images
        for scale, image in zip(("0", "1"), want, strict=True):
            assert np.abs(pixels(out / f"{name}_seed3_s+{scale}.png") - np.asarray(image, dtype=np.int16)).max() <= 1, (name, scale)
        assert read_recipe(out / f"{name}_seed3_s+1.png")["edit"]["invert"] is True
    from steer.cli.main import main

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    capsys.readouterr()
    assert main(["reproduce", str(out / "a_seed3_s+1.png"), "--model", str(model), "--directions", str(work), "--tolerance", "1"]) == 0
    for extra, needle in (({"mask": "mask.png"}, "it takes no mask"), ({"strength": 0.5}, "it takes no strength"),
                          ({"sampler": "euler"}, "it takes no sampler"), ({"invert": "yes"}, "invert must be true or false")):
        bad = batch.run(write_jobs(work, [{**jobs[0], **extra}]), tiny_pipe, tmp_path / "bad", model="tiny", progress=False)
        assert bad["failed"] == 1 and needle in bad["failures"][0]["reason"], bad["failures"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_invert_jobs_on_the_flow_matching_families_equal_the_python_apis_replay(family, tmp_path):
    """SD3 and Flux invert too (flow matching; Flux has no other image edit here): a batch ``invert`` job's rows equal
    `invert_image` + `ImageInversion.edit` with the job's seed, and the scale-0 row is the picture's replay."""
    from steer.inversion import invert_image
    from steer.testing.flux import tiny_flux_pipeline
    from steer.testing.sd3 import tiny_sd3_pipeline

    pipe = (tiny_sd3_pipeline if family == "sd3" else tiny_flux_pipeline)(0)
    pipe.set_progress_bar_config(disable=True)
    side = 56 if family == "sd3" else 16  # SD3's tiny transformer is 16 patches wide at most
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 255, (side, side + 8, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    vector = random_vector(pipe, [CONTEXT_SITE], scale=4.0)
    vector.save(tmp_path / "dir.safetensors")
    jobs = [{"prompt": "a bag", "image": "photo.png", "invert": True, "seed": 2, "num_inference_steps": STEPS,
             "directions": [{"path": "dir.safetensors", "sweep": [0, 1, 2]}], "name": "p"}]
    out = tmp_path / "out"
    summary = batch.run(write_jobs(tmp_path, jobs), pipe, out, batch_size=4, model=family, progress=False)
    assert (summary["written"], summary["failed"]) == (2, 0), summary["failures"]
    picture = EditInputs.read(tmp_path / "photo.png").prepared(side, side + 8)["image"]
    inversion = invert_image(pipe, picture, "a bag", num_inference_steps=STEPS, guidance_scale=read_recipe(out / "p_seed2_s+1.png")["guidance_scale"],
                             generator=torch.Generator().manual_seed(2))
    want = inversion.edit(pipe, rows=2, steering=vector, steering_scale=[0.0, 1.0]).images
    for scale, image in zip(("0", "1"), want, strict=True):
        assert np.abs(pixels(out / f"p_seed2_s+{scale}.png") - np.asarray(image, dtype=np.int16)).max() <= 1, scale
    assert np.abs(pixels(out / "p_seed2_s+1.png") - pixels(out / "p_seed2_s+0.png")).mean() > 0.5
