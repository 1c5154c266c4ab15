"""The `steer` command line on a tiny pipeline saved to disk, and every subcommand end to end.

Every subcommand: exit status 0 on success; 2 with exactly one line on stderr (no traceback) on bad input. The console
script itself (``.venv/bin/steer``) runs in a subprocess for a few commands, including ``steer lab relu-dae`` which
used to write its results and then exit with a TypeError (its command returned the statistics dict).
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from steer.cli.main import main
from steer.recipe import read_recipe
from steer.testing import assert_one_line_error
from steer.vectors import SteeringVector


@pytest.fixture(scope="module")
def direction(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("dir") / "red_blue.safetensors"
    code = main(["learn", "--model", model_dir, "--positive", "a blue sneaker", "--negative", "a red sneaker", "--steps", "3", "--out", str(out)])
    assert code == 0
    return out


def test_learn_writes_a_loadable_direction_with_provenance(direction):
    v = SteeringVector.load(direction)
    assert v.metadata["method"] == "mean_diff" and v.metadata["source"].startswith("prompts-")  # the preset decides how
    assert v.metadata["positive"] == {"prompts": ["a blue sneaker"]}
    assert set(v.layers) == set(v.metadata["model"]["channels"])


def test_learn_window_is_calibrated_for_and_recorded_or_chosen_by_the_calibration(model_dir, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    args = ["learn", "--model", model_dir, "--positive", "a blue sneaker", "--negative", "a sneaker", "--steps", "2", "--out", str(out)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights may render no attribute
        assert main([*args, "--window", "0,1", "--negative-prompt", "a bag"]) == 0
        v = SteeringVector.load(out)
        assert v.metadata["recommended"]["window"] == [0.0, 1.0] and "calibration" in v.metadata and "window_choice" not in v.metadata
        assert v.metadata["sampling"]["negative_prompt"] == "a bag"  # calibrated for generating with it
        capsys.readouterr()
        assert main([*args, "--window", "auto"]) == 0  # the calibration compares 0,0.5 with 0,1 and says which it kept
    choice = SteeringVector.load(out).metadata["window_choice"]
    assert SteeringVector.load(out).metadata["recommended"]["window"] == choice["chosen"] and choice["windows"] == [[0.0, 0.5], [0.0, 1.0]]
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("window: "))
    assert line.startswith(f"window: {choice['chosen'][0]:g},{choice['chosen'][1]:g} (") and "0,0.5: " in line and "0,1: " in line
    assert main(["inspect", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["window_choice"] == choice
    assert main([*args, "--window", "0,1", "--branch", "split"]) == 0  # calibrated and recorded on the branch asked for
    assert SteeringVector.load(out).metadata["recommended"]["branch"] == "split"
    capsys.readouterr()  # its calibration's advice on these random weights
    rc, _, err = run_main([*args, "--window", "late"], capsys)
    assert_one_line_error(rc, err, "--window needs start,end (0 <= start < end <= 1) or auto, got 'late'")


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
    rec = v.metadata.get("recommended") or {}  # a call uses the direction's recommended settings, else the paper's
    assert recipe["window"] == list(rec.get("window", [0.45, 0.95])) and recipe["branch"] == rec.get("branch", "cond")
    with Image.open(out / "seed5_sweep.png") as grid, Image.open(out / "seed5_scale+0.png") as single:
        assert grid.size == (3 * single.size[0], single.size[1])
        # the size left to the model is recorded as generated, so the recipe reproduces it anywhere
        assert (recipe["width"], recipe["height"]) == single.size and read_recipe(out / "seed5_sweep.png")["width"] == single.size[0]


def test_generate_reproduces_from_recipe(model_dir, direction, tmp_path):
    args = ["generate", "--model", model_dir, "--prompt", "a bag", "--direction", str(direction), "--scale", "0.5", "--steps", "3", "--seed", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "seed2_scale+0.5.png").read_bytes() == (tmp_path / "b" / "seed2_scale+0.5.png").read_bytes()


def test_generate_weights_combine_directions_per_row_and_are_recorded(model_dir, direction, tmp_path, capsys):
    """``--weights`` multiplies each direction's scale: a direction added and taken away again cancels exactly (the
    image equals the scale-0 one, bit for bit), and each recipe records its weights."""
    args = ["generate", "--model", model_dir, "--prompt", "a bag", "--steps", "3", "--seed", "2", "--window", "0,1"]
    assert main([*args, "--direction", str(direction), str(direction), "--weights", "1", "-1", "--scale", "0.7", "--out", str(tmp_path / "w")]) == 0
    assert main([*args, "--direction", str(direction), "--scale", "0", "--out", str(tmp_path / "zero")]) == 0
    assert main([*args, "--direction", str(direction), "--scale", "0.7", "--out", str(tmp_path / "one")]) == 0
    cancelled = Image.open(tmp_path / "w" / "seed2_scale+0.7.png")
    assert np.array_equal(np.asarray(cancelled), np.asarray(Image.open(tmp_path / "zero" / "seed2_scale+0.png")))
    assert not np.array_equal(np.asarray(cancelled), np.asarray(Image.open(tmp_path / "one" / "seed2_scale+0.7.png")))
    recipe = read_recipe(tmp_path / "w" / "seed2_scale+0.7.png")
    assert [d["weight"] for d in recipe["directions"]] == [1.0, -1.0]
    rec = SteeringVector.load(direction).metadata["recommended"]  # several directions that agree: their settings apply
    assert (recipe["branch"], recipe["mode"]) == (rec["branch"], rec["mode"]) == ("cond", "token")
    capsys.readouterr()
    rc = main([*args, "--direction", str(direction), str(direction), "--weights", "1", "--out", str(tmp_path / "bad")])
    assert_one_line_error(rc, capsys.readouterr().err, "--weights takes one number per --direction", prefix="steer generate: error:")


def test_generate_takes_away_at_a_fitted_strength_and_window(model_dir, direction, tiny_pipe, tmp_path, capsys, monkeypatch):
    """`--take-away` removes what the prompt says along a second direction as --direction is added ([s, -min(s, 1)],
    steering_negative="replace": the prompt's word for it turned too); `--fit` fits the strength and window first, as
    `pipe.fit_take_away` does."""
    red = tmp_path / "red.safetensors"
    assert main(["learn", "--model", model_dir, "--positive", "a red sneaker", "--negative", "a sneaker", "--steps", "2",
                 "--out", str(red)]) == 0
    base = ["generate", "--model", model_dir, "--prompt", "a red sneaker", "--direction", str(direction), "--take-away", str(red),
            "--steps", "2", "--guidance", "5"]
    capsys.readouterr()
    assert main([*base, "--fit", "--out", str(tmp_path / "fit")]) == 0
    err = capsys.readouterr().err
    assert "fit: strength" in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the fit may not converge
        fit = tiny_pipe.fit_take_away(SteeringVector.load(direction), SteeringVector.load(red), guidance_scale=5.0)
    # the fit's advice (a pair that may not flip) as one warning line, as learning's
    said = [line for line in err.splitlines() if line.startswith("warning: take-away fit")]
    if fit.advice():
        assert said == [f"warning: {fit.advice()}"]
    else:  # random weights: usually no strength brings the samples closer, which is said too
        assert len(said) == (0 if fit.converged else 1) and all("no strength in" in line for line in said)
    (png,) = (tmp_path / "fit").glob("seed0_scale*.png")
    recipe = read_recipe(png)
    assert recipe["scale"] == round(fit.strength, 3) and recipe["window"] == list(fit.window) and recipe["negative"] == "replace"
    assert recipe["take_away"]["hash"] == SteeringVector.load(red).digest() and recipe["take_away"]["amount"] == min(recipe["scale"], 1.0)
    assert recipe["take_away"]["fit"] == {"strength": round(fit.strength, 4), "window": list(fit.window), "distance": round(fit.distance, 4)}
    blue_v, red_v = SteeringVector.load(direction), SteeringVector.load(red)
    want = tiny_pipe("a red sneaker", generator=torch.Generator().manual_seed(0), num_inference_steps=2, guidance_scale=5.0,
                     steering=[blue_v, red_v], steering_scale=[[recipe["scale"], -min(recipe["scale"], 1.0)]], steering_negative="replace",
                     steering_window=fit.window, output_type="np").images[0]
    with Image.open(png) as im:
        assert np.abs(np.asarray(im.convert("RGB"), dtype=np.int16) - np.round(want * 255).astype(np.int16)).max() <= 1
    # with --negative-prompt the fit is for generating with it (random weights fit alike either way: the call is checked)
    from steer.pipelines.mixin import SteeringMixin

    real, asked = SteeringMixin.fit_take_away, []
    monkeypatch.setattr(SteeringMixin, "fit_take_away", lambda self, *a, **kw: asked.append(
        tuple(kw.get(k) for k in ("negative_prompt", "height", "width"))) or real(self, *a, **kw))
    assert main([*base, "--fit", "--negative-prompt", "a coat", "--out", str(tmp_path / "fit_negative")]) == 0
    assert main([*base, "--fit", "--height", "48", "--width", "64", "--out", str(tmp_path / "fit_size")]) == 0
    assert asked == [("a coat", None, None), (None, 48, 64)]  # fitted at the size it generates, as steer batch fits a job
    capsys.readouterr()
    rc = main([*base, "--direction", str(direction), str(direction), "--out", str(tmp_path / "x")])
    assert_one_line_error(rc, capsys.readouterr().err, "--take-away goes with one --direction", prefix="steer generate: error:")
    rc = main([*base[:7], *base[9:], "--fit", "--out", str(tmp_path / "y")])
    assert_one_line_error(rc, capsys.readouterr().err, "--fit fits a take-away", prefix="steer generate: error:")


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
    assert lines[0].startswith("encoder_hidden_states\t32\tdefault (learn_direction)")  # the text-token site
    assert lines[1].startswith("down_blocks.0.resnets.0\t32")
    assert any(line.startswith("up_blocks.0.resnets.0\t64\tpaper") for line in lines)
    assert any(line.endswith(".attn2\t32") for line in lines)
    assert main(["inspect", str(direction)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "mean_diff" and info["layers"] == SteeringVector.load(direction).channels()


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


def test_generate_negative_remove_is_recorded_and_differs_from_subtract(model_dir, direction, tmp_path):
    base = ["generate", "--model", model_dir, "--prompt", "a blue bag", "--direction", str(direction), "--steps", "2", "--scale=-1", "--window", "0,1"]
    assert main([*base, "--out", str(tmp_path / "sub")]) == 0
    assert main([*base, "--negative", "remove", "--out", str(tmp_path / "rem")]) == 0
    sub, rem = tmp_path / "sub" / "seed0_scale-1.png", tmp_path / "rem" / "seed0_scale-1.png"
    assert (read_recipe(sub)["negative"], read_recipe(rem)["negative"]) == ("subtract", "remove")
    with Image.open(sub) as a, Image.open(rem) as b:
        assert a.tobytes() != b.tobytes()
    # "replace" with nothing added has no word to turn the prompt's into: recorded as asked, drawn as "remove"
    assert main([*base, "--negative", "replace", "--out", str(tmp_path / "rep")]) == 0
    rep = tmp_path / "rep" / "seed0_scale-1.png"
    assert read_recipe(rep)["negative"] == "replace"
    with Image.open(rep) as a, Image.open(rem) as b:
        assert a.tobytes() == b.tobytes()
    # the removal window: the direction's recommended one (its window's start to the end of the run) unless given;
    # removing over the first of the two steps only differs from removing over both
    assert main([*base, "--negative", "remove", "--removal-window", "0,0.5", "--out", str(tmp_path / "half")]) == 0
    half = tmp_path / "half" / "seed0_scale-1.png"
    assert read_recipe(half)["removal_window"] == [0.0, 0.5] and read_recipe(rem)["removal_window"] == [0.0, 1.0]
    with Image.open(half) as a, Image.open(rem) as b:
        assert a.tobytes() != b.tobytes()


def test_generate_recipe_records_the_window_several_directions_agree_on(model_dir, direction, tmp_path):
    paths = []
    for name in ("one", "two"):  # both recommend the whole run: the call steers over it, and the recipe says so
        v = SteeringVector.load(direction)
        v.metadata["recommended"] = {"window": [0.0, 1.0]}
        paths.append(str(v.save(tmp_path / f"{name}.safetensors")))
    args = ["generate", "--model", model_dir, "--prompt", "a bag", "--direction", *paths, "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    recipe = read_recipe(tmp_path / "a" / "seed0_scale+1.png")
    assert (recipe["window"], recipe["branch"], recipe["layers"]) == ([0.0, 1.0], "cond", None)
    assert main([*args, "--window", "0.2,0.8", "--out", str(tmp_path / "b")]) == 0
    assert read_recipe(tmp_path / "b" / "seed0_scale+1.png")["window"] == [0.2, 0.8]


# ----------------------------------------------------------------------------------------------------------------------
# Every subcommand, in process: success -> 0, bad input -> 2 and one line on stderr
# ----------------------------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def run_main(argv: list[str], capsys) -> tuple[object, str, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def test_every_subcommand_is_registered():
    from steer.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse has no public listing
    assert {"learn", "generate", "layers", "inspect", "directions", "detect", "batch", "reproduce", "lab"} <= set(commands)
    lab = commands["lab"]._subparsers._group_actions[0].choices  # noqa: SLF001
    assert {"train", "relu-dae", "relu-diffusion"} <= set(lab)


BAD_INPUTS = [
    (["learn", "--positive", "a", "--num-samples", "0", "--out", "x.safetensors"], "steer learn: error:"),
    (["learn", "--positive", "/no/such/dir/", "--model", "/no/such/model", "--out", "x.safetensors"], "steer learn: error:"),
    (["generate", "--prompt", "x", "--steps", "0", "--out", "o"], "steer generate: error:"),
    (["generate", "--prompt", "x", "--direction", "no-such-direction", "--out", "o"], "steer generate: error:"),
    (["layers", "--model", "/no/such/model"], "steer layers: error:"),
    (["layers", "--model", ".", "--device", "banana"], "steer layers: error:"),
    (["inspect", "/no/such/file.safetensors"], "steer inspect: error:"),
    (["inspect"], "steer inspect: error:"),
    (["detect", "--model", "/no/such/model", "--prompts", "p.txt", "--out", "r.jsonl"], "steer detect: error:"),
    (["detect", "--out", "r.jsonl"], "steer detect: error:"),
    (["batch", "/no/such/jobs.jsonl", "--out", "o"], "steer batch: error:"),
    (["batch", "--out", "o"], "steer batch: error:"),
    (["lab", "train", "--variant", "nope", "--out", "t"], "steer lab train: error:"),
    (["lab", "train", "--steps", "-1", "--out", "t"], "steer lab train: error:"),
    (["lab", "train", "--stage", "export", "--out", "no-such-run"], "steer lab train: error:"),
    (["lab", "train", "--stage", "decoder", "--out", "empty-run", "--threads", "1"], "steer lab train: error: empty-run: no vae/"),
    (["lab", "relu-dae", "--iters", "0", "--out", "d"], "steer lab relu-dae: error:"),
    (["lab", "relu-diffusion", "--only", "neither", "--out", "d"], "steer lab relu-diffusion: error:"),
    (["lab"], "steer lab: error:"),
    (["nonsense"], "steer: error:"),
    ([], "steer: error:"),
]


@pytest.mark.parametrize(("argv", "prefix"), BAD_INPUTS, ids=[" ".join(a[:3]) or "no-command" for a, _ in BAD_INPUTS])
def test_bad_input_is_exit_2_with_one_line(argv, prefix, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(argv, capsys)
    assert_one_line_error(rc, err, prefix=prefix)


def test_detect_and_batch_succeed_on_the_tiny_model(model_dir, tmp_path, capsys):
    from PIL import Image as PILImage

    images = tmp_path / "imgs"
    images.mkdir()
    PILImage.new("RGB", (32, 32), (200, 30, 30)).save(images / "a.png")
    rc, out, _ = run_main(["detect", "--model", model_dir, "--device", "cpu", "--images", str(images), "--out", str(tmp_path / "r.jsonl")], capsys)
    assert rc == 0 and "1 samples" in out
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 1
    # the report, its summary and histogram are never written through a link (a user's file was replaced by the plot)
    (tmp_path / "precious").write_text("keep")
    for linked in ("l.summary.json", "l.png", "l.jsonl"):
        (tmp_path / linked).symlink_to(tmp_path / "precious")
        rc, _, err = run_main(["detect", "--model", model_dir, "--device", "cpu", "--images", str(images), "--out", str(tmp_path / "l.jsonl")], capsys)
        assert_one_line_error(rc, err, f"refusing to write {tmp_path / linked}: it is a symbolic link")
        assert (tmp_path / "precious").read_text() == "keep" and not (tmp_path / "l.jsonl").is_file() or (tmp_path / "l.jsonl").is_symlink()
        (tmp_path / linked).unlink()
    # calibrating on too few prompts for the rate is said in one line, and the detector is still written
    (tmp_path / "ordinary.txt").write_text("a bag\na shoe\n")
    rc, out, err = run_main(["detect", "--model", model_dir, "--device", "cpu", "--calibrate", str(tmp_path / "ordinary.txt"), "--steps", "2",
                             "--fpr", "0.01", "--save-detector", str(tmp_path / "det.safetensors")], capsys)
    assert rc == 0 and (tmp_path / "det.safetensors").is_file(), err
    warned = [line for line in err.splitlines() if line.startswith("warning: detector:")]
    assert len(warned) == 1 and "2 ordinary sample(s) cannot resolve a false-positive rate of 0.01" in warned[0]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a bag", "seed": 1, "num_inference_steps": 2, "name": "bag"}) + "\n")
    rc, _, err = run_main(["batch", str(jobs), "--out", str(tmp_path / "batch"), "--model", model_dir, "--device", "cpu", "--no-progress"], capsys)
    assert rc == 0, err
    assert len(list((tmp_path / "batch").rglob("*.png"))) == 1


def test_lab_relu_diffusion_returns_its_stats_and_exits_0(tmp_path, capsys):
    """The theory commands return their statistics dict: the exit status is 0, not a TypeError."""
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist (make system-deps)")
    rc, _, err = run_main(["lab", "relu-diffusion", "--quick", "--iters", "2", "--out", str(tmp_path / "dif")], capsys)
    assert rc == 0, err
    stats = json.loads((tmp_path / "dif" / "diffusion_stats.json").read_text())
    assert stats["config"]["quick"] and stats["memorizing"]["n_train"] == 5
    # --reuse of models trained with another seed scored them against that seed's data (0 % memorized, not 4.7 %)
    before = (tmp_path / "dif" / "diffusion_stats.json").read_bytes()
    rc, _, err = run_main(["lab", "relu-diffusion", "--quick", "--iters", "2", "--seed", "5", "--reuse", "--out", str(tmp_path / "dif")], capsys)
    assert rc == 2 and "was trained with other settings (seed 0 there, 5 now)" in err and err.count("\n") == 1
    assert (tmp_path / "dif" / "diffusion_stats.json").read_bytes() == before
    rc, out, err = run_main(["lab", "relu-diffusion", "--quick", "--iters", "2", "--reuse", "--out", str(tmp_path / "dif")], capsys)
    assert rc == 0 and "reusing" in out, err


# ----------------------------------------------------------------------------------------------------------------------
# The console script itself
# ----------------------------------------------------------------------------------------------------------------------
def steer_script() -> list[str]:
    script = Path(sys.executable).with_name("steer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "steer.cli.main"]


def run_script(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*steer_script(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_console_script_generate_succeeds_and_bad_input_is_one_line(tmp_path):
    from PIL import Image as PILImage

    out = tmp_path / "out"
    proc = run_script(["generate", "--prompt", "a sneaker", "--direction", "red_to_blue", "--steps", "2", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 1 and read_recipe(pngs[0])["directions"][0]["name"] == "red_to_blue"
    with PILImage.open(pngs[0]) as image:
        assert max(image.convert("L").getextrema()) > 0, "not a black image"
    proc = run_script(["generate", "--prompt", "a sneaker", "--steps", "0", "--out", str(tmp_path / "bad")], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["steer generate: error: argument --steps: must be between 1 and 1000, got 0 (see steer generate --help)"]
    assert not (tmp_path / "bad").exists()


def test_console_script_lab_relu_dae_exits_0_after_writing_its_results(tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST missing: apt-get install dataset-fashion-mnist (make system-deps)")
    proc = run_script(["lab", "relu-dae", "--quick", "--iters", "2", "--no-hybrid", "--out", str(tmp_path / "dae")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    stats = json.loads((tmp_path / "dae" / "dae_stats.json").read_text())
    assert stats["config"]["quick"] and "ratios" in stats


def test_learn_readers_are_recorded_applied_by_generate_and_checked(model_dir, tmp_path, capsys):
    out = tmp_path / "layout.safetensors"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights may render no attribute
        assert main(["learn", "--model", model_dir, "--positive", "a red bag", "--negative", "a red item", "--steps", "2",
                     "--readers", "layout", "--out", str(out)]) == 0
    assert SteeringVector.load(out).metadata["recommended"]["readers"] == ["layout"]
    gen = ["generate", "--model", model_dir, "--prompt", "a red item", "--direction", str(out), "--steps", "2"]
    assert main([*gen, "--out", str(tmp_path / "rec")]) == 0
    assert main([*gen, "--readers", "all", "--out", str(tmp_path / "all")]) == 0
    routed, everyone = (read_recipe(next((tmp_path / d).glob("*.png"))) for d in ("rec", "all"))
    assert routed["readers"] == ["layout"] and everyone["readers"] == ["all"]
    capsys.readouterr()
    rc, _, err = run_main([*gen, "--readers", "nowhere", "--out", str(tmp_path / "bad")], capsys)
    last = err.strip().splitlines()[-1]  # after the model's loading bars: one line, no traceback
    assert rc == 2 and "Traceback" not in err and last.startswith("steer generate: error: steering_readers 'nowhere' names no cross-attention")


def test_compile_runs_generate_and_batch_on_one_compiled_denoiser_with_the_eager_images(model_dir, direction, tmp_path, capsys, monkeypatch):
    """``--compile BACKEND`` (generate, batch): the denoiser is compiled once with persistent steering sites and every
    image equals the uncompiled command's; an unknown backend is one line before the model loads."""
    import numpy as np

    def pixels(folder):
        return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in sorted(folder.rglob("*.png"))}

    gen = ["generate", "--model", model_dir, "--device", "cpu", "--prompt", "a sneaker", "--direction", str(direction), "--sweep=0,1,3", "--steps", "2"]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(j) + "\n" for j in [
        {"prompt": "a bag", "seed": 1, "num_inference_steps": 2, "name": "plain"},
        {"prompt": "a bag", "seed": 1, "num_inference_steps": 2, "name": "steered", "directions": [{"path": str(direction), "scale": 1.0}]},
        {"prompt": "a shoe", "seed": 2, "num_inference_steps": 2, "name": "half", "directions": [{"path": str(direction), "scale": 0.5}], "steering_window": [0.0, 0.5]},
    ]))
    batch = ["batch", str(jobs), "--model", model_dir, "--device", "cpu", "--no-progress"]
    from steer.pipelines.mixin import SteeringMixin

    compiles, compile_unet = [], SteeringMixin.compile_unet
    monkeypatch.setattr(SteeringMixin, "compile_unet", lambda self, **kw: compiles.append(kw) or compile_unet(self, **kw))
    try:
        for compiled in (False, True):
            extra = ["--compile", "eager"] if compiled else []
            assert run_main([*gen, *extra, "--out", str(tmp_path / f"g{compiled}")], capsys)[0] == 0
            rc, _, err = run_main([*batch, *extra, "--out", str(tmp_path / f"b{compiled}")], capsys)
            assert rc == 0, err
        assert compiles == [{"backend": "eager"}] * 2  # once per command, and only when asked
        for kind in ("g", "b"):
            eager, compiled = pixels(tmp_path / f"{kind}False"), pixels(tmp_path / f"{kind}True")
            assert set(eager) == set(compiled) and len(eager) >= 3
            for name in eager:
                np.testing.assert_array_equal(compiled[name], eager[name], err_msg=name)
    finally:
        torch._dynamo.reset()
    rc, _, err = run_main([*gen, "--compile", "inductr", "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and "unknown torch.compile backend 'inductr'; did you mean 'inductor'?" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_generate_that_fails_before_its_first_image_leaves_no_out_folder(model_dir, direction, tmp_path, capsys):
    out = tmp_path / "deeper" / "out"
    rc, _, err = run_main(["generate", "--model", model_dir, "--device", "cpu", "--prompt", "a bag", "--direction", str(direction),
                           "--layers", "up_blocks.9.nope", "--steps", "2", "--out", str(out)], capsys)
    errors = [line for line in err.splitlines() if "error:" in line]  # (stderr also carries the loading progress bars)
    assert rc == 2 and len(errors) == 1 and "up_blocks.9.nope" in errors[0]
    assert not (tmp_path / "deeper").exists()


def test_every_option_of_every_command_says_what_it_does():
    """`steer <command> --help` explains each option: none is listed bare (a user should not have to read the source
    to learn what --timestep or --mem-fraction does)."""
    import argparse

    from steer.cli.main import build_parser

    bare = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif not action.help and action.dest != "help":
                bare.append(" ".join([*path, *(action.option_strings or [action.dest])]))

    walk(build_parser(), ["steer"])
    assert bare == []


def test_generate_and_reproduce_never_overwrite_another_runs_images(model_dir, direction, tmp_path, capsys):
    """One --out folder for several prompts: each run's files keep one suffix (-2, -3) where another run's images hold
    the names; the same command again overwrites only its own images (no pile of copies); a foreign file or a symlink
    at a name is left as it was."""
    out = tmp_path / "out"
    base = ["generate", "--model", model_dir, "--direction", str(direction), "--steps", "2", "--sweep", "0,1,2", "--out", str(out)]
    names = ["seed0_scale+0.png", "seed0_scale+1.png", "seed0_sweep.png"]
    assert main([*base, "--prompt", "a bag"]) == 0
    first = {n: (out / n).read_bytes() for n in names}
    assert main([*base, "--prompt", "a bag"]) == 0  # the same recipe again: its own files, rewritten in place
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    capsys.readouterr()
    assert main([*base, "--prompt", "a coat"]) == 0
    err = capsys.readouterr().err
    assert "these are written as seed0_scale+0-2.png" in err and "nothing overwritten" in err
    assert {n: (out / n).read_bytes() for n in names} == first  # the bag run's images are intact
    # a sweep whose first name is free but whose others are taken: the note names one that is there
    assert main([*base[:-4], "--sweep", "-1,1,3", "--out", str(out), "--prompt", "a shoe"]) == 0
    assert "holds other images named seed0_scale+0.png" in capsys.readouterr().err
    for png in out.glob("*.png"):  # the rest of the test counts the other runs' files
        if read_recipe(png)["prompt"] == "a shoe":
            png.unlink()
    assert [read_recipe(out / n.replace(".png", "-2.png"))["prompt"] for n in names] == ["a coat"] * 3
    # a file that is not a steer PNG, and a symlink, take names of their own: both stay as they were
    (out / "seed1_scale+0.png").write_text("my notes")
    elsewhere = tmp_path / "elsewhere.png"
    elsewhere.write_bytes(first["seed0_scale+1.png"])
    (out / "seed1_scale+1.png").symlink_to(elsewhere)
    assert main([*base, "--prompt", "a bag", "--seed", "1"]) == 0
    assert (out / "seed1_scale+0.png").read_text() == "my notes" and (out / "seed1_scale+1.png").is_symlink()
    assert elsewhere.read_bytes() == first["seed0_scale+1.png"]
    assert read_recipe(out / "seed1_scale+1-2.png")["seed"] == 1
    # steer reproduce --out: another original of the same name is kept, the same one rewritten
    again = tmp_path / "again"
    for png in (out / "seed0_scale+1.png", out / "seed0_scale+1.png", tmp_path / "other" / "seed0_scale+1.png"):
        if not png.exists():
            png.parent.mkdir()
            png.write_bytes((out / "seed0_scale+1-2.png").read_bytes())
        assert main(["reproduce", str(png), "--out", str(again)]) == 0
    assert sorted(p.name for p in again.iterdir()) == ["seed0_scale+1.reproduced-2.png", "seed0_scale+1.reproduced.png"]
    assert read_recipe(again / "seed0_scale+1.reproduced-2.png")["prompt"] == "a coat"
