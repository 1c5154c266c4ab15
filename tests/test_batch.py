"""`steer batch`: jobs files, validation, batching, determinism, resume, safe names, accelerate (tiny pipeline, CPU)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from steer.denoisers import layer_channels
from steer.jobs import run as batch
from steer.recipe import png_bytes_hash, read_recipe
from steer.vectors import SteeringVector

STEPS = 2
ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["up_blocks.0.resnets.0", "up_blocks.1.resnets.0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def direction(tiny_pipe, tmp_path_factory):
    ch = layer_channels(tiny_pipe.unet, LAYERS)
    g = torch.Generator().manual_seed(0)
    v = SteeringVector({n: 3.0 * torch.randn(c, generator=g) for n, c in ch.items()}, {"name": "red"})
    return v.save(tmp_path_factory.mktemp("dirs") / "red.safetensors")


def jobs_for(direction):
    """Two call setups (plain, steered), 6 images: prompts, seeds and sweep scales as rows."""
    return [
        {"prompt": "a red sneaker", "seeds": [0, 1], "num_inference_steps": STEPS},
        {"prompt": "a bag", "seed": 5, "num_inference_steps": STEPS, "directions": [{"path": str(direction), "sweep": [-2, 2, 3]}], "name": "sweep"},
        {"prompt": "a coat", "seed": 2, "negative_prompt": "blue", "num_inference_steps": STEPS, "directions": [{"path": str(direction), "scale": 1.5}]},
    ]


def files_and_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): png_bytes_hash(p) for p in sorted(out.rglob("*.png"))}


def write_jsonl(path: Path, jobs) -> Path:
    path.write_text("".join((j if isinstance(j, str) else json.dumps(j)) + "\n" for j in jobs))
    return path


# ----------------------------------------------------------------------------------------------------------------------
def test_example_files_parse_to_the_same_jobs_with_line_numbers():
    parsed = {s: batch.read_jobs(ROOT / "examples" / f"jobs.{s}") for s in ("jsonl", "csv", "yaml")}
    full = {s: [{**batch.DEFAULTS, **j} for _, j in js] for s, js in parsed.items()}
    assert full["jsonl"] == full["csv"] == full["yaml"] and len(full["jsonl"]) == 4
    assert [line for line, _ in parsed["jsonl"]] == [1, 2, 3, 4]
    assert [line for line, _ in parsed["csv"]] == [2, 3, 4, 5]  # line 1 is the header
    yaml_text = (ROOT / "examples" / "jobs.yaml").read_text().splitlines()
    assert all("prompt:" in yaml_text[line - 1] for line, _ in parsed["yaml"])
    assert full["csv"][1]["directions"] == [{"path": "to_blue", "sweep": [0, 1, 5]}]
    assert full["csv"][2]["take_away"] == "to_dress" and full["csv"][2]["take_away_fit"] is True


def test_malformed_lines_keep_their_line_numbers(tmp_path):
    jobs = batch.read_jobs(write_jsonl(tmp_path / "j.jsonl", ['{"prompt": "ok"}', "", "# comment", '{"prompt": "x",', "[1, 2]", '{"prompt": "y"}']))
    assert [(line, isinstance(j, batch.JobError)) for line, j in jobs] == [(1, False), (4, True), (5, True), (6, False)]
    csv_path = tmp_path / "j.csv"
    csv_path.write_text("prompt,seed,steering_normalize\nok,1,true\nbad,1.5,\nworse,2,maybe\n")
    parsed = batch.read_jobs(csv_path)
    assert parsed[0] == (2, {"prompt": "ok", "seed": 1, "steering_normalize": True})
    assert isinstance(parsed[1][1], batch.JobError) and "seed must be an integer" in parsed[1][1].reason
    assert parsed[2][0] == 4 and "true or false" in parsed[2][1].reason
    (tmp_path / "bad.yaml").write_text("- prompt: a\n- prompt: [unclosed\n")
    with pytest.raises(ValueError, match="line 2"):
        batch.read_jobs(tmp_path / "bad.yaml")


def test_every_bad_value_is_reported_up_front_with_its_line(tiny_pipe, direction, tmp_path):
    d = [{"path": str(direction)}]
    bad = {
        2: ({"prompt": "a", "num_inference_steps": 0}, "num_inference_steps"),
        3: ({"prompt": "a", "num_inference_steps": 1001}, "num_inference_steps"),
        4: ({"prompt": "a", "guidance_scale": -1}, "guidance_scale must be >= 0"),
        5: ({"prompt": "a", "directions": d, "steering_window": [0.9, 0.1]}, "steering_window"),
        6: ({"prompt": "a", "directions": d, "steering_branch": "neg"}, "steering_branch"),
        7: ({"prompt": "a", "seed": 1.5}, "seed must be an integer"),
        8: ({"prompt": "a", "directions": [{"path": str(direction), "sweep": [0, 1, 1]}]}, "sweep n"),
        9: ({"prompt": "a", "height": 30}, "multiple of 8"),
        10: ({"prompt": "a", "directions": d, "steering_layers": ["up_blocks.0.resnet.0"]}, "up_blocks.0.resnets.0"),
        11: ({"prompt": "a", "directions": [{"path": "missing.safetensors"}]}, "direction file not found"),
        12: ({"prompt": "a", "num_inference_step": 3}, "did you mean 'num_inference_steps'"),
        13: ({"seed": 1}, "prompt is required"),
        14: ({"prompt": "a", "seed": "3"}, "seed must be an integer"),
        15: ({"prompt": "a", "seed": -1}, "seed must be in"),
        16: ({"prompt": "a", "directions": d, "steering_removal_window": [0.5]}, "steering_removal_window must be a pair"),
        17: ({"prompt": "a", "directions": [{"path": "to_bleu"}]}, "direction file not found: 'to_bleu'; did you mean 'to_blue'?"),
    }
    raw = [(1, {"prompt": "fine"})] + [(line, job) for line, (job, _) in bad.items()]
    plan = batch.plan_jobs(raw, tiny_pipe, tmp_path, model="tiny")
    reasons = {f["line"]: f["reason"] for f in plan.failures}
    assert set(reasons) == set(bad)
    for line, (_, expected) in bad.items():
        assert expected in reasons[line], (line, reasons[line])
    assert [im.line for im in plan.images] == [1]


def test_directions_resolve_next_to_the_jobs_file_then_bundled(tiny_pipe, direction, tmp_path, monkeypatch):
    import steer.assets

    monkeypatch.setattr(steer.assets, "bundled_directions", lambda model=None: {"red_bundled": direction})
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "local.safetensors").write_bytes(direction.read_bytes())
    jobs = write_jsonl(tmp_path / "jobs" / "j.jsonl", [{"prompt": "a", "directions": [{"path": p}]} for p in ("local.safetensors", "red_bundled")])
    plan = batch.plan_jobs(batch.read_jobs(jobs), tiny_pipe, tmp_path / "out", model="tiny", base_dir=jobs.parent)
    assert plan.failures == []
    assert [im.recipe["directions"][0]["path"] for im in plan.images] == [str(tmp_path / "jobs" / "local.safetensors"), str(direction)]


def test_batched_rows_equal_one_at_a_time(tiny_pipe, direction, tmp_path):
    raw = [(i + 1, j) for i, j in enumerate(jobs_for(direction))]
    plan = batch.plan_jobs(raw, tiny_pipe, tmp_path, model="tiny", batch_size=8)
    assert [len(b) for b in plan.batches] == [2, 4]  # the plain pair, then 3 sweep rows + the coat in one call
    steered = plan.batches[1]
    together = batch.generate_batch(tiny_pipe, steered, output_type="np")
    for row, im in enumerate(steered):
        alone = batch.generate_batch(tiny_pipe, [im], output_type="np")
        np.testing.assert_allclose(together[row], alone[0], atol=1e-4, rtol=0)


def test_killed_run_resumes_to_the_same_bytes_and_writes_nothing_twice(tiny_pipe, direction, tmp_path, monkeypatch):
    jobs = write_jsonl(tmp_path / "jobs.jsonl", jobs_for(direction))
    clean = batch.run(jobs, tiny_pipe, tmp_path / "clean", batch_size=2, model="tiny", progress=False)
    assert (clean["written"], clean["skipped"], clean["failed"]) == (6, 0, 0)
    assert clean["images_per_s"] > 0

    def die_after_three(entry, seen=[]):  # noqa: B006 - a counter
        seen.append(entry)
        if len(seen) == 3:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        batch.run(jobs, tiny_pipe, out, batch_size=2, model="tiny", progress=False, on_image=die_after_three)
    manifest = out / batch.MANIFEST
    lines = manifest.read_text().splitlines()
    assert len(lines) == 3 and len(list(out.rglob("*.png"))) == 3 and not list(out.rglob(".*tmp*"))
    # a kill between a PNG's rename and its manifest line, and a torn manifest line from a kill mid-write
    manifest.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    adopted = json.loads(lines[2])["path"]
    killed_run = (out / batch.LOCK_FILE).read_text().strip()  # the interrupted run recorded its id with its lock
    (out / f".sweep_seed5_s+2.png.steer-tmp-{killed_run}").write_bytes(b"half a png")  # a kill inside save_png
    users = [out / ".photo.png.tmp123", out / ".manifest.jsonl.tmp9", out / f".x.png.steer-tmp-{'0' * 12}"]
    for u in users:  # the user's files that look like temp files (the last one: of a run that never held this lock)
        u.write_bytes(b"mine")
    before = {p: os.stat(out / p).st_mtime_ns for p in files_and_hashes(out)}

    saves = []
    real_save = batch.save_png
    monkeypatch.setattr(batch, "save_png", lambda *a, **k: saves.append(a[1]) or real_save(*a, **k))
    resumed = batch.run(jobs, tiny_pipe, out, batch_size=2, model="tiny", progress=False)
    assert (resumed["written"], resumed["skipped"], resumed["failed"]) == (3, 3, 0)
    assert len(saves) == 3 and all(Path(s).relative_to(out).as_posix() not in before for s in saves)
    assert all(os.stat(out / p).st_mtime_ns == t for p, t in before.items())  # incl. the adopted one
    assert adopted in files_and_hashes(out) and sorted(out.glob(".*tmp*")) == sorted(users)
    assert all(u.read_bytes() == b"mine" for u in users)
    assert files_and_hashes(out) == files_and_hashes(tmp_path / "clean")  # deterministic: the same bytes
    assert manifest.read_bytes() == (tmp_path / "clean" / batch.MANIFEST).read_bytes()

    saves.clear()
    again = batch.run(jobs, tiny_pipe, out, batch_size=2, model="tiny", progress=False)
    assert (again["written"], again["skipped"], saves) == (0, 6, [])
    entries = [json.loads(x) for x in manifest.read_text().splitlines()]
    assert [(e["line"], e["image"]) for e in entries] == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (3, 0)]
    for e in entries:
        assert png_bytes_hash(out / e["path"]) == e["sha256"]
        assert batch.image_key(read_recipe(out / e["path"])) == e["key"]
    sweep = [e["recipe"] for e in entries if e["line"] == 2]
    assert [r["scale"] for r in sweep] == [-2.0, 0.0, 2.0]
    assert sweep[0]["directions"][0]["hash"] == SteeringVector.load(direction).digest()
    assert sweep[0]["layers"] == LAYERS and sweep[0]["window"] == [0.45, 0.95]


def test_a_failing_call_fails_just_its_jobs_and_duplicates_run_once(tiny_pipe, monkeypatch, tmp_path):
    real = batch.generate_batch

    def flaky(pipe, images, output_type="pil"):
        if any(im.prompt == "boom" for im in images):
            raise RuntimeError("model mismatch in this call")
        return real(pipe, images, output_type)

    monkeypatch.setattr(batch, "generate_batch", flaky)
    jobs = [
        {"prompt": "fine", "num_inference_steps": STEPS},
        {"prompt": "boom", "num_inference_steps": STEPS, "height": 40},  # its own call setup, so its own batch
        {"prompt": "fine", "num_inference_steps": STEPS},  # the same recipe as line 1
    ]
    summary = batch.run(jobs, tiny_pipe, tmp_path, batch_size=4, model="tiny", progress=False)
    assert summary["failures"] == [{"line": 2, "reason": "model mismatch in this call"}]
    assert (summary["written"], summary["skipped"], summary["failed"]) == (1, 1, 1)
    assert [json.loads(x)["line"] for x in (tmp_path / batch.MANIFEST).read_text().splitlines()] == [1]


def test_names_stay_inside_out_and_never_overwrite_unrelated_files(tiny_pipe, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.png").write_bytes(b"not ours")
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "link").symlink_to(outside)
    raw = [
        (1, {"prompt": "a", "name": "../../escape"}),
        (2, {"prompt": "a", "seed": 1, "name": "/etc/passwd"}),
        (3, {"prompt": "a", "seed": 2, "name": "mine"}),
        (4, {"prompt": "a", "seed": 3, "name": "we!rd name?.png"}),
        (5, {"prompt": "a", "seed": 4, "name": "link/z"}),
        (6, {"prompt": "a", "seed": 5, "name": "mine"}),
    ]
    plan = batch.plan_jobs(raw, tiny_pipe, out, model="tiny")
    paths = {im.line: im.path for im in plan.images}
    assert paths == {1: "escape.png", 2: "etc/passwd.png", 3: "mine-1.png", 4: "we_rd_name.png", 6: "mine-2.png"}
    assert plan.failures == [{"line": 5, "reason": "output name 'link/z.png' leads outside the output directory (a symlink?)"}]
    assert batch.sanitize_name("..") == "" and batch.sanitize_name("a/../b/./c") == "a/b/c"


def test_cli_runs_good_jobs_reports_bad_lines_and_exits_nonzero(tiny_pipe, direction, tmp_path, capsys):
    from steer.cli.main import main

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"prompt": "a", "num_inference_steps": STEPS, "name": "good"}, '{"prompt": ', {"prompt": "b", "guidance_scale": -2}])
    code = main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(model), "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert "line 2: malformed JSON" in captured.err and "line 3: guidance_scale must be >= 0" in captured.err
    assert "1 written" in captured.out and "2 job(s) failed" in captured.out
    assert (tmp_path / "out" / "good.png").is_file()


def test_a_csv_direction_with_a_bad_number_names_it_and_is_reported_while_planning(tiny_pipe, tmp_path, capsys):
    from steer.cli.main import main

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"prompt,directions,num_inference_steps\na coat,to_red@abc,{STEPS}\na bag,to_red@0:x:3,{STEPS}\n"
                    f"a bag,to_red@0:1:many,{STEPS}\na bag,,{STEPS}\n")
    parsed = dict(batch.read_jobs(jobs))
    assert parsed[2].reason == "directions: the scale of direction 'to_red' must be a number, got 'abc'"
    assert parsed[3].reason == "directions: the sweep hi of direction 'to_red' must be a number, got 'x'"
    assert parsed[4].reason == "directions: the sweep count of direction 'to_red' must be an integer, got 'many'"
    code = main(["batch", str(jobs), "--out", str(tmp_path / "out"), "--model", str(model), "--device", "cpu", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1 and "1 written" in out and "3 job(s) failed" in out
    lines = err.splitlines()
    for line in (2, 3, 4):  # a line that fails while reading is printed while planning, as a bad value is, and in the summary
        reason = f"line {line}: {parsed[line].reason}"
        assert lines.index(reason) < lines.index(f"  failed {reason}"), err


def test_a_missing_jobs_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^jobs file not found: .*nope\.jsonl$"):
        batch.read_jobs(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="is a folder, not a jobs file"):
        batch.read_jobs(tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_accelerate_processes_equal_one(tiny_pipe, direction, tmp_path):
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        blue, red = (str(tiny_pipe.learn_direction([f"a {c} bag"], ["a bag"], num_inference_steps=2, calibration_samples=2, progress=False)
                         .save(tmp_path / f"{c}.safetensors")) for c in ("blue", "red"))
    fits = [{"prompt": f"a {c} bag", "seed": 3, "num_inference_steps": STEPS, "directions": [to], "take_away": away, "take_away_fit": True}
            for c, to, away in (("red", blue, red), ("blue", red, blue))]  # two pairs: one fitted by each process
    jobs = write_jsonl(tmp_path / "jobs.jsonl", jobs_for(direction) + fits)
    args = [str(jobs), "--model", str(model), "--device", "cpu", "--batch-size", "2", "--no-progress"]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", "steer.cli", "batch"]
    multi = subprocess.run([*launch, *args, "--out", str(tmp_path / "multi")], env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "8 written" in multi.stdout and multi.stdout.count("steer batch:") == 1  # the main process's summary
    reports = [line for line in (multi.stdout + multi.stderr).splitlines() if line.startswith("take-away fit ")]
    assert len(reports) == 2, reports  # each pair reported once, by the main process (its warnings are other lines)
    single = batch.run(jobs, tiny_pipe, tmp_path / "single", batch_size=2, model=str(model), progress=False)
    assert single["written"] == 8
    assert files_and_hashes(tmp_path / "multi") == files_and_hashes(tmp_path / "single")
    assert (tmp_path / "multi" / batch.MANIFEST).read_bytes() == (tmp_path / "single" / batch.MANIFEST).read_bytes()
    assert not list((tmp_path / "multi").glob("manifest.rank*.jsonl"))


def test_a_job_takes_unset_steering_options_from_its_directions_recommended_settings(tiny_pipe, tmp_path):
    ch = layer_channels(tiny_pipe.unet, LAYERS)
    g = torch.Generator().manual_seed(3)
    rec = {"window": [0.0, 1.0], "branch": "split", "mode": "token", "preserve_norm": True}
    path = SteeringVector({n: torch.randn(c, generator=g) / c**0.5 for n, c in ch.items()}, {"name": "calibrated", "recommended": rec}).save(tmp_path / "cal.safetensors")
    jobs = [
        {"prompt": "a bag", "seed": 5, "num_inference_steps": STEPS, "directions": [{"path": str(path), "scale": 0.3}], "name": "rec"},
        {"prompt": "a bag", "seed": 5, "num_inference_steps": STEPS, "directions": [{"path": str(path), "scale": 0.3}], "name": "cond", "steering_branch": "cond"},
    ]
    batch.run(jobs, tiny_pipe, tmp_path / "out", batch_size=1, model="tiny", progress=False)
    recipe = read_recipe(tmp_path / "out" / "rec.png")
    assert (recipe["window"], recipe["branch"], recipe["mode"]) == ([0.0, 1.0], "split", "token")
    assert read_recipe(tmp_path / "out" / "cond.png")["branch"] == "cond"  # an explicit option wins
    assert read_recipe(tmp_path / "out" / "rec.png")["negative"] == "subtract"
    direct = tiny_pipe("a bag", generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS, steering=SteeringVector.load(path), steering_scale=0.3, output_type="np").images[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "rec.png").convert("RGB")), np.round(direct * 255).astype(np.uint8))


def test_a_job_adds_one_direction_and_removes_another_like_the_python_call(tiny_pipe, tmp_path):
    """The contradicting-prompt recipe as a job: [toward blue, toward red] at [1, -1] with steering_negative="remove"."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        blue, red = (tiny_pipe.learn_direction([f"a {c} bag", f"a {c} coat"], ["a bag", "a coat"], num_inference_steps=2,
                                               calibration_samples=2, progress=False) for c in ("blue", "red"))
    paths = [blue.save(tmp_path / "blue.safetensors"), red.save(tmp_path / "red.safetensors")]
    job = {"prompt": "a red bag", "seed": 5, "num_inference_steps": STEPS, "name": "flip", "steering_negative": "remove",
           "steering_window": [0.0, 1.0], "directions": [{"path": str(paths[0]), "scale": 1.0}, {"path": str(paths[1]), "scale": -1.0}]}
    batch.run([job], tiny_pipe, tmp_path / "out", batch_size=1, model="tiny", progress=False)
    recipe = read_recipe(tmp_path / "out" / "flip.png")
    assert recipe["negative"] == "remove" and [d["scale"] for d in recipe["directions"]] == [1.0, -1.0]
    direct = tiny_pipe("a red bag", generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS, steering=[blue, red],
                       steering_scale=[1.0, -1.0], steering_negative="remove", steering_window=(0.0, 1.0), output_type="np").images[0]
    subtracted = tiny_pipe("a red bag", generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS, steering=[blue, red],
                           steering_scale=[1.0, -1.0], steering_window=(0.0, 1.0), output_type="np").images[0]
    assert not np.array_equal(direct, subtracted)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "flip.png").convert("RGB")), np.round(direct * 255).astype(np.uint8))
    # over the directions' own window the removal goes on to the end of the run, as they recommend; a job can say otherwise
    early = {**job, "steering_window": [0.0, 0.5], "name": "early"}
    stopped = {**early, "steering_removal_window": [0.0, 0.5], "name": "stopped"}
    batch.run([early, stopped], tiny_pipe, tmp_path / "out", batch_size=1, model="tiny", progress=False)
    assert read_recipe(tmp_path / "out" / "early.png")["removal_window"] == [0.0, 1.0]
    assert read_recipe(tmp_path / "out" / "stopped.png")["removal_window"] == [0.0, 0.5]
    for name, removal_window in (("early", None), ("stopped", (0.0, 0.5))):
        extra = {"steering_removal_window": removal_window} if removal_window else {}
        want = tiny_pipe("a red bag", generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS, steering=[blue, red],
                         steering_scale=[1.0, -1.0], steering_negative="remove", steering_window=(0.0, 0.5), output_type="np", **extra).images[0]
        got = np.asarray(Image.open(tmp_path / "out" / f"{name}.png").convert("RGB"))
        assert np.array_equal(got, np.round(want * 255).astype(np.uint8)), name


def test_a_job_takes_away_at_a_fitted_strength_and_window_and_resumes_without_rerendering(tiny_pipe, tmp_path):
    """``take_away`` as `steer generate --take-away`: each scale s steers [s, -min(s, 1)] under "replace";
    ``take_away_fit`` fits the scale and window first (`pipe.fit_take_away`), once per pair, unless the job sets them."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration and the fit may not converge
        blue, red = (tiny_pipe.learn_direction([f"a {c} bag", f"a {c} coat"], ["a bag", "a coat"], num_inference_steps=2,
                                               calibration_samples=2, progress=False) for c in ("blue", "red"))
        fit = tiny_pipe.fit_take_away(blue, red, guidance_scale=7.5)
    paths = [str(blue.save(tmp_path / "blue.safetensors")), str(red.save(tmp_path / "red.safetensors"))]
    base = {"prompt": "a red bag", "seed": 5, "num_inference_steps": STEPS, "directions": [paths[0]], "take_away": paths[1]}
    jobs = [
        {**base, "name": "sweep", "directions": [{"path": paths[0], "sweep": [0.5, 1.5, 2]}]},
        {**base, "name": "fitted", "take_away_fit": True},
        {**base, "name": "fitted_own_window", "take_away_fit": True, "steering_window": [0.0, 0.25]},
        {**base, "name": "fitted_own_scale", "take_away_fit": True, "directions": [{"path": paths[0], "scale": 0.7}]},
    ]
    said = []
    summary = batch.run(jobs, tiny_pipe, tmp_path / "out", batch_size=2, model="tiny", progress=False, report=said.append)
    assert summary["written"] == 5 and not summary["failures"]
    assert sum(line.startswith("take-away fit") for line in said) == 1  # one pair, one fit, three jobs

    def want(scale: float, window) -> np.ndarray:
        image = tiny_pipe("a red bag", generator=torch.Generator().manual_seed(5), num_inference_steps=STEPS, steering=[blue, red],
                          steering_scale=[scale, -min(scale, 1.0)], steering_negative="replace", steering_window=window,
                          output_type="np").images[0]
        return np.round(image * 255).astype(np.uint8)

    def got(name: str) -> tuple[np.ndarray, dict]:
        path = tmp_path / "out" / f"{name}.png"
        return np.asarray(Image.open(path).convert("RGB")), read_recipe(path)

    image, recipe = got("sweep_seed5_s+1.5")
    assert recipe["negative"] == "replace" and recipe["scale"] == 1.5 and recipe["window"] == blue.metadata["recommended"]["window"]
    assert recipe["take_away"] == {"name": red.name, "hash": red.digest(), "path": paths[1], "amount": 1.0}
    assert np.abs(image.astype(int) - want(1.5, tuple(recipe["window"]))).max() <= 1  # batched rows: float rounding only
    assert got("sweep_seed5_s+0.5")[1]["take_away"]["amount"] == 0.5
    strength = round(fit.strength, 3)
    for name, scale, window in (("fitted", strength, fit.window), ("fitted_own_window", strength, (0.0, 0.25)), ("fitted_own_scale", 0.7, fit.window)):
        image, recipe = got(name)
        assert recipe["scale"] == scale and tuple(recipe["window"]) == tuple(window), name
        assert recipe["take_away"]["fit"]["strength"] == round(fit.strength, 4), name
        assert np.abs(image.astype(int) - want(scale, tuple(window))).max() <= 1, name
    again = batch.run(jobs, tiny_pipe, tmp_path / "out", batch_size=2, model="tiny", progress=False)
    assert (again["written"], again["skipped"]) == (0, 5)  # the fit is deterministic: a rerun plans the same images


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"take_away": None, "take_away_fit": True}, "take_away_fit fits a take-away: give take_away too"),
        ({"take_away_fit": "yes"}, "take_away_fit must be true or false"),
        ({"take_away": 3}, "take_away must be a direction file or name"),
        ({"directions": ["DIR", "DIR"]}, "take_away goes with exactly one direction"),
        ({"steering_negative": "subtract"}, "leave steering_negative out"),
        ({"directions": [{"path": "DIR", "scale": -1}]}, "positive direction scales"),
        ({"take_away": "DIR"}, "the take-away is the direction itself"),
        ({"take_away": "no_such_direction"}, "direction file not found"),
        ({}, "needs each removed vector's reference level"),  # found while planning, not when its call runs
    ],
)
def test_a_bad_take_away_fails_its_job_with_one_line(tiny_pipe, direction, tmp_path, change, reason):
    other = SteeringVector.load(direction)
    away = SteeringVector({k: -v for k, v in other.directions.items()}, {"name": "other"}).save(tmp_path / "other.safetensors")

    def fill(value):  # "DIR" stands for the direction's path
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return str(direction) if value == "DIR" else value

    job = {"prompt": "a red bag", "num_inference_steps": STEPS, "directions": [str(direction)], "take_away": str(away), **fill(change)}
    job = {k: v for k, v in job.items() if v is not None}
    plan = batch.plan_jobs([(7, job)], tiny_pipe, tmp_path / "out", model="tiny")
    assert not plan.images and len(plan.failures) == 1
    assert plan.failures[0]["line"] == 7 and reason in plan.failures[0]["reason"] and "\n" not in plan.failures[0]["reason"]


def test_launched_processes_fit_each_take_away_pair_once_between_them(tiny_pipe, tmp_path, monkeypatch):
    """Under accelerate each take-away pair is fitted by one process and shared (`FitCache.share`), not fitted in
    every process: two processes (threads here, exchanging through a barrier as accelerate's gather does) fit the two
    pairs of three jobs, one each, and plan what one process plans alone; a fit that fails fails its job with the same
    one-line reason everywhere."""
    import threading
    import warnings

    from steer.jobs.plan import error_reason
    from steer.jobs.take_away import FitCache
    from steer.testing import run_in_threads

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        learned = {c: tiny_pipe.learn_direction([f"a {c} bag"], ["a bag"], num_inference_steps=2, calibration_samples=2, progress=False)
                   for c in ("blue", "red", "green")}
    paths = {c: str(v.save(tmp_path / f"{c}.safetensors")) for c, v in learned.items()}
    base = {"prompt": "a red bag", "seed": 5, "num_inference_steps": STEPS, "take_away": paths["red"], "take_away_fit": True}
    jobs = [(1, {**base, "directions": [paths["blue"]]}), (2, {**base, "directions": [paths["green"]]}),
            (3, {**base, "directions": [paths["blue"]], "seed": 6})]  # the same pair as line 1
    fitted: list[str] = []
    real = tiny_pipe.fit_take_away

    def counting(vector, away, **kw):
        fitted.append(vector.name)
        if vector.digest() == learned["green"].digest():
            raise ValueError("the fit diverged")
        return real(vector, away, **kw)

    monkeypatch.setattr(tiny_pipe, "fit_take_away", counting, raising=False)
    alone = batch.plan_jobs(jobs, tiny_pipe, tmp_path / "out", model="tiny")
    assert len(fitted) == 2 and alone.failures == [{"line": 2, "reason": "the fit diverged"}] and len(alone.images) == 2
    fitted.clear()
    parts: list = [None, None]
    barrier = threading.Barrier(2, timeout=300)

    def process(rank: int):
        def gather(mine: dict) -> list:
            parts[rank] = mine
            barrier.wait()
            return list(parts)

        cache = FitCache(tiny_pipe)
        own = cache.share(rank, 2, lambda c: batch.plan_jobs(jobs, tiny_pipe, tmp_path / "out", model="tiny", fits=c), gather, error_reason)
        return own, batch.plan_jobs(jobs, tiny_pipe, tmp_path / "out", model="tiny", fits=cache)

    results = run_in_threads(process, [0, 1])
    assert [results[r][0] for r in (0, 1)] == [1, 1] and sorted(fitted) == sorted([learned["blue"].name, learned["green"].name])
    for _, plan in results.values():
        assert [(im.line, im.recipe) for im in plan.images] == [(im.line, im.recipe) for im in alone.images]
        assert plan.failures == alone.failures


def test_a_take_away_fit_runs_only_for_a_job_that_is_otherwise_valid(tiny_pipe, direction, tmp_path, monkeypatch):
    """The fit is the one compute in planning: a job with another mistake fails before it, with that mistake."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        blue, red = (tiny_pipe.learn_direction([f"a {c} bag"], ["a bag"], num_inference_steps=2, calibration_samples=2, progress=False)
                     for c in ("blue", "red"))
    paths = [str(blue.save(tmp_path / "blue.safetensors")), str(red.save(tmp_path / "red.safetensors"))]
    other = SteeringVector.load(direction)
    no_level = SteeringVector({k: -v for k, v in other.directions.items()}, {"name": "other"}).save(tmp_path / "other.safetensors")
    monkeypatch.setattr(tiny_pipe, "fit_take_away", lambda *a, **k: pytest.fail("fitted a bad job"), raising=False)
    job = {"prompt": "a red bag", "num_inference_steps": STEPS, "directions": [paths[0]], "take_away": paths[1], "take_away_fit": True}
    bad_jobs = (
        ({"steering_window": [0.5, 0.2]}, "steering_window"), ({"steering_layers": ["nope"]}, "nope"), ({"name": 5}, "name must be a string"),
        ({"seeds": list(range(10_001))}, "seeds must be a non-empty list"),
        ({"directions": [str(direction)], "take_away": str(no_level)}, "reference level"),
    )
    for bad, reason in bad_jobs:
        plan = batch.plan_jobs([(3, {**job, **bad})], tiny_pipe, tmp_path / "out", model="tiny")
        assert not plan.images and reason in plan.failures[0]["reason"], bad


def test_a_take_away_that_is_not_a_direction_file_fails_its_job_in_one_line(tiny_pipe, direction, tmp_path):
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "big.safetensors").write_bytes(b"\xff" * 8 + b"{")  # a header length far past the file
    jobs = [(i + 1, {"prompt": "a red bag", "num_inference_steps": STEPS, "directions": [str(direction)], "take_away": name})
            for i, name in enumerate(["folder.safetensors", "junk.safetensors", "big.safetensors", "x\0y", "a" * 5000, "b" * 300])]
    plan = batch.plan_jobs(jobs, tiny_pipe, tmp_path / "out", model="tiny", base_dir=tmp_path)
    assert not plan.images and [f["line"] for f in plan.failures] == [1, 2, 3, 4, 5, 6]
    assert all("direction file not found" in f["reason"] for f in plan.failures[4:])  # a name too long for the system
    for failure in plan.failures:
        assert "\n" not in failure["reason"] and "Traceback" not in failure["reason"] and len(failure["reason"]) <= 400, failure


def test_a_take_away_fit_is_fitted_for_the_jobs_negative_prompt(tiny_pipe, tmp_path, monkeypatch):
    """``take_away_fit`` fits for how the job generates: with its negative prompt (a fit per negative prompt, the
    same fit for jobs sharing one), as `steer generate --fit --negative-prompt` and the app's fit button do."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        learned = {c: tiny_pipe.learn_direction([f"a {c} bag"], ["a bag"], num_inference_steps=2, calibration_samples=2, progress=False)
                   for c in ("blue", "red")}
    paths = {c: str(v.save(tmp_path / f"{c}.safetensors")) for c, v in learned.items()}
    base = {"prompt": "a red bag", "num_inference_steps": STEPS, "directions": [paths["blue"]], "take_away": paths["red"], "take_away_fit": True}
    jobs = [(1, {**base, "seed": 1}), (2, {**base, "seed": 2, "negative_prompt": "a coat"}), (3, {**base, "seed": 3, "negative_prompt": "a coat"})]
    asked: list = []
    real = tiny_pipe.fit_take_away

    def recording(vector, away, **kw):
        asked.append(kw.get("negative_prompt"))
        return real(vector, away, **kw)

    monkeypatch.setattr(tiny_pipe, "fit_take_away", recording, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = batch.plan_jobs(jobs, tiny_pipe, tmp_path / "out", model="tiny")
        want = real(learned["blue"], learned["red"], guidance_scale=7.5, height=8 * tiny_pipe.vae_scale_factor,
                    width=8 * tiny_pipe.vae_scale_factor, negative_prompt="a coat")
    assert asked == [None, "a coat"] and not plan.failures
    recipe = next(im.recipe for im in plan.images if im.line == 2)
    assert recipe["window"] == list(want.window) and recipe["scale"] == round(want.strength, 3)


def test_a_second_name_for_the_same_image_is_reported_and_a_failed_first_name_drops_no_twin(tiny_pipe, tmp_path):
    """Two jobs with one recipe make one image; the second job's name used to vanish without a word (no file, no
    manifest line, counted "skipped"): it is now a note naming the file that holds it. And when the first job fails
    for its name, its twin further down is still made under its own name."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    told: list[str] = []
    raw = [
        (1, {"prompt": "fine", "num_inference_steps": STEPS, "name": "first"}),
        (2, {"prompt": "fine", "num_inference_steps": STEPS, "name": "second"}),
        (3, {"prompt": "other", "num_inference_steps": STEPS, "name": "link/bad"}),
        (4, {"prompt": "other", "num_inference_steps": STEPS, "name": "kept"}),
    ]
    plan = batch.plan_jobs(raw, tiny_pipe, out, model="tiny", report=told.append)
    assert told == ["note: line 2: the same image as line 1 (the same recipe): made once, as first.png"]
    assert [(im.line, im.status, im.path) for im in plan.images] == [(1, "new", "first.png"), (2, "duplicate", None), (4, "new", "kept.png")]
    assert [f["line"] for f in plan.failures] == [3]


def test_steering_fields_without_directions_fail_their_job(tiny_pipe, tmp_path):
    """A job with steering_* or take_away fields and no directions was made as a plain image (an invalid layer name
    passed unseen) and, equal to a plain job, merged into it; `steer generate` refuses the same."""
    raw = [
        (1, {"prompt": "a sneaker", "num_inference_steps": STEPS, "name": "w"}),
        (2, {"prompt": "a sneaker", "num_inference_steps": STEPS, "steering_branch": "uncond", "steering_layers": ["nonexistent"], "name": "b"}),
        (3, {"prompt": "a sneaker", "num_inference_steps": STEPS, "take_away": "to_red"}),
        (4, {"prompt": "a sneaker", "num_inference_steps": STEPS, "steering_window": None}),  # null: as if absent
    ]
    plan = batch.plan_jobs(raw, tiny_pipe, tmp_path, model="tiny")
    assert plan.failures == [{"line": 2, "reason": "steering_branch needs directions (there is nothing to steer)"},
                             {"line": 3, "reason": "take_away needs directions (there is nothing to steer)"}]
    assert [(im.line, im.status) for im in plan.images] == [(1, "new"), (4, "duplicate")]
