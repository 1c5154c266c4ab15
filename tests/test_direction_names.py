"""What a bare direction name means, by one rule everywhere (`steer.assets.find_direction`): the user's local file
(``NAME`` or ``NAME.safetensors``, as `SteeringVector.save` writes it) before the bundled direction of that name, with
one line saying so when it shadows one. ``steer learn --out to_red`` wrote ./to_red.safetensors, then ``steer
generate``, ``steer inspect`` and ``pipe(steering="to_red")`` took the bundled to_red while ``steer batch`` and
`SteeringVector.load` took the user's file (hunt32 finding 4)."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from steer.assets import bundled_directions, find_direction, out_shadow_note
from steer.cli.main import main
from steer.recipe import read_recipe
from steer.vectors import SteeringVector

SHADOW = "is the local file"  # the note's words


@pytest.fixture(scope="module")
def mine(tiny_pipe):
    """A direction of the tiny model (the bundled to_red is the demo model's)."""
    return tiny_pipe.learn_direction(["a red bag"], ["a bag"], calibrate=False, progress=False)


@pytest.fixture()
def in_folder(tmp_path, monkeypatch, mine):
    """A working folder holding the user's to_red.safetensors (a bundled name) and mine.safetensors (none)."""
    monkeypatch.chdir(tmp_path)
    mine.save(tmp_path / "to_red")
    mine.save(tmp_path / "mine")
    return tmp_path


def test_a_local_file_comes_before_a_bundled_name_and_says_so(in_folder, tmp_path_factory):
    bundled = bundled_directions()
    assert "to_red" in bundled and "mine" not in bundled
    found = find_direction("to_red")
    assert found.path == Path("to_red.safetensors")  # as local_direction names it
    assert SHADOW in found.note and str(bundled["to_red"]) in found.note
    assert find_direction("mine").path.name == "mine.safetensors" and find_direction("mine").note is None
    assert find_direction("to_blue") == (bundled["to_blue"], find_direction("to_blue").tried, None)  # no file: the bundled one
    assert find_direction("nothing").path is None
    # a folder of the name (steer generate --out to_red) is no direction file: the bundled name still means that one
    (in_folder / "to_blue").mkdir()
    assert find_direction("to_blue").path == bundled["to_blue"]
    # a jobs file's folder first, then the name as given
    jobs = tmp_path_factory.mktemp("jobs")
    SteeringVector.load("mine").save(jobs / "to_blue")
    assert find_direction("to_blue", under=jobs).path == jobs / "to_blue.safetensors"
    assert find_direction("to_red", under=jobs).path.name == "to_red.safetensors" and find_direction("to_red", under=jobs).tried[0] == jobs / "to_red"
    assert find_direction(bundled["to_red"]).note is None  # the bundled file itself, by its path


def test_steering_by_name_takes_the_local_file_with_a_user_warning(tiny_pipe, in_folder, mine, one_thread):
    kw = dict(num_inference_steps=2, output_type="pt", height=32, width=32)
    with pytest.warns(UserWarning, match=f"'to_red' {SHADOW} to_red.safetensors"):
        by_name = tiny_pipe("a bag", steering="to_red", generator=torch.Generator().manual_seed(0), **kw).images
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no note for the vector itself, nor for a name no bundled direction has
        by_vector = tiny_pipe("a bag", steering=mine, generator=torch.Generator().manual_seed(0), **kw).images
        assert tiny_pipe.load_direction("mine").digest() == mine.digest()  # mine.safetensors (was: "no direction file")
    torch.testing.assert_close(by_name, by_vector, rtol=0, atol=0)
    with pytest.warns(UserWarning, match=SHADOW):
        assert tiny_pipe.load_direction("to_red").digest() == mine.digest()


def test_generate_inspect_and_batch_take_the_local_file_with_a_note(model_dir, in_folder, mine, capsys):
    assert main(["generate", "--model", model_dir, "--prompt", "a bag", "--direction", "to_red", "--steps", "2", "--out", "gen"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if SHADOW in line] == [f"note: 'to_red' {SHADOW} to_red.safetensors, not the bundled direction "
                                                                     f"to_red (a local file comes first; pass {bundled_directions()['to_red']} "
                                                                     "for the bundled one)"]
    recipe = read_recipe(next((in_folder / "gen").glob("*.png")))
    assert recipe["directions"][0]["hash"] == mine.digest() and recipe["directions"][0]["path"] == str(in_folder / "to_red.safetensors")
    assert main(["inspect", "to_red", "--model", model_dir]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["digest"] == mine.digest() and err.startswith(f"note: 'to_red' {SHADOW}")
    assert main(["inspect", "mine"]) == 0 and json.loads(capsys.readouterr().out)["digest"] == mine.digest()  # was "not found"
    jobs = in_folder / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"prompt": p, "num_inference_steps": 2, "directions": [{"path": "to_red"}]}) + "\n" for p in ("a bag", "a hat")))
    assert main(["batch", str(jobs), "--out", "batch", "--model", model_dir, "--device", "cpu", "--no-progress"]) == 0
    noted = [line for line in capsys.readouterr().err.splitlines() if SHADOW in line]
    assert len(noted) == 1 and noted[0].startswith(f"note: line 1: 'to_red' {SHADOW} {in_folder / 'to_red.safetensors'}")  # once a run
    assert {read_recipe(p)["directions"][0]["hash"] for p in (in_folder / "batch").rglob("*.png")} == {mine.digest()}


def test_learn_out_a_bundled_name_notes_that_it_shadows_it(model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert out_shadow_note("mine") is None and "to_red" in out_shadow_note("dirs/to_red.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["learn", "--model", model_dir, "--positive", "a red bag", "--out", "to_red"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: to_red.safetensors is named like the bundled direction to_red: --direction to_red (steering='to_red') "
                     "given in this folder will take this file, not the bundled one"]
