"""`steer batch` against hostile input (issue 15): each case gets a one-line error naming the line, bounded time and
memory, nothing outside ``--out`` changes, and the valid jobs of the same file still produce their images.

The hostile files run through the real CLI in ONE subprocess under a memory cap (RLIMIT_AS) and a timeout (the
interpreter starts and the tiny model loads once); its results are then checked case by case. The lock is checked with
two real processes: the worker holds ``--out``'s lock while a second ``python -m steer.cli batch`` tries the same folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from steer.denoisers import layer_channels
from steer.jobs import run as batch
from steer.vectors import SteeringVector

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["up_blocks.0.resnets.0", "up_blocks.1.resnets.0"]
MEMORY_CAP = 5 * 2**29  # RLIMIT_AS of the worker (2.5 GiB): torch + the tiny model need ~1.3 GB of address space
CASE_SECONDS = 15.0  # per case, on a busy 2-core CPU (the bombs took 20-120 s before)
CASE_RSS_MB = 200  # growth of the worker's peak RSS during one case (the bombs grew to 1-3 GB before)
OK = {"prompt": "fine", "num_inference_steps": 2}

_WORKER = r"""
import contextlib, io, json, os, resource, sys, time
spec = json.load(open(sys.argv[1]))
import steer.cli.loading
from steer.jobs.files import OutDir, new_run_id
from steer.cli.main import main
_load, _loaded = steer.cli.loading.load_pipeline, {}
steer.cli.loading.load_pipeline = lambda model, device, **kw: _loaded.get(model) or _loaded.setdefault(model, _load(model, device, **kw))
steer.cli.loading.load_pipeline(spec["model"], "cpu", progress=False)  # once, before the clocks start
holder = OutDir(spec["lock_out"], new_run_id())
holder.lock()  # the first of the two processes on one --out
open(spec["locked"], "w").close()
results = {}
for case in spec["cases"]:
    out, err = io.StringIO(), io.StringIO()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(["batch", case["jobs"], "--out", case["out"], "--model", spec["model"], "--device", "cpu", "--no-progress"])
        except BaseException as e:  # a traceback the CLI let through
            rc = f"raised {type(e).__name__}: {str(e)[:300]}"
    results[case["name"]] = {"rc": rc, "stdout": out.getvalue()[-20000:], "stderr": err.getvalue()[-20000:],
                             "seconds": time.perf_counter() - t0,
                             "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
                             "vmpeak": open("/proc/self/status").read().split("VmPeak:")[1].split("\n")[0].strip()}
    with open(spec["results"], "w") as f:
        json.dump(results, f)
deadline = time.time() + 300
while not os.path.exists(spec["release"]) and time.time() < deadline:
    time.sleep(0.2)
holder.close()
"""


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _snapshot(root: Path, skip: tuple[str, ...]) -> dict[str, str]:
    """Every path under ``root`` except the ``skip`` folders: its kind and content hash (links by their target)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if (rel_dir / d).as_posix() not in skip]
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = (rel_dir / n).as_posix()
            if p.is_symlink():
                snap[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                snap[rel] = "dir"
    return snap


# ======================================================================================================================
# The hostile files
# ======================================================================================================================
def _jsonl(path: Path, lines: list) -> Path:
    with open(path, "wb") as f:
        for x in lines:
            f.write((x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()) + b"\n")
    return path


def _lol(root_list: bool) -> str:
    """A "billion laughs": 9 levels of 9 aliases (1.5 KB of text, 9^9 values expanded)."""
    levels = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"&{cur} [{','.join('*' + prev for _ in range(9))}]")
    if root_list:
        return "".join(f"- {lvl}\n" for lvl in levels)
    return "".join(f"{k}: {lvl}\n" for k, lvl in zip("abcdefghi", levels, strict=True))


def _cases(sandbox: Path, direction: Path) -> dict[str, dict]:
    """name -> {jobs file, expectations}; ``ok`` names the images the valid jobs must produce."""
    d = str(direction)
    c: dict[str, dict] = {}

    bad_lines = {
        2: ('{"prompt": "x", "seed": ' + "[" * 60000 + "]" * 60000 + "}", "nested deeper"),  # RecursionError before
        3: ({"prompt": "x", "directions": [[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]}, "nested deeper than 16"),
        4: ('{"prompt": "x", "seed": ' + "7" * 5000 + "}", "unreadable value"),  # a 5,000-digit integer
        5: (b'{"prompt": "caf\xe9 \xff"}', "not valid UTF-8"),
        6: ({**OK, "directions": [{"path": d, "scale": 1e300}]}, "directions[0].scale must be in [-1000, 1000]"),
        7: ('{"prompt": "lone \\ud800 surrogate", "num_inference_steps": 2}', "lone surrogate"),
        8: ({"prompt": "p" * 200_000}, "over the 128 KiB limit"),
        9: ({"prompt": "p" * 20_000}, "over the 10000 limit"),
        10: ('{"prompt": "a", "prompt": "b"}', "duplicate key 'prompt'"),
        11: ({**OK, "guidance_scale": 1e30}, "guidance_scale must be in [0, 100]"),
        12: ('{"prompt": "x", "guidance_scale": NaN}', "guidance_scale must be a finite number"),
        13: ({**OK, "directions": [{"path": d, "sweep": [-1e300, 1e300, 3]}]}, "sweep lo must be in"),
        14: ({**OK, "seeds": list(range(20_000))}, "seeds must be a non-empty list of at most 10000"),
        15: ({**OK, "directions": [{"path": d, "sweep": [-1, 1, 1000]}] * 3}, "expands to"),  # 1e9 images
        16: ({**OK, "name": "n" * 100_000}, "name must be a string of at most 1000"),
        17: ({**OK, "steering_window": list(range(10_000)), "directions": [{"path": d}]}, "steering_window must be a pair"),
    }
    lines: list = [{**OK, "name": "good-a", "directions": [{"path": d, "scale": 1.0}]}]
    lines += [bad_lines[n][0] for n in sorted(bad_lines)]
    lines.append({**OK, "seed": 1, "name": "good-b", "directions": [{"path": d, "scale": -1.0}]})
    c["jsonl_every_bad_line"] = {"jobs": _jsonl(sandbox / "mixed.jsonl", lines), "rc": 1, "ok": ["good-a.png", "good-b.png"],
                                 "errors": {n: e for n, (_, e) in bad_lines.items()}}

    y = [
        "- {prompt: fine, num_inference_steps: 2, name: good-y1}",  # 1
        _lol(root_list=True).rstrip("\n"),  # 2-10: each level a failing job (a list, or over the budget)
        "- prompt: *i",  # 11: the bomb itself
        "- prompt: big\n  seed: " + "9" * 5000,  # 12
        "- {prompt: dup, prompt: dup2}",  # 14
        "- prompt: deep\n  x: " + "[" * 5000 + "]" * 5000,  # 15: deeper than libyaml's own limit
        "- &r [*r]",  # 17: an alias to itself
        "- prompt: long\n  directions: [{path: " + d + ", scale: 1.0e+300}]",  # 18
    ]
    text = "\n".join(y) + "\n"
    block = "- prompt: blocky\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(40)) + "  " * 41 + "v: 1\n"  # 20
    data = text.encode() + block.encode() + b'- prompt: "bad \xff utf"\n' + b"- {prompt: fine too, num_inference_steps: 2, seed: 3, name: good-y2}\n"
    (sandbox / "bomb.yaml").write_bytes(data)
    c["yaml_bombs_per_job"] = {"jobs": sandbox / "bomb.yaml", "rc": 1, "ok": ["good-y1.png", "good-y2.png"],
                               "errors": {11: "alias bomb", 12: "unreadable integer", 14: "duplicate key 'prompt'",
                                          15: "nested deeper than 16", 17: "refers to itself", 18: "must be in [-1000, 1000]",
                                          20: "nested deeper than 16", 62: "not valid UTF-8"}}

    (sandbox / "lol.yaml").write_text(_lol(root_list=False) + "jobs: [{prompt: x}]\n")
    c["yaml_classic_billion_laughs"] = {"jobs": sandbox / "lol.yaml", "rc": 2, "file_error": "line 1: unknown top-level key 'a'"}
    (sandbox / "lol_defaults.yaml").write_text("defaults:\n" + "".join("  " + x + "\n" for x in _lol(root_list=False).splitlines())
                                               + "jobs:\n  - {prompt: x}\n")
    c["yaml_bomb_in_defaults"] = {"jobs": sandbox / "lol_defaults.yaml", "rc": 2, "file_error": "defaults: its YAML aliases expand"}
    (sandbox / "dupjobs.yaml").write_text("jobs:\n  - {prompt: a}\njobs:\n  - {prompt: b}\n")
    c["yaml_duplicate_jobs_key"] = {"jobs": sandbox / "dupjobs.yaml", "rc": 2, "file_error": "line 3: duplicate key 'jobs' (first at line 1)"}

    csv_rows = [
        b"prompt,seed,num_inference_steps,name",
        b"first,0,2,good-c1",  # 2
        b'"unclosed quote,1,2,merged',  # 3: used to swallow the next rows into one prompt
        b"second,1,2,good-c2",  # 4
        b"big," + b"9" * 5000 + b",2,x",  # 5
        b"cell," + b"c" * 140_000 + b",2,x",  # 6: a cell over csv's 128 KiB field limit
        b"bad \xff,1,2,x",  # 7
        b"third,2,2,good-c3",  # 8
    ]
    (sandbox / "mixed.csv").write_bytes(b"\n".join(csv_rows) + b"\n")
    c["csv_bad_rows"] = {"jobs": sandbox / "mixed.csv", "rc": 1, "ok": ["good-c1.png", "good-c2.png", "good-c3.png"],
                         "errors": {3: "unclosed quote", 5: "at most 40 digits", 6: "over the 128 KiB limit", 7: "not valid UTF-8"}}

    (sandbox / "huge.jsonl").write_bytes(b"{bad\n" * 4_000_000)  # 20 MB of invalid lines
    c["huge_file"] = {"jobs": sandbox / "huge.jsonl", "rc": 2, "file_error": "larger than 16 MiB"}
    (sandbox / "lines.jsonl").write_bytes(b"x\n" * 2_100_000)  # 2.1 M invalid lines in 4 MB
    c["too_many_lines"] = {"jobs": sandbox / "lines.jsonl", "rc": 2, "file_error": "more than 100000 jobs (line 100001)"}
    (sandbox / "prompt50.jsonl").write_bytes(b'{"prompt": "' + b"p" * 50_000_000 + b'"}\n')
    c["prompt_50mb"] = {"jobs": sandbox / "prompt50.jsonl", "rc": 2, "file_error": "larger than 16 MiB"}
    (sandbox / "big.yaml").write_bytes(b"- {prompt: x}\n" * 200_000)
    c["yaml_over_2mib"] = {"jobs": sandbox / "big.yaml", "rc": 2, "file_error": "larger than 2 MiB"}
    _jsonl(sandbox / "errors.jsonl", ["{broken"] * 150 + [{**OK, "name": "good-e"}])
    c["errors_capped"] = {"jobs": sandbox / "errors.jsonl", "rc": 1, "ok": ["good-e.png"], "errors": {1: "malformed JSON", 100: "malformed JSON"},
                          "more": "... and 50 more failed lines"}

    # the output folder
    good = _jsonl(sandbox / "good.jsonl", [{**OK, "name": "g1"}, {**OK, "seed": 1, "name": "sub/g2"}])
    c["manifest_symlink_outside"] = {"jobs": good, "rc": 2, "file_error": "manifest.jsonl is a symlink",
                                     "prepare": lambda out: (out.mkdir(), (out / "manifest.jsonl").symlink_to(sandbox / "outside" / "victim.jsonl"))}
    c["lock_file_symlink"] = {"jobs": good, "rc": 2, "file_error": ".steer-batch.lock is a symlink",
                              "prepare": lambda out: (out.mkdir(), (out / ".steer-batch.lock").symlink_to(sandbox / "outside" / "victim.jsonl"))}
    c["subfolder_symlink_outside"] = {"jobs": good, "rc": 1, "ok": ["g1.png"], "errors": {2: "leads outside the output directory"},
                                      "prepare": lambda out: (out.mkdir(), (out / "sub").symlink_to(sandbox / "outside"))}
    users = [".photo.png.tmp123", ".manifest.jsonl.tmp9", ".g1.png.tmp1"]
    c["users_temp_lookalikes_kept"] = {"jobs": good, "rc": 0, "ok": ["g1.png", "sub/g2.png"], "kept": users,
                                       "prepare": lambda out: (out.mkdir(), *[(out / u).write_bytes(b"mine") for u in users])}
    return c


@pytest.fixture(scope="module")
def hostile(tiny_pipe, tmp_path_factory):
    """Run every case in one capped worker process while a second process tries the worker's locked folder."""
    tmp = tmp_path_factory.mktemp("hostile")
    sandbox = tmp / "sandbox"
    (sandbox / "outside").mkdir(parents=True)
    (sandbox / "outside" / "victim.jsonl").write_text('{"mine": 1}\n{"mine": 2}\n')
    model = tmp / "model"
    tiny_pipe.save_pretrained(model)
    ch = layer_channels(tiny_pipe.unet, LAYERS)
    g = torch.Generator().manual_seed(0)
    direction = SteeringVector({n: torch.randn(c, generator=g) for n, c in ch.items()}, {"name": "d"}).save(sandbox / "d.safetensors")
    cases = _cases(sandbox, direction)
    for name, case in cases.items():
        case["out"] = sandbox / "outs" / name
        (sandbox / "outs").mkdir(exist_ok=True)
        if "prepare" in case:
            case["prepare"](case["out"])
    lock_out = sandbox / "outs" / "locked"
    lock_jobs = _jsonl(sandbox / "lock.jsonl", [{**OK, "name": "never"}])
    before = _snapshot(sandbox, skip=("outs",))
    spec = {"model": str(model), "lock_out": str(lock_out), "locked": str(tmp / "locked"), "release": str(tmp / "release"),
            "results": str(tmp / "results.json"),
            "cases": [{"name": n, "jobs": str(c["jobs"]), "out": str(c["out"])} for n, c in cases.items()]}
    (tmp / "spec.json").write_text(json.dumps(spec))
    t0 = time.perf_counter()
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp / "spec.json")], env=_env(tmp), preexec_fn=_cap_memory,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (tmp / "locked").exists():
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            assert time.perf_counter() - t0 < 120, "the worker did not start"
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-m", "steer.cli", "batch", str(lock_jobs), "--out", str(lock_out), "--model", str(model),
                                 "--device", "cpu", "--no-progress"], env=_env(tmp), preexec_fn=_cap_memory,
                                capture_output=True, text=True, timeout=180)
        lock_files = sorted(p.name for p in lock_out.iterdir())
        (tmp / "release").touch()
        _, err = worker.communicate(timeout=400)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err[-3000:]
    results = json.loads((tmp / "results.json").read_text())
    return {"cases": cases, "results": results, "sandbox": sandbox, "before": before, "second": second,
            "lock_files": lock_files, "lock_out": lock_out}


CASES = ["jsonl_every_bad_line", "yaml_bombs_per_job", "yaml_classic_billion_laughs", "yaml_bomb_in_defaults", "yaml_duplicate_jobs_key",
         "csv_bad_rows", "huge_file", "too_many_lines", "prompt_50mb", "yaml_over_2mib", "errors_capped", "manifest_symlink_outside",
         "lock_file_symlink", "subfolder_symlink_outside", "users_temp_lookalikes_kept"]


@pytest.mark.parametrize("name", CASES)
def test_hostile_file_fails_cleanly_and_valid_jobs_still_run(hostile, name):
    case, res = hostile["cases"][name], hostile["results"][name]
    out: Path = case["out"]
    assert res["rc"] == case["rc"], (res["rc"], res["stderr"][-2000:])
    assert "Traceback" not in res["stderr"] and "raised" not in str(res["rc"])
    assert res["seconds"] < CASE_SECONDS and res["rss_mb"] < CASE_RSS_MB, (res["seconds"], res["rss_mb"])
    err_lines = res["stderr"].strip().splitlines()
    assert all(len(x) < 600 for x in err_lines), max(err_lines, key=len)[:300]  # nothing echoed in full
    if "file_error" in case:  # the whole file refused: exactly one line, nothing written
        assert len(err_lines) == 1 and err_lines[0].startswith("steer batch: error:") and case["file_error"] in err_lines[0], err_lines
        assert not list(out.rglob("*.png"))
        return
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted(case["ok"])
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["path"] for e in manifest) == sorted(case["ok"])
    reported = {}
    for x in err_lines:
        if x.startswith("line "):
            n, _, reason = x[5:].partition(": ")
            reported[int(n)] = reason
    for n, expected in case.get("errors", {}).items():
        assert n in reported and expected in reported[n], (n, expected, reported.get(n))
    if "more" in case:
        assert case["more"] in err_lines and len(reported) == batch.MAX_REPORTED
    else:
        assert f"{len(reported)} job(s) failed" in res["stdout"]
    for u in case.get("kept", []):
        assert (out / u).read_bytes() == b"mine"


def test_nothing_outside_out_changed(hostile):
    assert _snapshot(hostile["sandbox"], skip=("outs",)) == hostile["before"]
    assert (hostile["sandbox"] / "outside" / "victim.jsonl").read_text() == '{"mine": 1}\n{"mine": 2}\n'


def test_a_second_process_on_a_locked_out_stops_at_once(hostile):
    second = hostile["second"]
    assert second.returncode == 2, second.stderr[-2000:]
    lines = second.stderr.strip().splitlines()
    assert lines[-1] == f"steer batch: error: another steer batch is running on {hostile['lock_out']} (it holds " \
                        f"{hostile['lock_out'] / batch.LOCK_FILE}); wait for it to finish or use another --out"
    assert hostile["lock_files"] == [batch.LOCK_FILE]  # it wrote nothing


# ======================================================================================================================
# In process: a failing or non-finite batched call fails only its bad job
# ======================================================================================================================
def test_a_failed_batched_call_is_retried_one_by_one(tiny_pipe, monkeypatch, tmp_path):
    real = batch.generate_batch
    calls = []

    def poisoned(pipe, images, output_type="pil"):
        calls.append(len(images))
        if any(im.prompt == "poison" for im in images):
            raise RuntimeError("tokenizer failed on a row")
        return real(pipe, images, output_type)

    monkeypatch.setattr(batch, "generate_batch", poisoned)
    jobs = [{**OK, "seed": s, "prompt": p} for s, p in enumerate(["a", "poison", "b", "c"])]
    summary = batch.run(jobs, tiny_pipe, tmp_path, batch_size=4, model="tiny", progress=False)
    assert summary["failures"] == [{"line": 2, "reason": "tokenizer failed on a row"}]
    assert (summary["written"], summary["failed"]) == (3, 1) and calls == [4, 1, 1, 1, 1]
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_a_non_finite_image_fails_its_job_and_is_not_written(tiny_pipe, monkeypatch, tmp_path):
    real = batch.generate_batch

    def nan_row(pipe, images, output_type="pil"):
        rows = np.array(real(pipe, images, output_type))
        for i, im in enumerate(images):
            if im.prompt == "overflow":
                rows[i, 0, 0, 0] = np.nan
        return rows

    monkeypatch.setattr(batch, "generate_batch", nan_row)
    summary = batch.run([{**OK, "prompt": "overflow"}, {**OK, "seed": 1}], tiny_pipe, tmp_path, model="tiny", progress=False)
    assert summary["failures"] == [{"line": 1, "reason": batch.NON_FINITE}] and summary["written"] == 1
    assert [p.name for p in tmp_path.glob("*.png")] == ["job0002_seed1.png"]


def test_reader_limits_are_what_the_readme_documents():
    readme = " ".join((ROOT / "README.md").read_text().split())
    for text in ("16 MiB", "2 MiB", "128 KiB", "200,000 nodes", "100,000 jobs", "nesting up to 16 levels", "20,000", "10,000 characters", "|scale| <= 1000",
                 "guidance_scale <= 100", "100 errors"):
        assert text in readme, text


def test_symlinks_planted_during_the_run_are_not_written_through(tiny_pipe, tmp_path):
    """Planning saw plain names; then a subfolder and an output name become symlinks to a folder outside --out."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    (outside / "target.png").write_bytes(b"theirs")

    def plant(entry, done=[]):  # noqa: B006 - runs once, after the first image
        if not done:
            (out / "sub").symlink_to(outside)
            (out / "late.png").symlink_to(outside / "target.png")
            done.append(1)

    jobs = [{**OK, "name": "first"}, {**OK, "seed": 1, "name": "sub/x"}, {**OK, "seed": 2, "name": "late"}]
    summary = batch.run(jobs, tiny_pipe, out, batch_size=1, model="tiny", progress=False, on_image=plant)
    reasons = {f["line"]: f["reason"] for f in summary["failures"]}
    assert summary["written"] == 1 and set(reasons) == {2, 3}
    assert reasons[2].startswith("cannot write sub/x.png: ") and "sub is a symlink or not a folder" in reasons[2]
    assert "late.png is a symlink" in reasons[3]
    assert sorted(p.name for p in outside.iterdir()) == ["target.png"] and (outside / "target.png").read_bytes() == b"theirs"
