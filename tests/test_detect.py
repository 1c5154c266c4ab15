"""Memorization detection: statistics, re-encode and inline scores, calibration files, Wen baseline, CLI."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from steer.detect.baselines import NoiseDifferenceRecorder, wen_scores
from steer.detect.detector import MemorizationDetector, SteeringPipelineOutput
from steer.detect.scores import cfg_distance, default_detection_layer, quantile_threshold, spikiness
from steer.engine import ActivationRecorder
from steer.errors import DetectorFileError
from steer.vectors import ModelMismatchError

STEPS = 3


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def images(tiny_pipe):
    out = tiny_pipe(["a red item", "a blue item", "a shoe"], num_inference_steps=STEPS, generator=_gens([0, 1, 2]), output_type="pt")
    return out.images


# ---------------------------------------------------------------------------------------------------------- statistics
def test_spikiness_on_known_vectors():
    c = 16
    one_hot = torch.zeros(c)
    one_hot[3] = 4.0
    flat = torch.full((c,), 1.0)
    both = torch.stack([one_hot, flat])
    std = spikiness(both, "std")
    assert std[0] > std[1]
    assert std[1] == 0
    assert math.isclose(float(std[0]), float(one_hot.std(correction=0)), rel_tol=1e-6)  # population std
    l4 = spikiness(both, "l4_l2")
    assert math.isclose(float(l4[0]), 1.0, rel_tol=1e-6)
    assert math.isclose(float(l4[1]), c**-0.25, rel_tol=1e-6)
    assert math.isclose(float(spikiness(torch.tensor([3.0, 4.0]), "l4_l2")), (81 + 256) ** 0.25 / 5, rel_tol=1e-6)
    assert math.isclose(float(spikiness(torch.tensor([1.0, 1.0, 1.0, 5.0]), "max_over_mean")), 2.5, rel_tol=1e-6)
    assert spikiness(torch.randn(2, 5, 8), "std").shape == (2, 5)
    with pytest.raises(ValueError, match="statistic"):
        spikiness(flat, "kurtosis")


def test_quantile_threshold():
    scores = torch.arange(101, dtype=torch.float32)
    assert quantile_threshold(scores, 0.01) == pytest.approx(99.0)
    assert quantile_threshold(scores, 0.0) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        quantile_threshold(scores, 1.5)


def test_default_layer_by_role(tiny_pipe):
    from steer.lab.models import build_unet

    assert default_detection_layer(tiny_pipe.unet) == "up_blocks.0.resnets.2.nonlinearity"  # 3 resnets, as SD1.x
    assert default_detection_layer(build_unet()) == "up_blocks.0.resnets.1.nonlinearity"  # lab layout: 2 resnets
    det = MemorizationDetector(tiny_pipe, layers="up_blocks.0.resnets.*")
    assert det.layers == ["up_blocks.0.resnets.0", "up_blocks.0.resnets.1", "up_blocks.0.resnets.2"]
    with pytest.raises(ValueError, match="pooling"):
        MemorizationDetector(tiny_pipe, pooling="median")


# ------------------------------------------------------------------------------------------------------------- scores
@torch.no_grad()
def test_reencode_score_matches_hand_computation(tiny_pipe, images):
    """Encode, noise to t=10 with the detector's fixed noise, one UNet pass with the empty prompt, SiLU after norm2
    of the last up_blocks.0 resnet, spatial max, population std."""
    from diffusers import DDPMScheduler

    from steer.extract import encode_images
    from steer.text_tokens import encode_text

    det = MemorizationDetector(tiny_pipe)
    scores = det.score(images)
    assert scores.shape == (3,)

    resnet = tiny_pipe.unet.up_blocks[0].resnets[2]
    captured = {}
    handle = resnet.norm2.register_forward_hook(lambda _m, _a, out: captured.__setitem__("h", out))
    try:
        z0 = encode_images(tiny_pipe, list(images))
        noise = torch.randn(tuple(z0.shape[1:]), generator=torch.Generator().manual_seed(0))
        t = torch.full((3,), 10, dtype=torch.long)
        zt = DDPMScheduler.from_config(tiny_pipe.scheduler.config).add_noise(z0, noise.expand_as(z0), t)
        tiny_pipe.unet(zt, t, encoder_hidden_states=encode_text(tiny_pipe, [""] * 3))
    finally:
        handle.remove()
    act = torch.nn.functional.silu(captured["h"])
    assert act.shape[1] == resnet.out_channels
    expected = act.flatten(2).amax(-1).std(dim=1, correction=0)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)
    # batching does not change a score
    det.batch_size = 1
    torch.testing.assert_close(det.score(images), scores, rtol=1e-5, atol=1e-6)
    # conditioning on the images' own prompts needs them
    own = MemorizationDetector(tiny_pipe, prompt="own")
    with pytest.raises(ValueError, match="prompts"):
        own.score(images)
    assert own.score(images, ["a red item", "a blue item", "a shoe"]).shape == (3,)


def test_inline_adds_no_unet_evaluations_and_keeps_images(tiny_pipe):
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    kwargs = dict(num_inference_steps=STEPS, output_type="pt", num_images_per_prompt=2)
    try:
        plain = tiny_pipe(["a red item", "a shoe"], generator=_gens(range(4)), **kwargs)
        n_plain = len(calls)
        out = tiny_pipe(["a red item", "a shoe"], generator=_gens(range(4)), detect_memorization=True, memorization_early_steps=2, **kwargs)
        n_inline = len(calls) - n_plain
    finally:
        handle.remove()
    assert n_plain == STEPS and n_inline == n_plain  # zero extra UNet evaluations
    assert isinstance(out, SteeringPipelineOutput)
    assert torch.equal(out.images, plain.images)  # bit-identical
    assert out.memorization_scores.shape == (4,) and out.memorization_early_scores.shape == (4,)
    assert out.memorization_step_scores.shape == (STEPS, 4)
    torch.testing.assert_close(out.memorization_early_scores, out.memorization_step_scores[:2].mean(0))
    torch.testing.assert_close(out.memorization_scores, out.memorization_step_scores[-1:].mean(0))  # window (0.8, 1)
    assert out.memorized is None  # uncalibrated

    tup = tiny_pipe(["a red item", "a shoe"], generator=_gens(range(4)), detect_memorization=True, return_dict=False, **kwargs)
    assert len(tup) == 5 and torch.equal(tup[0], plain.images)
    torch.testing.assert_close(tup[2], out.memorization_scores)


@pytest.mark.parametrize(("extra", "needle"), [
    ({"detect_memorization": True, "memorization_early_steps": -10}, "memorization_early_steps must be between 1 and 1000, got -10"),
    ({"detect_memorization": True, "memorization_early_steps": 0}, "memorization_early_steps must be between 1 and 1000, got 0"),
    ({"detect_memorization": True, "memorization_early_steps": 1.7}, "memorization_early_steps must be an integer"),
    ({"memorization_early_steps": 2}, "pass detect_memorization=True too"),
])
def test_early_steps_out_of_range_or_without_detection_are_one_line(tiny_pipe, extra, needle):
    """-10 gave a NaN early score (read as "not memorized"), 0 silently the default, 1.7 was taken; without
    detection the option did nothing."""
    with pytest.raises(ValueError, match=needle):
        tiny_pipe("a shoe", num_inference_steps=2, output_type="pt", **extra)


def test_cfg_distance_inline_score_is_free_and_matches_hand_computation(tiny_pipe, tmp_path):
    layer = "up_blocks.1.resnets.0"
    det = MemorizationDetector(tiny_pipe, inline_score="cfg_distance", inline_layers=layer, inline_window=(0.0, 1.0))
    assert det.layers == [default_detection_layer(tiny_pipe.unet)] and det.inline_layers == [layer]
    prompts, kwargs = ["a red item", "a shoe", "a blue bag"], dict(num_inference_steps=STEPS, output_type="pt")
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        plain = tiny_pipe(prompts, generator=_gens(range(3)), **kwargs)
        n_plain = len(calls)
        rec = ActivationRecorder(tiny_pipe.unet, [layer], "max", cfg=True, branch="both")
        with rec:
            out = tiny_pipe(prompts, generator=_gens(range(3)), detect_memorization=det, **kwargs)
        assert len(calls) - n_plain == n_plain  # zero extra UNet evaluations
    finally:
        handle.remove()
    assert torch.equal(out.images, plain.images)
    steps = rec.by_step(layer)
    pooled = torch.stack([steps[k] for k in sorted(steps)])  # (steps, 2N, C): unconditional rows first
    uncond, cond = pooled[:, :3], pooled[:, 3:]
    expected = (cond - uncond).pow(2).sum(-1).sqrt()
    torch.testing.assert_close(out.memorization_step_scores, expected)
    torch.testing.assert_close(cfg_distance(uncond, cond), expected)
    torch.testing.assert_close(out.memorization_scores, expected.mean(0))  # window (0, 1): every step
    assert (out.memorization_scores > 0).all()
    with pytest.raises(ValueError, match="guidance_scale > 1"):
        tiny_pipe(prompts[:1], generator=_gens([0]), guidance_scale=1.0, detect_memorization=det, **kwargs)
    assert not tiny_pipe.unet._forward_hooks  # removed on the error path too
    det.calibrate(prompts, fpr=0.0, num_inference_steps=STEPS)
    again = MemorizationDetector.load(det.save(tmp_path / "cfg.safetensors"), tiny_pipe)
    assert again.config() == det.config() and again.inline_score == "cfg_distance" and again.inline_layers == [layer]
    assert again.inline_threshold == pytest.approx(det.inline_threshold)
    report = tiny_pipe.detect_memorization(prompts[:2], detector=again, num_inference_steps=STEPS)
    assert report.verdict_from == "inline" and report.threshold == pytest.approx(det.inline_threshold)
    with pytest.raises(ValueError, match=r"set over the first 1 step\(s\): memorization_early_steps=3 scores another span"):
        tiny_pipe.detect_memorization(prompts[:1], detector=again, verdict_from="early", memorization_early_steps=3,
                                      num_inference_steps=STEPS)
    torch.testing.assert_close(report.memorized, report.inline_scores > det.inline_threshold)
    with pytest.raises(ValueError, match="inline_score"):
        MemorizationDetector(tiny_pipe, inline_score="entropy")
    # steering moves the inline score as memorization does (36 of 40 ordinary prompts flagged on demo-hybrid with
    # to_bag at 1.0): a steered row's verdict comes with a warning naming it, an unsteered call's without
    from steer.testing import random_vector

    v = random_vector(tiny_pipe, ["up_blocks.1.resnets.0"], scale=2.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_pipe(prompts[:2], generator=_gens([0, 1]), memorization_detector=again, steering=v, steering_scale=[0.0, 1.0],
                  **kwargs)
        notes = [str(w.message) for w in caught if "not calibrated" in str(w.message)]
        assert len(notes) == 1 and "steered rows (1)" in notes[0] and "re-encode score" in notes[0]
        caught.clear()
        tiny_pipe(prompts[:2], generator=_gens([0, 1]), memorization_detector=again, steering=v, steering_scale=0.0, **kwargs)
        assert not [w for w in caught if "not calibrated" in str(w.message)]
    # the calibration's steps, guidance and sampler are recorded: a verdict made otherwise says its rate does not hold
    assert again.sampling == det.sampling == {"num_inference_steps": STEPS, "guidance_scale": 7.5, "sampler": "ddim"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_pipe(prompts[:1], generator=_gens([0]), memorization_detector=again, **kwargs)
        assert not [w for w in caught if "was calibrated at" in str(w.message)]
        tiny_pipe(prompts[:1], generator=_gens([0]), memorization_detector=again, guidance_scale=3.0,
                  **{**kwargs, "num_inference_steps": STEPS + 1})
        notes = [str(w.message) for w in caught if "was calibrated at" in str(w.message)]
    assert notes == [f"the memorization detector was calibrated at {STEPS} steps, guidance 7.5; this call ran {STEPS + 1} "
                     "steps, guidance 3: its false-positive rate is not the calibrated 0% (recalibrate at these settings, "
                     "or sample at the calibrated ones)"]


# --------------------------------------------------------------------------------------------- calibration and files
def test_calibrate_predict_save_load_round_trip(tiny_pipe, images, tmp_path):
    det = MemorizationDetector(tiny_pipe, statistic="l4_l2").calibrate(images, fpr=0.0)
    scores = det.score(images)
    assert det.threshold == pytest.approx(float(scores.max()))
    assert not det.predict(images).any()  # at FPR 0 no calibration sample is flagged
    det.threshold = float(scores.min()) - 1e-6
    assert det.predict(images).all()
    path = det.save(tmp_path / "det")
    assert path.suffix == ".safetensors"
    again = MemorizationDetector.load(path, tiny_pipe)
    assert again.config() == det.config()
    assert again.threshold == pytest.approx(det.threshold)
    torch.testing.assert_close(again.calibration["reencode"], det.calibration["reencode"])
    assert torch.equal(again.predict(images), det.predict(images))
    with pytest.raises(RuntimeError, match="not calibrated"):
        MemorizationDetector(tiny_pipe).predict(images)


def test_damaged_or_foreign_detector_files(tiny_pipe, images, tmp_path):
    path = MemorizationDetector(tiny_pipe).calibrate(images).save(tmp_path / "det.safetensors")
    raw = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: len(raw) - 7])
    with pytest.raises(DetectorFileError, match="truncated or corrupt"):
        MemorizationDetector.load(cut, tiny_pipe)
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(raw[:-4] + bytes(4))  # flip the last calibration score
    with pytest.raises(DetectorFileError, match="digest"):
        MemorizationDetector.load(edited, tiny_pipe)
    from steer.vectors import SteeringVector

    vec = SteeringVector({"up_blocks.0.resnets.0": torch.ones(64)}, {}).save(tmp_path / "vec.safetensors")
    with pytest.raises(DetectorFileError, match="not a memorization detector"):
        MemorizationDetector.load(vec, tiny_pipe)
    with pytest.raises(DetectorFileError, match="not found"):
        MemorizationDetector.load(tmp_path / "missing.safetensors", tiny_pipe)
    from steer.testing import tiny_pipeline

    other = tiny_pipeline(seed=1)
    with pytest.raises(ModelMismatchError, match="other weights"):
        MemorizationDetector.load(path, other)
    assert MemorizationDetector.load(path, other, strict=False).threshold is not None


# ---------------------------------------------------------------------------------------------------------- baseline
@torch.no_grad()
def test_wen_baseline_equals_hand_computation(tiny_pipe):
    prompts = ["a red item", "a shoe"]
    k1 = wen_scores(tiny_pipe, prompts, k=1, num_inference_steps=STEPS, guidance_scale=5.0, generator=_gens([3, 4]))
    assert k1.shape == (2,)
    # by hand: the pipeline's first latents and timestep, both branches
    sched = type(tiny_pipe.scheduler).from_config(tiny_pipe.scheduler.config)
    sched.set_timesteps(STEPS)
    latents = torch.stack([torch.randn((4, 8, 8), generator=g) for g in _gens([3, 4])]) * sched.init_noise_sigma
    cond, uncond = tiny_pipe.encode_prompt(prompts, torch.device("cpu"), 1, True)
    t = sched.timesteps[0]
    eps_c = tiny_pipe.unet(sched.scale_model_input(latents, t), t, encoder_hidden_states=cond).sample
    eps_u = tiny_pipe.unet(sched.scale_model_input(latents, t), t, encoder_hidden_states=uncond).sample
    torch.testing.assert_close(k1, (eps_c - eps_u).flatten(1).norm(dim=1), rtol=1e-4, atol=1e-5)
    # k steps = 2k evaluations; the inline recorder reads the same numbers from a normal call
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        k2 = wen_scores(tiny_pipe, prompts, k=2, num_inference_steps=STEPS, guidance_scale=5.0, generator=_gens([3, 4]))
    finally:
        handle.remove()
    assert len(calls) == 2  # two batched [uncond, cond] calls = 4 evaluations
    with NoiseDifferenceRecorder(tiny_pipe.unet) as rec:
        tiny_pipe(prompts, num_inference_steps=STEPS, guidance_scale=5.0, generator=_gens([3, 4]), output_type="latent")
    assert rec.step_scores().shape == (STEPS, 2)
    torch.testing.assert_close(rec.scores(2), k2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="guidance"):
        wen_scores(tiny_pipe, prompts, k=1, guidance_scale=1.0)


# ---------------------------------------------------------------------------------------------------------------- CLI
def test_cli_writes_report_summary_and_histogram(tiny_pipe, tmp_path, capsys):
    from steer.cli.main import main

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red item\na shoe\n")
    ordinary = tmp_path / "ordinary.txt"
    ordinary.write_text("a blue item\na bag\na coat\n")
    out = tmp_path / "report.jsonl"
    rc = main([
        "detect", "--model", str(model), "--device", "cpu", "--prompts", str(prompts), "--calibrate", str(ordinary),
        "--save-detector", str(tmp_path / "det.safetensors"), "--steps", str(STEPS), "--num-images-per-prompt", "2",
        "--out", str(out), "--save-images", str(tmp_path / "imgs"),
    ])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["prompt"] for r in rows} == {"a red item", "a shoe"}
    assert all(isinstance(r["memorized"], bool) and r["score"] is not None for r in rows)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["count"] == 4 and summary["threshold"] is not None
    assert out.with_suffix(".png").stat().st_size > 0
    assert "flagged as memorized" in capsys.readouterr().out
    # images mode with the saved detector
    out2 = tmp_path / "images.jsonl"
    rc = main(["detect", "--model", str(model), "--device", "cpu", "--images", str(tmp_path / "imgs"),
               "--detector", str(tmp_path / "det.safetensors"), "--out", str(out2)])
    assert rc == 0
    rows2 = [json.loads(line) for line in out2.read_text().splitlines()]
    assert len(rows2) == 4 and all(isinstance(r["memorized"], bool) for r in rows2)
    # a damaged detector file is a clean CLI error
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    rc = main(["detect", "--model", str(model), "--device", "cpu", "--images", str(tmp_path / "imgs"),
               "--detector", str(tmp_path / "bad.safetensors"), "--out", str(out2)])
    assert rc == 2 and "not a readable safetensors" in capsys.readouterr().err


def test_calibrating_on_too_few_samples_for_the_rate_says_so(tiny_pipe, images):
    """The (1 - fpr) quantile of fewer than 1 / fpr ordinary samples is about their maximum: the user is told how many
    it needs and how often ordinary images will then score above it; enough samples for the rate: no warning."""
    import warnings

    n = len(images)
    with pytest.warns(UserWarning, match=rf"{n} ordinary sample\(s\) cannot resolve a false-positive rate of 0.01 \(that needs at least 100\).*1 in {n + 1}"):
        MemorizationDetector(tiny_pipe).calibrate(images, fpr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MemorizationDetector(tiny_pipe).calibrate(images, fpr=1.0 / n)


def test_cli_saved_images_never_replace_another_runs_and_image_only_options_are_refused(tiny_pipe, tmp_path, capsys):
    """``--save-images`` used to write 00000.png, ... over an earlier run's images in the same folder; a second run
    with another seed now keeps them and names its own ``00000-2.png``, ... (the report points at those). Options that
    only apply to generated images are refused with ``--images`` before the model loads (they were dropped silently)."""
    from steer.cli.main import main

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red item\n")
    imgs = tmp_path / "imgs"
    run = ["detect", "--model", str(model), "--device", "cpu", "--prompts", str(prompts), "--steps", str(STEPS), "--save-images", str(imgs)]
    assert main([*run, "--out", str(tmp_path / "a.jsonl")]) == 0
    first = (imgs / "00000.png").read_bytes()
    assert main([*run, "--seed", "7", "--out", str(tmp_path / "b.jsonl")]) == 0
    assert "holds another run's images: this run's are named like 00000-2.png" in capsys.readouterr().out
    assert (imgs / "00000.png").read_bytes() == first and (imgs / "00000-2.png").read_bytes() != first
    assert json.loads((tmp_path / "b.jsonl").read_text())["image"] == str(imgs / "00000-2.png")
    # a saved image's recipe makes it again (it held prompt, seed, steps and scores only: reproduce exited 2)
    assert main(["reproduce", str(imgs / "00000-2.png")]) == 0 and "identical" in capsys.readouterr().out
    for extra, message in [(["--verdict-from", "inline"], "--verdict-from inline scores images while they are generated"),
                           (["--save-images", str(tmp_path / "x")], "--save-images writes the images --prompts generates")]:
        rc = main(["detect", "--model", str(tmp_path / "absent"), "--images", str(imgs), "--out", str(tmp_path / "c.jsonl"), *extra])
        assert rc == 2 and message in capsys.readouterr().err


def test_cli_images_keep_every_score_read_16_bit_right_and_refuse_what_a_detector_file_sets(model_dir, tmp_path, capsys):
    """``steer detect --images``: one unreadable file at the end of a folder lost every other score (exit 2, no
    report); the loader read a mid-grey 16-bit PNG as white; ``--statistic`` and the other options that build a new
    detector were ignored without a word next to ``--detector``; ``--out report.png`` was replaced by its histogram."""
    import numpy as np
    from PIL import Image

    from steer.cli.main import main

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("L", (32, 32), 156).save(imgs / "a_grey8.png")
    Image.fromarray(np.full((32, 32), 156 * 257, dtype=np.uint16)).save(imgs / "b_grey16.png")
    (imgs / "zzz.png").write_bytes(b"not an image")
    rc = main(["detect", "--model", model_dir, "--device", "cpu", "--images", str(imgs), "--batch-size", "2",
               "--out", str(tmp_path / "r.jsonl")])
    captured = capsys.readouterr()
    assert rc == 1 and "1 image(s) could not be scored" in captured.err and "zzz.png' is not a readable image" in captured.err
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["a_grey8.png", "b_grey16.png", "zzz.png"]
    assert rows[0]["score"] == rows[1]["score"] is not None and rows[2]["score"] is None and "error" in rows[2]
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["count"] == 3 and summary["unreadable"] == 1
    detector = tmp_path / "det.safetensors"
    assert main(["detect", "--model", model_dir, "--device", "cpu", "--calibrate", str(_prompt_file(tmp_path)), "--steps", "2",
                 "--save-detector", str(detector)]) == 0
    capsys.readouterr()
    for extra, flag in ((["--statistic", "l4_l2"], "--statistic"), (["--inline-window", "0,0.3"], "--inline-window"),
                        (["--layers", "up_blocks.0"], "--layers")):
        rc = main(["detect", "--model", str(tmp_path / "absent"), "--detector", str(detector), "--images", str(imgs),
                   "--out", str(tmp_path / "c.jsonl"), *extra])
        assert rc == 2 and f"{flag} sets up a new detector; --detector {detector} brings its own" in capsys.readouterr().err
    rc = main(["detect", "--model", str(tmp_path / "absent"), "--images", str(imgs), "--out", str(tmp_path / "report.png")])
    assert rc == 2 and "the report is JSON lines and its histogram is written as OUT.png" in capsys.readouterr().err


def _prompt_file(tmp_path):
    path = tmp_path / "ordinary.txt"
    path.write_text("a bag\na shoe\na red item\n")
    return path


def test_cli_detects_at_the_settings_the_detector_was_calibrated_at(tmp_path, capsys):
    """The bundled detectors were calibrated at DDIM 25, guidance 5, while ``steer detect`` generated at guidance 7.5
    by default (off the calibration: the verdicts' false-positive rate did not hold). Now the detector's recorded
    settings are the defaults, and a run told otherwise says so."""
    from steer.cli.main import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red bag\n")
    run = ["detect", "--model", "assets/models/demo-hybrid", "--device", "cpu", "--detector",
           "assets/detectors/demo-hybrid.safetensors", "--prompts", str(prompts)]
    assert main([*run, "--out", str(tmp_path / "a.jsonl")]) == 0
    assert "was calibrated at" not in capsys.readouterr().err
    assert main([*run, "--steps", "3", "--out", str(tmp_path / "b.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "the memorization detector was calibrated at 25 steps; this call ran 3 steps" in err and err.count("\n") == 1
    rc = main([*run, "--guidance", "1", "--out", str(tmp_path / "c.jsonl")])  # failed after the first batch was sampled
    assert rc == 2 and "--guidance 1 samples without guidance; use --guidance above 1" in capsys.readouterr().err



def test_recorded_sampling_is_the_steps_asked_for_on_second_order_samplers(tiny_pipe):
    """Heun calls the UNet 2N - 1 times for N steps: the detector recorded that count as its steps, so ``steer detect``
    sampled at it and warned about its own default (and 501 steps recorded 1001, a file that did not load)."""
    heun = tiny_pipe.with_sampler("heun")
    det = MemorizationDetector(heun, inline_score="cfg_distance", inline_window=(0.0, 1.0))
    det.calibrate(["a red item", "a shoe"], fpr=0.0, num_inference_steps=3, guidance_scale=5.0)
    assert det.sampling == {"num_inference_steps": 3, "guidance_scale": 5.0, "sampler": "heun"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        heun(["a bag"], generator=_gens([0]), num_inference_steps=3, guidance_scale=5.0, memorization_detector=det, output_type="pt")
    assert not [w for w in caught if "was calibrated at" in str(w.message)]


def test_cli_report_grows_as_it_scores_and_an_interrupted_run_keeps_its_rows(model_dir, tmp_path, capsys, monkeypatch, one_thread):
    """``steer detect --prompts`` held every image and row until the end: a run stopped after an hour lost all of it.
    Rows now reach disk a part (whole generation and re-encode batches) at a time; an interrupted run leaves them in a
    partial file it names and no report; every score is the one a single pass over all prompts gives."""
    import steer.cli.detect as detect_cli
    from steer.cli.loading import load_pipeline
    from steer.cli.main import main
    from steer.detect.detector import detect_memorization

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red item\n")
    run = ["detect", "--model", model_dir, "--device", "cpu", "--prompts", str(prompts), "--steps", str(STEPS),
           "--num-images-per-prompt", "33", "--batch-size", "32"]
    calls = []

    def stopped_on_the_second_part(*args, **kwargs):
        calls.append(len(args[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return detect_memorization(*args, **kwargs)

    monkeypatch.setattr(detect_cli, "detect_memorization", stopped_on_the_second_part)
    out = tmp_path / "report.jsonl"
    assert main([*run, "--out", str(out)]) == 130
    (partial,) = tmp_path.glob("report.jsonl.partial-*")
    assert f"the rows scored before it stopped are in {partial}" in capsys.readouterr().err
    assert not out.exists() and calls == [32, 1]
    kept = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [r["index"] for r in kept] == list(range(32))
    monkeypatch.setattr(detect_cli, "detect_memorization", detect_memorization)
    assert main([*run, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[:32] == kept and [r["seed"] for r in rows] == list(range(33))
    assert list(tmp_path.glob("report.jsonl.partial-*")) == [partial]  # the finished run left none of its own
    whole = detect_memorization(load_pipeline(model_dir, device="cpu"), "a red item", num_images_per_prompt=33,
                                batch_size=32, num_inference_steps=STEPS, guidance_scale=7.5)
    assert [r["score"] for r in rows] == [float(s) for s in whole.scores]
    assert [r["inline_score"] for r in rows] == [float(s) for s in whole.inline_scores]


def test_cli_saved_images_keep_one_suffix_for_the_whole_run(model_dir, tmp_path, capsys, one_thread):
    """Saved a part at a time, a run's images took the plain names in the parts where they were free and ``-2`` where
    another run's file held one (00000.png ... 00031.png, then 00032-2.png): the suffix is chosen for the whole run."""
    from steer.cli.main import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red item\n")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "00032.png").write_bytes(b"another run's image")
    assert main(["detect", "--model", model_dir, "--device", "cpu", "--prompts", str(prompts), "--steps", str(STEPS),
                 "--num-images-per-prompt", "33", "--batch-size", "32", "--save-images", str(imgs),
                 "--out", str(tmp_path / "r.jsonl")]) == 0
    assert "this run's are named like 00000-2.png" in capsys.readouterr().out
    assert {p.name for p in imgs.glob("*.png")} == {"00032.png", *(f"{i:05d}-2.png" for i in range(33))}
    assert (imgs / "00032.png").read_bytes() == b"another run's image"
