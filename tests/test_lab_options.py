"""``steer lab train``'s options: a resumed run keeps its own, adopted latents encode this run's data, and an option
given where it does nothing is a one-line error (tiny runs: 96 items, 2-step VAE, a few UNet steps)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file

from steer.lab import data as D

torch.set_num_threads(1)
TINY = ["--limit", "96", "--batch-size", "4", "--threads", "1", "--device", "cpu", "--checkpoint-minutes", "0"]


def _main(argv):
    from steer.lab.train import main

    return main(argv)


def _refused(argv, match):
    with pytest.raises(SystemExit) as e:
        _main(argv)
    message = str(e.value.code)
    assert "\n" not in message and re.search(match, message), message
    return message


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """A demo run (--seed 0, --limit 96) stopped at step 2 of 6."""
    out = tmp_path_factory.mktemp("lab") / "a"
    _main([*TINY, "--vae-steps", "2", "--steps", "6", "--until", "2", "--out", str(out)])
    return out


def test_vae_from_a_run_of_another_seed_encodes_this_runs_data(run_a, tmp_path):
    """``--vae-from RUN`` copied RUN's latents whatever its seed: run b (--seed 5) trained seed 0's images under seed
    5's captions (7 in 8 name another colour). They are copied only for the same data, else re-encoded."""
    rec_a = json.loads((run_a / "latents.json").read_text())
    assert (rec_a["data_seed"], rec_a["limit"], rec_a["n"]) == (0, 96, 96)
    a = load_file(str(run_a / "latents.safetensors"))
    _main([*TINY, "--steps", "1", "--seed", "5", "--vae-from", str(run_a), "--out", str(tmp_path / "b")])
    b = load_file(str(tmp_path / "b" / "latents.safetensors"))
    rec_b = json.loads((tmp_path / "b" / "latents.json").read_text())
    assert (rec_b["data_seed"], rec_b["limit"]) == (5, 96) and rec_b["scaling_factor"] == rec_a["scaling_factor"]
    assert not torch.equal(a["mean"], b["mean"])
    # b's latents are seed 5's images through a's VAE: the same as a's where the two seeds colour an item alike
    d0, d5 = (D.make_coloured_fashion_mnist("train", seed=s, limit=96) for s in (0, 5))
    same = torch.from_numpy(d0.colours == d5.colours)
    assert 0 < same.sum() < 96 and torch.allclose(a["mean"][same], b["mean"][same], atol=1e-5)
    assert not torch.allclose(a["mean"][~same], b["mean"][~same], atol=1e-3)
    # the same data: the latents are copied as they are
    _main([*TINY, "--steps", "1", "--vae-from", str(run_a), "--out", str(tmp_path / "c")])
    assert torch.equal(load_file(str(tmp_path / "c" / "latents.safetensors"))["mean"], a["mean"])
    # a latents.json from before the record: the run's own args cannot vouch for latents it may have adopted
    old = tmp_path / "old"
    shutil.copytree(run_a, old)
    (old / "latents.json").write_text(json.dumps({k: v for k, v in rec_a.items() if k not in ("data_seed", "limit")}))
    _main([*TINY, "--steps", "1", "--seed", "5", "--vae-from", str(old), "--out", str(tmp_path / "d")])
    assert "does not record" in (tmp_path / "d" / "train.log").read_text()
    assert torch.equal(load_file(str(tmp_path / "d" / "latents.safetensors"))["mean"], b["mean"])
    # a larger --limit than the source's (an IndexError at lat_mean[li] before): this run's items encoded
    _main([*TINY[2:], "--limit", "120", "--steps", "1", "--vae-from", str(run_a), "--out", str(tmp_path / "e")])
    assert load_file(str(tmp_path / "e" / "latents.safetensors"))["mean"].shape[0] == 120


def test_init_run_of_another_seed_and_decoder_stage_check_the_data(run_a, tmp_path):
    """The mem/hybrid variants adopt ``--init RUN``'s latents the same way; the decoder stage, which pairs a run's
    latents with the images of its own --seed, refuses other data in one line."""
    init = tmp_path / "init"
    shutil.copytree(run_a, init)
    _main([*TINY, "--variant", "mem", "--steps", "2", "--until", "1", "--seed", "3", "--init", str(init), "--out", str(tmp_path / "m")])
    assert json.loads((tmp_path / "m" / "latents.json").read_text())["data_seed"] == 3
    shutil.rmtree(init)  # resumed from its checkpoint, the run needs its --init no more (it reloaded it: an OSError)
    _main([*TINY, "--resume", "--out", str(tmp_path / "m")])
    assert json.loads((tmp_path / "m" / "checkpoint.json").read_text())["step"] == 2
    _refused(["--stage", "decoder", "--out", str(run_a), "--seed", "5", "--limit", "96", "--decoder-steps", "1",
              "--threads", "1"], r"latents.safetensors encode the data of --seed 0 --limit 96; this run uses --seed 5 --limit 96")
    _refused(["--stage", "decoder", "--out", str(run_a), "--decoder-steps", "1", "--threads", "1"],
             r"--seed 0 --limit 96; this run uses --seed 0 \(no --limit\)")


def test_resume_keeps_the_runs_own_options(run_a, tmp_path):
    """``--resume`` took the options from the new command line: without --steps the schedule became the variant's
    9000 steps; another --variant, --lr, --batch-size, --seed or --limit retrained the run silently (or ended in an
    IndexError). Now the run's own are taken and a differing one is refused; operational ones may change."""
    run = tmp_path / "a"
    shutil.copytree(run_a, run)
    _main(["--out", str(run), "--resume", "--until", "3", "--threads", "1", "--checkpoint-minutes", "0"])
    info = json.loads((run / "checkpoint.json").read_text())
    assert info["step"] == 3 and info["args"]["steps"] == 6 and info["args"]["limit"] == 96
    assert info["args"]["batch_size"] == 4 and info["args"]["vae_steps"] == 2
    before = (run / "checkpoint.safetensors").read_bytes()
    for given, was in ((["--variant", "mem"], "--variant demo"), (["--lr", "0.01"], "--lr 0.001"),
                       (["--batch-size", "8"], "--batch-size 4"), (["--seed", "5"], "--seed 0"),
                       (["--limit", "500"], "--limit 96"), (["--steps", "20"], "--steps 6"), (["--ema", "0.5"], "--ema 0.999"),
                       (["--vae-from", str(tmp_path)], "no --vae-from")):
        _refused(["--out", str(run), "--resume", *given],
                 rf"^{re.escape(' '.join(given))} does not match the run being resumed \({was} in .*leave it out")
    assert (run / "checkpoint.safetensors").read_bytes() == before
    # the values it was trained with may be repeated; operational options may change
    _main([*TINY, "--steps", "6", "--vae-steps", "2", "--out", str(run), "--resume", "--until", "4"])
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 4
    # latents of other data than the run's own (a hand-edited or older run folder): one line, not an IndexError
    ckj = json.loads((run / "checkpoint.json").read_text())
    ckj["args"]["limit"] = 120
    (run / "checkpoint.json").write_text(json.dumps(ckj))
    rec = json.loads((run / "latents.json").read_text())
    (run / "latents.json").write_text(json.dumps({k: v for k, v in rec.items() if k not in ("data_seed", "limit")}))
    _refused(["--out", str(run), "--resume"], r"latents.safetensors encode 96 items; this run's data \(--seed 0 --limit 120\) has 120")


@pytest.mark.parametrize("argv, match", [
    (["--init", "RUN"], r"^--init continues a hybrid or mem run .*use --vae-from"),
    (["--variant", "mem", "--copies", "3"], r"^--copies sets .*--variant mem does not use it"),
    (["--copies", "3"], r"--variant demo does not use it"),
    (["--decoder-steps", "5"], r"^--decoder-steps is an option of --stage decoder"),
    (["--decoder-lr", "0.1"], r"^--decoder-lr is an option of --stage decoder"),
    (["--decoder-latent-noise", "1"], r"^--decoder-latent-noise is an option"),
    (["--variant", "hybrid", "--mem-fraction", "0.3"], r"^--mem-fraction is an option of --stage decoder .*; --stage train does not"),
    (["--vae-from", "RUN", "--vae-steps", "5"], r"^--vae-steps trains a VAE from scratch; this run adopts the VAE of RUN"),
    (["--variant", "mem", "--init", "RUN", "--vae-lr", "0.1"], r"^--vae-lr trains .* of RUN \(--init\)"),
    (["--stage", "export", "--seed", "3"], r"^--seed is not used by --stage export"),
    (["--stage", "export", "--mem-fraction", "0.3"], r"^--mem-fraction is an option of --stage decoder .*; --stage export does not"),
    (["--stage", "decoder", "--steps", "3"], r"^--steps is not used by --stage decoder"),
    (["--stage", "decoder", "--copies", "3"], r"^--copies is not used by --stage decoder"),
])
def test_an_option_that_does_nothing_is_refused(tmp_path, monkeypatch, argv, match):
    """``--variant demo --init X`` trained from scratch without a word; --copies outside hybrid and the decoder
    stage's options outside it were accepted and unused. Each is refused in one line before any work."""
    import steer.lab.train as T

    def stage(*a, **k):
        raise AssertionError("the stage ran")

    for name in ("train", "finetune_decoder", "export"):
        monkeypatch.setattr(T, name, stage)
    _refused(["--out", str(tmp_path / "run"), *argv], match)
    assert not (tmp_path / "run").exists()
