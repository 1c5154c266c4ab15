"""`steer reproduce`: images made again from the recipes steer generate, steer batch and the app write, pixel for
pixel; moved directions found by digest; images that do not match, and recipes that cannot be replayed, said so
(tiny random SD pipeline saved to disk, CPU)."""

import json
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from steer.cli.main import main
from steer.denoisers import CONTEXT_SITE
from steer.jobs import run as batch
from steer.recipe import RECIPE_KEY, read_recipe, save_png
from steer.replay import read_replay
from steer.testing import assert_one_line_error, random_vector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = "3"


@pytest.fixture(scope="module")
def directions(tiny_pipe, tmp_path_factory):
    """Two text directions learned on the tiny pipeline (they record the reference level a take-away needs), in
    different windows, saved."""
    folder = tmp_path_factory.mktemp("dirs")
    saved = []
    for name, (positive, negative), window in (("a", ("a blue bag", "a bag"), (0.0, 0.5)), ("b", ("a red dress", "a dress"), (0.0, 1.0))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: the calibration may not converge
            vector = tiny_pipe.learn_direction([positive], [negative], num_inference_steps=2, calibration_samples=2, window=window,
                                               readers="all", progress=False)
        vector.metadata["name"] = name
        saved.append(vector.save(folder / f"{name}.safetensors"))
    return tuple(saved)


def reproduce(capsys, *argv):
    code = main(["reproduce", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_images_come_back_identical_and_the_original_is_never_overwritten(model_dir, directions, tmp_path, capsys):
    a, b = directions
    out = tmp_path / "gen"
    assert main(["generate", "--model", model_dir, "--prompt", "a red bag", "--direction", str(a), str(b), "--weights", "1", "-0.5",
                 "--scale", "1.5", "--sampler", "euler-a", "--steps", STEPS, "--seed", "4", "--out", str(out)]) == 0
    png = out / "seed4_scale+1.5.png"
    before = png.read_bytes()
    code, printed, _ = reproduce(capsys, png, "--out", out)
    assert code == 0 and "identical (generate recipe, euler-a, 2 direction(s))" in printed
    assert png.read_bytes() == before  # the reproduction went next to it, under another name
    again = out / "seed4_scale+1.5.reproduced.png"
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(png)))
    assert read_recipe(again) == read_recipe(png)
    replay = read_replay(read_recipe(png))
    assert [d.scale for d in replay.directions] == [1.5, -0.75]
    assert replay.settings["steering_window"] == ((0.0, 0.5), (0.0, 1.0))  # each direction in its own window


def test_a_sweeps_images_are_made_again_as_rows_of_the_whole_sweep(model_dir, directions, tmp_path, capsys):
    """One row of a batched sweep can round differently from the same image made alone; its recipe records the
    sweep, so it is made again as that row, bit for bit, with a take-away too."""
    a, b = directions
    out = tmp_path / "sweep"
    assert main(["generate", "--model", model_dir, "--prompt", "a red dress", "--direction", str(a), "--take-away", str(b),
                 "--sweep=0,1.5,4", "--steps", STEPS, "--seed", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    rows = sorted(out.glob("seed2_scale*.png"))
    assert len(rows) == 4 and read_recipe(rows[0])["call"]["scales"] == [0.0, 0.5, 1.0, 1.5]
    code, printed, err = reproduce(capsys, *sorted(out.glob("*.png")))  # `out/*.png`: the grid too, skipped
    assert code == 0 and printed.count("identical (generate recipe, ddim, 2 direction(s))") == 4
    assert "note: skipped 1 sweep grid(s)" in err
    code, _, err = reproduce(capsys, out / "seed2_sweep.png")  # the grid alone: what to give instead
    assert code == 2 and "this is a sweep's grid; reproduce one of its images" in err
    replay = read_replay(read_recipe(out / "seed2_scale+1.5.png"))
    assert replay.call_scales == [[0.0, -0.0], [0.5, -0.5], [1.0, -1.0], [1.5, -1.0]] and replay.row == 3


def test_batch_images_with_a_take_away_a_sampler_or_nothing_come_back_identical(model_dir, directions, tmp_path, capsys):
    from steer.cli.loading import load_pipeline

    a, b = directions
    pipe = load_pipeline(model_dir, "cpu")  # as steer batch loads it (a scheduler built in code fills its config otherwise)
    jobs = [
        {"prompt": "a red dress", "seeds": [0, 1], "num_inference_steps": 3, "directions": [str(a)], "take_away": str(b), "name": "take"},
        {"prompt": "", "seed": 3, "num_inference_steps": 3, "directions": [{"path": str(a), "scale": 1.0}, {"path": str(b), "scale": 0.5}],
         "sampler": "dpm++2m", "name": "two"},
        {"prompt": "a sneaker", "seed": 2, "num_inference_steps": 3, "name": "plain"},
    ]
    summary = batch.run(jobs, pipe, tmp_path / "b", batch_size=4, progress=False, model=model_dir)
    assert summary["written"] == 4
    pngs = sorted((tmp_path / "b").glob("*.png"))
    code, printed, _ = reproduce(capsys, *pngs, "--tolerance", "1")  # the two take-away seeds were rows of one call
    assert code == 0 and printed.count("(batch recipe") == 4, printed  # made alone a row may round one level otherwise
    assert printed.count("identical (batch recipe") + printed.count("within tolerance: max |difference| 1/255") == 4
    assert "plain.png: identical" in printed and "two.png: identical" in printed  # made alone in the batch: exactly
    assert "dpm++2m, 2 direction(s)" in printed and "ddim, 2 direction(s)" in printed  # the take-away counts as one
    # a recipe from before samplers had names: its scheduler class samples it
    two = tmp_path / "b" / "two.png"
    recipe = read_recipe(two)
    del recipe["sampler"]
    old = save_png(Image.open(two), tmp_path / "old" / "two.png", recipe)
    code, printed, _ = reproduce(capsys, old, "--directions", a.parent)
    assert code == 0 and "identical (batch recipe, dpm++2m," in printed


def test_app_images_are_found_by_digest_and_come_back_identical(model_dir, directions, tmp_path, capsys):
    from steer.app import helpers as H
    from steer.cli.loading import load_pipeline
    from steer.vectors import SteeringVector

    tiny_pipe = load_pipeline(model_dir, "cpu")  # as python app.py --model loads it
    (tmp_path / "app").mkdir()
    a, b = (SteeringVector.load(p) for p in directions)
    settings = H.GenerateSettings(prompt="a red dress", seed=5, steps=3, strength=1.2, sampler="euler").validated(tiny_pipe)
    _, steered, _ = H.run_pair(tiny_pipe, a, settings, away=b)
    png = H.save_with_recipe(steered, settings.recipe(tiny_pipe, a, 1.2, b), tmp_path / "app", "pair")
    code, printed, err = reproduce(capsys, png, "--model", model_dir)  # the app names an in-memory pipeline
    assert code == 2
    assert_one_line_error(code, err, f"{png}: direction 'a'", "not found", "pass the folder that holds it with --directions",
                          prefix="steer reproduce: error:")
    code, printed, _ = reproduce(capsys, png, "--model", model_dir, "--directions", directions[0].parent)
    assert code == 0 and "identical (app recipe, euler, 2 direction(s))" in printed, printed


def test_an_image_that_no_longer_matches_its_recipe_says_where_and_exits_1(model_dir, directions, tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["generate", "--model", model_dir, "--prompt", "a bag", "--direction", str(directions[0]), "--steps", STEPS,
                 "--out", str(out)]) == 0
    capsys.readouterr()
    png = out / "seed0_scale+1.png"
    recipe = read_recipe(png)
    edited = save_png(Image.open(png), tmp_path / "e" / "seed0.png", {**recipe, "seed": 1})  # the recipe no longer tells it
    code, printed, _ = reproduce(capsys, png, edited)
    assert code == 1
    lines = printed.strip().splitlines()
    assert "identical" in lines[0] and "differs: max |difference|" in lines[1]
    code, printed, _ = reproduce(capsys, edited, "--tolerance", "255")  # every difference allowed: counted as reproduced
    assert code == 0 and "within tolerance: max |difference|" in printed


def test_a_moved_direction_is_found_by_its_digest_and_a_changed_one_is_not_taken(model_dir, directions, tiny_pipe, tmp_path, capsys):
    moved = tmp_path / "moved.safetensors"
    shutil.copy(directions[0], moved)
    out = tmp_path / "g"
    assert main(["generate", "--model", model_dir, "--prompt", "a bag", "--direction", str(moved), "--steps", STEPS, "--out", str(out)]) == 0
    png = out / "seed0_scale+1.png"
    random_vector(tiny_pipe, [CONTEXT_SITE], seed=9, name="a").save(moved)  # the recorded file now holds another direction
    code, printed, _ = reproduce(capsys, png, "--directions", directions[0].parent)
    assert code == 0 and "identical" in printed


@pytest.mark.parametrize(("recipe", "needle"), [
    (None, "carries no steer recipe"),
    ({"sweep": [0, 1], "prompt": "x"}, "this is a sweep's grid"),
    ({"prompt": "x", "seed": "zero", "num_inference_steps": 3, "guidance_scale": 5, "directions": []}, "the recipe's 'seed' is 'zero'"),
    ({"prompt": "x", "seed": 0, "num_inference_steps": 10**9, "guidance_scale": 5, "directions": []}, "'num_inference_steps'"),
    ({"prompt": "x", "seed": 0, "num_inference_steps": 3, "guidance_scale": 5, "directions": [{"name": "a", "weight": 1}], "scale": 1},
     "no name and digest"),
    ({"prompt": "x", "seed": 0, "num_inference_steps": 3, "guidance_scale": 5, "steering": {"name": "a", "digest": "d", "scale": 1,
      "window": [[[0, 1]]]}}, "not a window"),
    ([1, 2], "not a JSON object"),
    ({"prompt": "x", "seed": 0, "num_inference_steps": 3, "guidance_scale": 5, "steering": {"name": "a", "digest": "d", "scale": 1,
      "take_away": ["a"]}}, "'take_away.amount' is None"),
    ({"prompt": "x", "seed": 0, "num_inference_steps": 3, "guidance_scale": 5, "directions": [{"name": "a", "hash": "h", "weight": 1}],
      "scale": 1, "call": {"scales": [0, 1], "row": 5}}, "not a sweep's scales and this image's row"),
])
def test_a_recipe_that_cannot_be_replayed_is_one_line_before_any_model_loads(recipe, needle, tmp_path, capsys):
    png = tmp_path / "x.png"
    info = PngImagePlugin.PngInfo()
    if recipe is not None:
        info.add_text(RECIPE_KEY, json.dumps(recipe))
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    code, _, err = reproduce(capsys, png, "--model", "/no/such/model")  # a model that would fail to load: never reached
    assert_one_line_error(code, err, needle, prefix="steer reproduce: error:")


def test_a_missing_file_or_a_model_that_is_gone_is_one_line_naming_the_image(model_dir, directions, tmp_path, capsys):
    code, _, err = reproduce(capsys, tmp_path / "nope.png")
    assert_one_line_error(code, err, "no such file", prefix="steer reproduce: error:")
    moved = tmp_path / "model"
    shutil.copytree(model_dir, moved)
    assert main(["generate", "--model", str(moved), "--prompt", "a bag", "--steps", STEPS, "--out", str(tmp_path / "g")]) == 0
    shutil.rmtree(moved)
    capsys.readouterr()
    png = tmp_path / "g" / "seed0.png"
    code, _, err = reproduce(capsys, png)
    assert_one_line_error(code, err, f"{png}: model", "give another with --model", prefix="steer reproduce: error:")
    code, printed, _ = reproduce(capsys, png, "--model", model_dir)
    assert code == 0 and "identical" in printed
    hand_edited = read_recipe(png)
    hand_edited["height"] = 36  # read_replay takes it; the pipeline refuses it (not a multiple of 8)
    edited = save_png(Image.open(png), tmp_path / "edited" / "seed0.png", hand_edited)
    code, _, err = reproduce(capsys, edited, "--model", model_dir)
    assert_one_line_error(code, err, f"{edited}: its recipe cannot be made again:", "divisible by 8", prefix="steer reproduce: error:")


def test_an_image_made_with_relative_paths_reproduces_from_another_folder(model_dir, directions, tmp_path, capsys, monkeypatch):
    """``steer generate --model mdl --direction d.safetensors`` recorded the paths as typed, so `steer reproduce` run
    from any other folder could find neither; they are recorded absolute (a batch's too)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(model_dir, work / "mdl")
    shutil.copy(directions[0], work / "d.safetensors")
    (work / "jobs.jsonl").write_text(json.dumps({"prompt": "a bag", "num_inference_steps": 3, "directions": ["d.safetensors"], "name": "b"}) + "\n")
    monkeypatch.chdir(work)
    assert main(["generate", "--model", "mdl", "--prompt", "a bag", "--direction", "d.safetensors", "--steps", STEPS, "--out", "out"]) == 0
    assert main(["batch", "jobs.jsonl", "--model", "mdl", "--out", "bout"]) == 0
    recipe = read_recipe(work / "out" / "seed0_scale+1.png")
    assert recipe["model"] == str(work / "mdl") and recipe["directions"][0]["path"] == str(work / "d.safetensors")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    code, printed, err = reproduce(capsys, work / "out" / "seed0_scale+1.png", work / "bout" / "b.png")
    assert code == 0 and printed.count("identical") == 2, err
