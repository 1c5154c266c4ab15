"""The command line's inputs: prompt files for ``steer learn``, pickled direction files, empty or missing jobs
files, ``--out`` paths that are files, misspelt direction names, the shared limits, the documented defaults, and the
mistakes that are refused before the model loads (one line, exit status 2)."""

import json
import pickle
from pathlib import Path

import pytest
import torch

import steer.cli.batch
import steer.cli.loading
import steer.jobs.plan
from steer.assets import bundled_directions
from steer.cli.main import build_parser, main
from steer.testing import assert_one_line_error
from steer.vectors import SteeringFileError, SteeringVector


@pytest.fixture()
def no_model(monkeypatch):
    """The model must not load: a command that gets as far as loading it fails the test (not a one-line error)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(steer.cli.loading, "load_pipeline", refuse)
    monkeypatch.setattr(steer.cli.batch, "load_pipeline", refuse)


def refusal(argv: list[str], capsys, *needles: str) -> str:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    return assert_one_line_error(rc, capsys.readouterr().err, *needles, prefix=f"steer {argv[0]}: error:")


# ----- 1. steer learn --positive / --negative take .txt files of prompts -------------------------------------------
def test_learn_reads_the_prompts_of_a_txt_file(tiny_pipe, tmp_path, capsys):
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    (tmp_path / "pos.txt").write_text("a blue sneaker\n\n  a blue bag  \n")
    out = tmp_path / "d.safetensors"
    argv = ["learn", "--model", str(model), "--positive", str(tmp_path / "pos.txt"), "--negative", "a red sneaker",
            "--steps", "2", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    v = SteeringVector.load(out)
    assert v.metadata["positive"] == {"prompts": ["a blue sneaker", "a blue bag"]}  # not the path itself
    assert v.metadata["negative"] == {"prompts": ["a red sneaker"]} and "pos.txt" not in v.name


@pytest.mark.parametrize(("content", "needle"), [("", "holds no prompts"), ("\n  \n", "holds no prompts"),
                                                 (b"\xff\xfe bad", "is not UTF-8 text")])
def test_learn_refuses_an_empty_or_unreadable_prompt_file_before_loading(no_model, tmp_path, capsys, content, needle):
    path = tmp_path / "neg.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    refusal(["learn", "--positive", "a blue bag", "--negative", str(path), "--out", str(tmp_path / "d.safetensors")], capsys,
            str(path), needle)


def test_learn_refuses_a_missing_prompt_file_and_a_folder_as_out_before_loading(no_model, tmp_path, capsys):
    refusal(["learn", "--positive", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "d.safetensors")], capsys,
            f"prompt file not found: {tmp_path / 'nope.txt'}")
    refusal(["learn", "--positive", "a blue bag", "--out", str(tmp_path)], capsys, f"--out {tmp_path} is a folder, not a file")
    (tmp_path / "empty").mkdir()
    refusal(["learn", "--positive", str(tmp_path / "empty"), "--out", str(tmp_path / "d.safetensors")], capsys, "holds no images")
    for blank in ("", "  "):  # '' used to read as the current folder (its images, or "holds no images")
        refusal(["learn", "--positive", "a blue bag", "--negative", blank, "--out", str(tmp_path / "d.safetensors")], capsys,
                "--negative got a blank value")
    # --out NAME lands at NAME.safetensors: a folder or a link there was found only after the learning (lost)
    (tmp_path / "blue.safetensors").mkdir()
    refusal(["learn", "--positive", "a blue bag", "--out", str(tmp_path / "blue")], capsys,
            f"--out {tmp_path / 'blue.safetensors'} is a folder, not a file")
    (tmp_path / "red.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    refusal(["learn", "--positive", "a red bag", "--out", str(tmp_path / "red")], capsys,
            f"refusing to write {tmp_path / 'red.safetensors'}: it is a symbolic link (--out)")
    (tmp_path / "cal.txt").write_text("a bag\n")
    refusal(["detect", "--calibrate", str(tmp_path / "cal.txt"), "--save-detector", str(tmp_path / "blue")], capsys,
            f"--save-detector {tmp_path / 'blue.safetensors'} is a folder, not a file")
    for folder in (".", "/"):  # a raw "PosixPath('.') has an empty name" before
        refusal(["learn", "--positive", "a blue bag", "--out", folder], capsys, f"--out {folder} is a folder, not a file")


# ----- 2. a pickled direction file is named as such and never unpickled ---------------------------------------------
class _Tripwire:
    """Unpickling it creates ``marker``: the file must stay absent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["zip", "legacy", "plain"])
def test_a_pickled_direction_is_refused_in_one_line_and_never_unpickled(no_model, tmp_path, capsys, kind):
    marker, path = tmp_path / "unpickled", tmp_path / "real.pt"
    obj = {"up_blocks.0": torch.zeros(4), "trap": _Tripwire(marker)}
    if kind == "plain":
        path.write_bytes(pickle.dumps(obj, protocol=4))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=kind == "zip")
    with pytest.raises(SteeringFileError, match=r"PyTorch pickle .*never unpickles.*\.safetensors") as err:
        SteeringVector.load(path)
    assert "header too large" not in str(err.value) and "\n" not in str(err.value)
    refusal(["inspect", str(path)], capsys, "PyTorch pickle", "save the steering vector as .safetensors")
    refusal(["generate", "--prompt", "x", "--direction", str(path), "--out", str(tmp_path / "o")], capsys, "PyTorch pickle")
    # every file steer reads goes through the same check: a pickled detector too
    from steer.detect.detector import MemorizationDetector
    from steer.errors import DetectorFileError

    with pytest.raises(DetectorFileError, match=r"PyTorch pickle .*never unpickles.*\.safetensors"):
        MemorizationDetector.load(path, None)
    assert not marker.exists()


def test_a_corrupt_file_that_is_no_pickle_keeps_its_message(tmp_path):
    path = tmp_path / "fake.pt"
    path.write_bytes(b"hello\n")
    with pytest.raises(SteeringFileError, match="not a readable safetensors file"):
        SteeringVector.load(path)


# ----- 3. empty and missing jobs files -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "text"), [("empty.jsonl", ""), ("comments.jsonl", "# nothing yet\n\n"), ("empty.csv", "\n"),
                                            ("header.csv", "prompt,seed\n"), ("empty.yaml", ""), ("nojobs.yaml", "jobs: []\n")])
def test_batch_refuses_a_file_without_jobs_before_loading(no_model, tmp_path, capsys, name, text):
    jobs = tmp_path / name
    jobs.write_text(text)
    refusal(["batch", str(jobs), "--out", str(tmp_path / "out")], capsys, f"no jobs in {jobs}")


def test_batch_names_a_missing_jobs_file_before_loading(no_model, tmp_path, capsys):
    line = refusal(["batch", str(tmp_path / "jobs.jsonl"), "--out", str(tmp_path / "out")], capsys,
                   f"jobs file not found: {tmp_path / 'jobs.jsonl'}")
    assert "Errno" not in line
    refusal(["batch", str(tmp_path), "--out", str(tmp_path / "out")], capsys, "is a folder, not a jobs file")


def test_a_single_file_checkpoint_as_model_says_how_to_convert_it(tmp_path, capsys):
    """A ``.safetensors`` checkpoint (what model sites hand out) is named as such with the one-line conversion, not
    "a path but not a diffusers pipeline directory"."""
    checkpoint = tmp_path / "dreamy.safetensors"
    checkpoint.write_bytes(b"not loaded")
    refusal(["generate", "--model", str(checkpoint), "--prompt", "x", "--steps", "2", "--out", str(tmp_path / "o")], capsys,
            f"{checkpoint} is a single-file checkpoint", "from_single_file(path).save_pretrained(folder)")
    assert not (tmp_path / "o").exists()


def test_a_model_folder_with_pickle_weights_is_refused_and_never_unpickled(model_dir, tmp_path, capsys, monkeypatch):
    """A pipeline folder whose UNet weights are ``diffusion_pytorch_model.bin`` (torch.save) was loaded with
    torch.load, unpickling a user file; now the loader asks diffusers for safetensors only and says what to do."""
    import shutil

    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    shutil.copytree(model_dir, model)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), model / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: unpickled.append(a) or pytest.fail("torch.load was called"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: unpickled.append(a) or pytest.fail("pickle.load was called"))
    refusal(["generate", "--model", str(model), "--prompt", "x", "--steps", "2", "--out", str(tmp_path / "o")], capsys,
            "unet/diffusion_pytorch_model.bin is a PyTorch pickle, which steer never unpickles", "save_pretrained(new_folder)")
    assert not unpickled and not (tmp_path / "o").exists()
    # a component steer never loads (the safety checker) may hold pickles: the folder loads, none is read
    monkeypatch.undo()
    weights_back = model / "unet" / "diffusion_pytorch_model.safetensors"
    shutil.copy(Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors", weights_back)
    (model / "unet" / "diffusion_pytorch_model.bin").unlink()
    (model / "safety_checker").mkdir()
    torch.save({}, model / "safety_checker" / "pytorch_model.bin")
    steer.cli.loading._check_no_pickles(str(model))


# ----- 4. --out naming a file --------------------------------------------------------------------------------------
def test_out_that_is_a_file_is_refused_before_loading(no_model, tmp_path, capsys):
    taken = tmp_path / "one.txt"
    taken.write_text("x")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a bag"}) + "\n")
    for argv in (["generate", "--prompt", "x", "--out", str(taken)], ["batch", str(jobs), "--out", str(taken)]):
        line = refusal(argv, capsys, f"--out {taken} is a file, not a folder")
        assert "Errno" not in line
    refusal(["generate", "--prompt", "x", "--out", str(taken / "sub")], capsys, f"{taken} is a file, not a folder")
    assert taken.read_text() == "x"


# ----- 5. a misspelt bundled direction name ------------------------------------------------------------------------
def test_a_misspelt_direction_name_gets_the_closest_and_the_list(no_model, tmp_path, capsys):
    assert "to_blue" in bundled_directions(None) and "to_red" in bundled_directions(None)
    line = refusal(["generate", "--prompt", "x", "--direction", "to_bleu", "--out", str(tmp_path / "o")], capsys,
                   "direction file not found: 'to_bleu'", "did you mean 'to_blue'?")
    assert "to_red" in line  # the list of what the model ships, too
    line = refusal(["inspect", "to_bleu"], capsys, "direction file not found: 'to_bleu'", "did you mean 'to_blue'?")
    assert "to_red" in line
    line = refusal(["inspect", "zzzzzz"], capsys, "direction file not found: 'zzzzzz'")
    assert "did you mean" not in line and "to_red" in line


# ----- 7. one set of limits for the command line and batch ---------------------------------------------------------
def test_the_command_line_uses_the_batch_limits(no_model, tmp_path, capsys):
    scale, guidance = steer.jobs.plan.MAX_SCALE, steer.jobs.plan.MAX_GUIDANCE
    assert (scale, guidance) == (1000.0, 100.0)  # as the README's batch section says
    gen = ["generate", "--prompt", "x", "--out", str(tmp_path / "o")]
    refusal([*gen, "--scale", f"{scale * 5:g}"], capsys, "--scale", f"{scale:g}")
    refusal([*gen, "--guidance", f"{guidance * 5:g}"], capsys, "--guidance", f"{guidance:g}")
    refusal([*gen, "--sweep", f"0,{scale * 2:g},3"], capsys, "--sweep", f"{scale:g}")
    refusal([*gen, "--direction", "to_blue", "--weights", f"{scale * 2:g}"], capsys, "--weights")
    refusal(["learn", "--positive", "a", "--guidance", f"{guidance + 1:g}", "--out", "d.safetensors"], capsys, "--guidance")
    refusal(["detect", "--prompts", "p.txt", "--guidance", f"{guidance + 1:g}", "--out", "r.jsonl"], capsys, "--guidance")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a bag"}\n')
    for size in ("0", "100000"):  # a typo made one pipeline call of that many rows (out of memory on a real model)
        refusal(["batch", str(jobs), "--out", str(tmp_path / "b"), "--batch-size", size], capsys, "--batch-size", "1024")
    prompts = tmp_path / "many.txt"
    prompts.write_text("a bag\n" * 200)
    refusal(["detect", "--prompts", str(prompts), "--num-images-per-prompt", "100", "--out", str(tmp_path / "r.jsonl")], capsys,
            "--prompts: 200 prompts x --num-images-per-prompt 100 is 20000 images, above the limit of 10000 per run")


# ----- 8. the help states the defaults the command applies ---------------------------------------------------------
def test_generate_help_states_the_recorded_defaults_the_command_applies():
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]  # noqa: SLF001 - no public listing
    helps = {a.dest: a.help for a in generate._actions}  # noqa: SLF001
    recommended = SteeringVector.load(bundled_directions(None)["to_blue"]).metadata["recommended"]
    for key in ("branch", "mode"):  # what a shipped direction applies unless told otherwise
        assert "record as recommended" in helps[key]
        assert f"{recommended[key]} for the shipped ones" in helps[key], helps[key]
    assert "default cond)" not in helps["branch"] and "paper, default" not in helps["mode"]


def test_detect_inline_window_takes_the_window_form_of_the_other_commands():
    from steer.cli.inputs import check_window

    for given in (["0,0.5"], ["0", "0.5"], ["0,", "0.5"], [0.0, 0.5]):  # START,END as --window; START END; the default
        assert check_window(given, "--inline-window") == (0.0, 0.5)


# ----- 9. cheap checks before the model loads ----------------------------------------------------------------------
def test_detect_refuses_bad_inputs_before_loading(no_model, tmp_path, capsys):
    prompts, empty = tmp_path / "p.txt", tmp_path / "empty.txt"
    prompts.write_text("a bag\n")
    empty.write_text("\n")
    (tmp_path / "not-a-detector.safetensors").write_bytes(b"junk")
    (tmp_path / "noimages").mkdir()
    run = ["detect", "--prompts", str(prompts), "--out", str(tmp_path / "r.jsonl")]
    refusal([*run, "--inline-window", "0.8", "0.2"], capsys, "--inline-window needs 0 <= START < END <= 1")
    refusal([*run, "--inline-window", "nan", "1"], capsys, "--inline-window")
    refusal([*run, "--inline-window", "0.8,0.2"], capsys, "--inline-window needs 0 <= START < END <= 1")
    refusal([*run, "--inline-window", "0,0.5,1"], capsys, "--inline-window needs START,END: two fractions of the run")
    refusal([*run, "--inline-window", "early"], capsys, "--inline-window needs START,END: two fractions of the run")
    refusal([*run, "--calibrate", str(empty)], capsys, f"{empty} holds no prompts")
    refusal([*run, "--calibrate", str(tmp_path / "nope.txt")], capsys, "prompt file not found")
    refusal(["detect", "--prompts", str(empty), "--out", str(tmp_path / "r.jsonl")], capsys, "holds no prompts")
    refusal([*run, "--detector", str(tmp_path / "nope.safetensors")], capsys, "not found")
    refusal([*run, "--detector", str(tmp_path / "not-a-detector.safetensors")], capsys, "not a readable safetensors file")
    refusal(["detect", "--images", str(tmp_path / "noimages"), "--out", str(tmp_path / "r.jsonl")], capsys, "holds no images")
    refusal([*run, "--save-images", str(prompts)], capsys, f"--save-images {prompts} is a file, not a folder")


def test_sweep_rows_never_share_a_file_name():
    """``--sweep=1,1.01,3`` runs 1, 1.005, 1.01: at 3 significant digits two rows were both ``seed0_scale+1.png`` (the
    second overwrote the first); names now carry the digits that tell rows apart, or the row where scales are equal."""
    from steer.cli.generate import scale_tags

    assert scale_tags([0.0, 0.5, 1.0]) == ["_scale+0", "_scale+0.5", "_scale+1"]
    assert scale_tags([1.0, 1.005, 1.01]) == ["_scale+1", "_scale+1.005", "_scale+1.01"]
    assert len(set(scale_tags([1.0, 1.0000001]))) == 2
    assert scale_tags([1.0, 1.0, 2.0]) == ["_scale+1_row0", "_scale+1_row1", "_scale+2"]
    assert scale_tags([None]) == [""]


@pytest.mark.parametrize(("argv", "needle"), [
    (["generate", "--prompt", "x", "--sweeep=0,1,3", "--out", "o"], "steer generate: error: unrecognized arguments: --sweeep=0,1,3; did you mean --sweep? (see steer generate --help)"),
    (["batch", "j.jsonl", "--out", "o", "--batchsize", "2"], "steer batch: error: unrecognized arguments: --batchsize 2; did you mean --batch-size?"),
    (["lab", "train", "--out", "o", "--stpes", "3"], "steer lab train: error: unrecognized arguments: --stpes 3; did you mean --steps?"),
])
def test_a_mistyped_option_is_its_commands_error_with_the_closest_option(no_model, argv, needle, capsys):
    """It was ``steer: error: unrecognized arguments`` pointing at ``steer --help``, which lists no command's options."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and needle in err and err.count("\n") == 1, err


def test_a_prompt_that_is_not_utf8_is_one_line(capsys):
    """Bytes the shell passes that are not UTF-8 reach Python as surrogates; the tokenizer raised a TypeError traceback."""
    from steer.cli.main import main
    from steer.testing import assert_one_line_error

    bad = b"a \xff sneaker".decode("utf-8", "surrogateescape")
    rc = main(["generate", "--prompt", bad, "--steps", "1", "--out", "unused"])
    assert_one_line_error(rc, capsys.readouterr().err, "--prompt is not UTF-8 text", prefix="steer generate: error:")
    rc = main(["learn", "--positive", bad, "--negative", "a bag", "--out", "unused.safetensors"])
    assert_one_line_error(rc, capsys.readouterr().err, "--positive is not UTF-8 text", prefix="steer learn: error:")


def test_an_output_folder_that_is_not_utf8_is_printed_not_an_error(model_dir, tmp_path):
    """A folder named in another encoding: the images were written, then printing their paths raised
    UnicodeEncodeError on a UTF-8 terminal and the command exited 2 (scripts redid the run)."""
    import os
    import subprocess
    import sys

    out = os.fsencode(tmp_path) + b"/r\xe9sultats"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "steer.cli", "generate", "--model", model_dir, "--prompt", "a bag",
                           "--steps", "1", "--out", out], capture_output=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-500:]
    assert out + b"/seed0.png" in done.stdout.splitlines() and os.path.isfile(out + b"/seed0.png")  # its own bytes


@pytest.mark.parametrize("extra", [["--scale", "5"], ["--layers", "foo"], ["--window", "0,0.5"], ["--branch", "uncond"],
                                   ["--readers", "layout"], ["--negative", "remove"], ["--take-away", "to_red"]])
def test_steering_options_without_a_direction_are_one_line(extra, capsys, tmp_path):
    """They changed nothing but went into the recipe, so every such run counted as "made otherwise" and piled up
    identical copies (seed0-2.png ... seed0-8.png)."""
    from steer.cli.main import main
    from steer.testing import assert_one_line_error

    rc = main(["generate", "--prompt", "a sneaker", "--steps", "1", "--out", str(tmp_path / "o"), *extra])
    assert_one_line_error(rc, capsys.readouterr().err, f"{extra[0]} needs a --direction", prefix="steer generate: error:")
    assert not (tmp_path / "o").exists()


def test_version_names_steer_and_the_libraries_results_depend_on(capsys):
    import diffusers
    import torch

    import steer

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"steer {steer.__version__} (") and f"torch {torch.__version__}" in out and f"diffusers {diffusers.__version__}" in out


def test_a_removal_window_without_a_removal_is_one_line(no_model, tiny_pipe, tmp_path, capsys):
    """``--removal-window`` under the default ``--negative subtract`` changed no pixel but went into the recipe; a batch
    job's ``steering_removal_window`` without ``steering_negative: remove`` likewise."""
    from steer.jobs import run as batch
    from steer.testing import random_vector

    refusal(["generate", "--prompt", "a sneaker", "--direction", "to_blue", "--removal-window", "0,0.5", "--steps", "1",
             "--out", str(tmp_path / "o")], capsys, "--removal-window sets where --negative remove acts")
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.0"], seed=1).save(tmp_path / "v.safetensors")
    job = {"prompt": "a sneaker", "num_inference_steps": 1, "directions": [str(v)], "steering_removal_window": [0, 0.5]}
    plan = batch.plan_jobs([(1, job), (2, {**job, "steering_negative": "remove"})], tiny_pipe, tmp_path / "b", model="tiny")
    assert [f["line"] for f in plan.failures] == [1] and "nothing is removed" in plan.failures[0]["reason"]


def test_inspect_and_directions_name_a_model_folder_that_is_not_there(tmp_path, capsys, monkeypatch):
    """``steer inspect to_cyan --model assets/models/demo-4x`` run outside the repository (and ``steer directions
    --model /nonexistent``) showed the embedded demo model's directions as the model's."""
    monkeypatch.chdir(tmp_path)
    refusal(["inspect", "to_cyan", "--model", "assets/models/demo-4x"], capsys, "model 'assets/models/demo-4x' not found")
    refusal(["directions", "--model", str(tmp_path / "nonexistent")], capsys, "not found: give a pipeline directory")
    assert main(["directions"]) == 0 and "to_blue" in capsys.readouterr().out  # the default still lists the demo model's


def test_a_symlinked_out_file_and_a_folder_to_reproduce_are_one_line_before_any_work(no_model, tmp_path, capsys):
    """``steer learn --out link`` was refused only after the whole learning run; ``steer reproduce out/`` said
    "no such file"."""
    (tmp_path / "target.safetensors").write_bytes(b"x")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "target.safetensors")
    refusal(["learn", "--positive", "a blue bag", "--negative", "a bag", "--out", str(tmp_path / "link.safetensors")], capsys,
            f"refusing to write {tmp_path / 'link.safetensors'}: it is a symbolic link (--out)")
    refusal(["reproduce", str(tmp_path)], capsys, f"{tmp_path} is a folder: give its images (steer reproduce {tmp_path}/*.png)")


def test_an_unexpanded_home_in_out_is_written_where_it_was_checked(model_dir, tmp_path, capsys, monkeypatch):
    """``--out=~/blue`` reaches steer unexpanded: the checks (and the "replaced" line) looked at $HOME/blue.safetensors,
    the file was written to ./~/blue.safetensors."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "blue.safetensors").write_bytes(b"old")
    rc = main(["learn", "--model", model_dir, "--positive", "a blue bag", "--negative", "a bag", "--steps", "2",
               "--out=~/blue"])
    out = capsys.readouterr().out
    assert rc == 0 and f"replaced {tmp_path / 'home' / 'blue.safetensors'}" in out, out
    assert (tmp_path / "home" / "blue.safetensors").read_bytes() != b"old" and not (tmp_path / "~").exists()


def test_captured_advice_prints_one_line_each_and_other_notices_are_raised_again(capsys):
    """The commands capture the library's warnings to print its advice as ``warning:`` lines; ``steer generate``'s
    capture around its pipeline calls also swallowed diffusers' and torch's own notices (a FutureWarning), which are
    raised again after it (``others=True``)."""
    import warnings

    from steer.cli.inputs import print_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            warnings.warn("a slider is flipped", UserWarning, stacklevel=1)
        warnings.warn("this argument is deprecated", FutureWarning, stacklevel=1)
    with pytest.warns(FutureWarning, match="this argument is deprecated"):
        print_warnings(caught, others=True)
    assert capsys.readouterr().err == "warning: a slider is flipped\n"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        print_warnings(caught)  # the default: the advice only
