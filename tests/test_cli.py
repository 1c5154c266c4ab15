"""The `steer` command line on a tiny pipeline saved to disk."""

import json

import pytest
from PIL import Image

from steer.cli import main
from steer.recipe import read_recipe
from steer.vectors import SteeringVector


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_pipe):
    path = tmp_path_factory.mktemp("tiny-model")
    tiny_pipe.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def direction(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dir") / "red_blue.safetensors"
    code = main(["learn", "--model", model_dir, "--positive", "a blue sneaker", "--negative", "a red sneaker", "--num-samples", "2", "--steps", "3", "--out", str(out)])
    assert code == 0
    return out


def test_learn_writes_a_loadable_direction_with_provenance(direction):
    v = SteeringVector.load(direction)
    assert v.metadata["method"] == "mean_diff" and v.metadata["source"] == "prompts-reference"
    assert v.metadata["positive"] == {"prompts": ["a blue sneaker"]}
    assert set(v.layers) == set(v.metadata["model"]["channels"])


def test_generate_sweep_writes_pngs_with_recipe_and_a_grid(model_dir, direction, tmp_path):
    out = tmp_path / "gen"
    code = main(["generate", "--model", model_dir, "--prompt", "a sneaker", "--direction", str(direction), "--sweep=-1,1,3", "--steps", "3", "--seed", "5", "--out", str(out)])
    assert code == 0
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == ["seed5_scale+0.png", "seed5_scale+1.png", "seed5_scale-1.png", "seed5_sweep.png"]
    recipe = read_recipe(out / "seed5_scale+1.png")
    v = SteeringVector.load(direction)
    assert recipe["scale"] == 1.0 and recipe["seed"] == 5 and recipe["prompt"] == "a sneaker"
    assert recipe["directions"][0]["hash"] == v.digest()
    assert recipe["window"] == [0.45, 0.95] and recipe["branch"] == "cond"
    with Image.open(out / "seed5_sweep.png") as grid, Image.open(out / "seed5_scale+0.png") as single:
        assert grid.size == (3 * single.size[0], single.size[1])


def test_generate_reproduces_from_recipe(model_dir, direction, tmp_path):
    args = ["generate", "--model", model_dir, "--prompt", "a bag", "--direction", str(direction), "--scale", "0.5", "--steps", "3", "--seed", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "seed2_scale+0.5.png").read_bytes() == (tmp_path / "b" / "seed2_scale+0.5.png").read_bytes()


def test_clear_errors_not_tracebacks(model_dir, direction, tmp_path, capsys):
    assert main(["generate", "--model", model_dir, "--prompt", "x", "--direction", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)]) == 2
    assert "direction file not found" in capsys.readouterr().err
    assert main(["generate", "--model", model_dir, "--prompt", "x", "--direction", str(direction), "--layers", "up_blocks.0.resnet.1", "--steps", "2", "--out", str(tmp_path)]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "missing-model"), "--prompt", "x", "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", model_dir, "--prompt", "x", "--sweep", "1,2", "--out", str(tmp_path)])
    assert "--sweep needs 3" in capsys.readouterr().err


def test_layers_and_inspect(model_dir, direction, capsys):
    assert main(["layers", "--model", model_dir]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("down_blocks.0.resnets.0\t32")
    assert any(line.startswith("up_blocks.0.resnets.0\t64\tdefault") for line in lines)
    assert main(["inspect", str(direction)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "mean_diff" and info["layers"]["up_blocks.0.resnets.0"] == 64


def test_generate_uses_the_directions_recommended_settings_unless_overridden(model_dir, direction, tmp_path):
    v = SteeringVector.load(direction)
    v.metadata["recommended"] = {"window": [0.0, 1.0], "mode": "weighted", "normalize": True}
    rec_path = v.save(tmp_path / "rec.safetensors")
    base = ["generate", "--model", model_dir, "--prompt", "a bag", "--direction", str(rec_path), "--steps", "2"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    recipe = read_recipe(tmp_path / "a" / "seed0_scale+1.png")
    assert (recipe["window"], recipe["mode"], recipe["normalize"], recipe["branch"]) == ([0.0, 1.0], "weighted", True, "cond")
    assert main([*base, "--mode", "add", "--no-normalize", "--window", "0.2,0.8", "--out", str(tmp_path / "b")]) == 0
    recipe = read_recipe(tmp_path / "b" / "seed0_scale+1.png")
    assert (recipe["window"], recipe["mode"], recipe["normalize"]) == ([0.2, 0.8], "add", False)
