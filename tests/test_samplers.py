"""Samplers by name (`steer.samplers`): the table, the one-line refusals, `with_sampler` copies that sample exactly as
a pipeline given that scheduler the diffusers way, steering windows on every sampler, concurrent calls with different
samplers, and the sampler option of the command line, batch jobs and the app (tiny random SD pipeline, CPU)."""

import json
import re
import threading

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from steer.cli.main import main
from steer.engine import window_bounds
from steer.jobs import run as batch
from steer.recipe import read_recipe
from steer.samplers import (
    SAMPLERS,
    build_sampler,
    check_sampler,
    known_sampler,
    sampler_name,
    sampler_names,
    with_sampler,
)
from steer.testing import capture_site, no_hooks_left, random_vector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = 4
LAYER = "up_blocks.0.resnets.1"


def call(pipe, prompt="a red sneaker", seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images


# ----- the table ------------------------------------------------------------------------------------------------------
def test_every_name_builds_the_scheduler_it_names_and_is_named_back():
    sd = DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    names = sampler_names(sd)
    assert {"ddim", "pndm", "euler", "euler-a", "dpm++2m", "dpm++2m-karras", "unipc", "heun", "dpm2-a"} <= set(names)
    assert "flow-euler" not in names
    for name in names:
        scheduler = build_sampler(sd, name)
        assert type(scheduler).__name__ == SAMPLERS[name].scheduler_class
        assert sampler_name(scheduler) == name, name  # what recipes record builds the same sampler again
        assert scheduler.config.prediction_type == "v_prediction"  # the model's own config carries over
        assert scheduler.config.beta_schedule == "scaled_linear"
    assert sampler_names(FlowMatchEulerDiscreteScheduler()) == ["flow-euler"]


def test_a_name_fixes_its_toggles_whatever_the_models_config_says():
    karras_model = DPMSolverMultistepScheduler(use_karras_sigmas=True, solver_order=3)
    plain = build_sampler(karras_model, "dpm++2m")
    assert not plain.config.use_karras_sigmas and plain.config.solver_order == 2
    assert build_sampler(karras_model, "DPM++2M-Karras").config.use_karras_sigmas  # names are case-insensitive
    assert build_sampler(karras_model, "dpm++2m-sde").config.algorithm_type == "sde-dpmsolver++"
    # a compatible class by its name: built from the config as is (not a table name, so named by its class)
    single = build_sampler(karras_model, "DPMSolverSinglestepScheduler")
    assert type(single).__name__ == "DPMSolverSinglestepScheduler" and single.config.use_karras_sigmas
    assert check_sampler(karras_model, " Euler-A ") == "euler-a"
    assert check_sampler(karras_model, "heundiscretescheduler") == "HeunDiscreteScheduler"


@pytest.mark.parametrize("name, scheduler, needle", [
    ("dpm3", DDIMScheduler(), "unknown sampler 'dpm3'; did you mean 'dpm2'?"),
    ("flow-euler", DDIMScheduler(), "does not fit this pipeline, whose scheduler is DDIMScheduler"),
    ("euler-a", FlowMatchEulerDiscreteScheduler(), "samplers that fit: flow-euler"),
    ("EDMEulerScheduler", DDIMScheduler(), "unknown sampler"),  # listed compatible by diffusers, samples noise here
    ("", DDIMScheduler(), "a sampler is a name"),
    (3, DDIMScheduler(), "a sampler is a name"),
    ("x" * 10_000, DDIMScheduler(), "a sampler is a name"),
])
def test_bad_names_are_one_line(name, scheduler, needle):
    with pytest.raises(ValueError) as err:
        build_sampler(scheduler, name)
    assert needle in str(err.value) and "\n" not in str(err.value) and len(str(err.value)) < 600


def test_a_sampler_whose_package_is_missing_is_one_line_or_builds():
    try:
        import torchsde  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs a package that is not installed"):
            build_sampler(DDIMScheduler(), "DPMSolverSDEScheduler")
    else:
        assert type(build_sampler(DDIMScheduler(), "DPMSolverSDEScheduler")).__name__ == "DPMSolverSDEScheduler"


def test_known_sampler_checks_a_name_without_a_model():
    assert known_sampler(" dpm++2m ") == "dpm++2m"
    assert known_sampler("UniPCMultistepScheduler") == "UniPCMultistepScheduler"
    with pytest.raises(ValueError, match="did you mean 'euler-a'"):
        known_sampler("euler_a")


# ----- with_sampler ---------------------------------------------------------------------------------------------------
def test_with_sampler_samples_exactly_as_the_scheduler_set_the_diffusers_way(tiny_pipe):
    before = tiny_pipe.scheduler
    copy_ = tiny_pipe.with_sampler("dpm++2m-karras")
    assert tiny_pipe.scheduler is before and type(tiny_pipe.scheduler) is DDIMScheduler  # the pipeline is untouched
    assert tiny_pipe.config["scheduler"][1] == "DDIMScheduler"
    assert copy_.config["scheduler"][1] == "DPMSolverMultistepScheduler" and copy_.unet is tiny_pipe.unet
    ours = call(copy_)
    by_hand = diffusers.StableDiffusionPipeline(**{**tiny_pipe.components, "scheduler": DPMSolverMultistepScheduler.from_config(
        tiny_pipe.scheduler.config, use_karras_sigmas=True)}, requires_safety_checker=False)
    by_hand.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(ours, call(by_hand))
    assert np.abs(ours - call(tiny_pipe)).max() > 1e-3  # a different sampler, different images
    assert with_sampler(tiny_pipe, None) is tiny_pipe


def test_steering_blocks_apply_to_with_sampler_copies(tiny_pipe):
    v = random_vector(tiny_pipe, [LAYER], seed=1)
    euler = tiny_pipe.with_sampler("euler")
    explicit = call(euler, steering=v, steering_scale=0.8)
    with tiny_pipe.steering(v, 0.8):
        np.testing.assert_array_equal(call(euler), explicit)
    assert np.abs(call(euler) - explicit).max() > 1e-4  # outside the block: unsteered


@pytest.mark.parametrize("name", ["pndm", "euler-a", "heun", "dpm2-a-karras", "dpm++2m-sde", "unipc", "lms-karras"])
def test_every_sampler_steers_exactly_inside_the_window_and_not_at_scale_0(tiny_pipe, name):
    """On samplers with one, two or more denoiser calls per step (and noise drawn every step), scale 0 is the
    unsteered image bit for bit, and the window is measured in the run's denoiser calls: a steered site moves by
    exactly scale x v at the calls inside it and not at all outside."""
    pipe = tiny_pipe.with_sampler(name)
    v = random_vector(tiny_pipe, [LAYER], seed=2)
    np.testing.assert_array_equal(call(pipe, steering=v, steering_scale=0.0), call(pipe))
    window, scale = (0.0, 0.5), 0.6
    raw, steered = capture_site(pipe, LAYER, lambda arm: call(
        pipe, steering=v, steering_scale=scale, steering_window=window, steering_branch="both", callback_on_step_end=arm))
    calls = len(raw) + 1  # capture_site starts at the second denoiser call
    assert calls >= STEPS
    first, stop = window_bounds(window, calls)
    active = [i for i, (r, s) in enumerate(zip(raw, steered, strict=True), start=1) if not torch.equal(r, s)]
    assert active == list(range(max(first, 1), stop))
    for i in active:
        r, s = raw[i - 1], steered[i - 1]
        torch.testing.assert_close(s - r, (scale * v.directions[LAYER])[None, :, None, None].expand_as(r), rtol=0, atol=1e-5)
    assert no_hooks_left(tiny_pipe.unet)


def test_two_calls_at_once_with_different_samplers_get_their_own_images(tiny_pipe):
    v = random_vector(tiny_pipe, [LAYER], seed=3)
    jobs = {"euler-a": 0.7, "dpm++2m": -0.5, "pndm": 0.0}
    alone = {name: call(tiny_pipe.with_sampler(name), steering=v, steering_scale=s, seed=4) for name, s in jobs.items()}
    together: dict[str, np.ndarray] = {}
    barrier = threading.Barrier(len(jobs))

    def work(name: str, scale: float) -> None:
        barrier.wait()
        together[name] = call(tiny_pipe.with_sampler(name), steering=v, steering_scale=scale, seed=4)

    threads = [threading.Thread(target=work, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in jobs:
        np.testing.assert_array_equal(together[name], alone[name])
    assert type(tiny_pipe.scheduler) is DDIMScheduler
    assert no_hooks_left(tiny_pipe.unet)


def test_learning_with_a_sampler_records_it(tiny_pipe):
    pipe = tiny_pipe.with_sampler("euler-a")
    v = pipe.learn_direction(["a blue sneaker"], ["a red sneaker"], num_inference_steps=3, window=(0, 1),
                             readers="all")
    assert v.metadata["sampling"]["scheduler"] == "EulerAncestralDiscreteScheduler"
    assert v.metadata["sampling"]["sampler"] == "euler-a"


# ----- command line, batch, app ---------------------------------------------------------------------------------------
def test_generate_with_a_sampler_records_it_and_matches_python(model_dir, tiny_pipe, tmp_path):
    args = ["generate", "--model", model_dir, "--prompt", "a bag", "--steps", str(STEPS), "--seed", "3", "--guidance", "5"]
    assert main([*args, "--sampler", "UniPC", "--out", str(tmp_path / "u")]) == 0  # names are case-insensitive
    assert main([*args, "--out", str(tmp_path / "d")]) == 0
    png = tmp_path / "u" / "seed3.png"
    assert read_recipe(png)["sampler"] == "unipc" and read_recipe(tmp_path / "d" / "seed3.png")["sampler"] == "ddim"
    # what a diffusers user gets from the same folder with the scheduler swapped the diffusers way
    loaded = diffusers.StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    loaded.scheduler = diffusers.UniPCMultistepScheduler.from_config(loaded.scheduler.config)
    loaded.set_progress_bar_config(disable=True)
    want = loaded("a bag", num_inference_steps=STEPS, guidance_scale=5.0, generator=[torch.Generator().manual_seed(3)]).images[0]
    np.testing.assert_array_equal(np.asarray(want), np.asarray(Image.open(png).convert("RGB")))


def test_steer_samplers_lists_what_fits_the_model(model_dir, capsys):
    assert main(["samplers", "--model", model_dir, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == sampler_names(DDIMScheduler())
    by_name = {r["name"]: r for r in rows}
    assert [n for n, r in by_name.items() if r["model_default"]] == ["ddim"]
    assert by_name["heun"]["calls_in_20_steps"] == 39 and by_name["pndm"]["calls_in_20_steps"] == 21
    assert all(r["learning_shares_first_half"] for r in rows)
    assert main(["samplers", "--model", model_dir]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"24 sampler(s) fit {model_dir} (its own scheduler: ddim)") and " * ddim " in out
    assert main(["samplers", "--model", "/no/such/model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("steer samplers: error: model '/no/such/model' not found")


def test_a_sampler_that_does_not_fit_or_is_unknown_is_one_line(model_dir, tmp_path, capsys):
    base = ["generate", "--model", model_dir, "--prompt", "a bag", "--steps", "2", "--out", str(tmp_path / "o")]
    assert main([*base, "--sampler", "flow-euler"]) == 2
    err = capsys.readouterr().err  # after the model's loading bar (the fit is known once the model is): one line
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("steer generate: error: sampler 'flow-euler'")
    assert "does not fit" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--sampler", "dpm++3m"])
    assert exit_.value.code == 2
    assert "unknown sampler 'dpm++3m'" in capsys.readouterr().err


def test_batch_jobs_name_their_sampler_and_a_run_default_fills_the_rest(tiny_pipe, tmp_path):
    jobs = [
        {"prompt": "a bag", "seed": 1, "num_inference_steps": STEPS, "sampler": "euler-a", "name": "a"},
        {"prompt": "a bag", "seed": 1, "num_inference_steps": STEPS, "name": "b"},
        {"prompt": "a bag", "seed": 1, "num_inference_steps": STEPS, "sampler": "flow-euler", "name": "c"},
        {"prompt": "a bag", "seed": 1, "num_inference_steps": STEPS, "sampler": [["euler"] * 50] * 50, "name": "d"},
    ]
    summary = batch.run(jobs, tiny_pipe, tmp_path / "out", progress=False)
    assert summary["written"] == 2 and [f["line"] for f in summary["failures"]] == [3, 4]
    assert "does not fit" in summary["failures"][0]["reason"]
    assert "a sampler is a name" in summary["failures"][1]["reason"] and len(summary["failures"][1]["reason"]) < 500
    a, b = read_recipe(tmp_path / "out" / "a.png"), read_recipe(tmp_path / "out" / "b.png")
    assert (a["sampler"], a["scheduler"]) == ("euler-a", "EulerAncestralDiscreteScheduler")
    assert "sampler" not in b and b["scheduler"] == "DDIMScheduler"  # the resume keys of runs before samplers hold
    want = call(tiny_pipe.with_sampler("euler-a"), "a bag", seed=1, guidance_scale=7.5)[0]
    got = np.asarray(Image.open(tmp_path / "out" / "a.png").convert("RGB")) / 255.0
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6
    # a run-wide default for jobs that name none: the same bytes as the job that named it
    again = batch.run(jobs[1:2], tiny_pipe, tmp_path / "out2", progress=False, sampler="euler-a")
    assert again["written"] == 1
    assert (tmp_path / "out2" / "b.png").read_bytes() != (tmp_path / "out" / "b.png").read_bytes()
    assert read_recipe(tmp_path / "out2" / "b.png")["sampler"] == "euler-a"
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out2" / "b.png")),
                          np.asarray(Image.open(tmp_path / "out" / "a.png")))
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {m["path"] for m in manifest} == {"a.png", "b.png"}


def test_the_app_samples_with_the_picked_sampler_and_records_it(tiny_pipe):
    from steer.app import helpers as H

    choices = H.sampler_choices(tiny_pipe)
    assert choices[0] == ("the model's own (DDIMScheduler)", "") and ("dpm++2m", "dpm++2m") in choices
    settings = H.GenerateSettings(prompt="a bag", steps=STEPS, sampler="DPM++2M").validated(tiny_pipe)
    assert settings.sampler == "dpm++2m"
    v = random_vector(tiny_pipe, [LAYER], seed=5)
    original, steered, _ = H.run_pair(tiny_pipe, v, settings)
    want = tiny_pipe.with_sampler("dpm++2m")(["a bag"] * 2, num_inference_steps=STEPS, guidance_scale=5.0, height=settings.height,
                                            width=settings.width, generator=H.make_generators(tiny_pipe, 0, 2), steering=v,
                                            steering_scale=[0.0, 1.0], **settings.steering_config(tiny_pipe, v).to_settings()).images
    assert np.array_equal(np.asarray(original), np.asarray(want[0])) and np.array_equal(np.asarray(steered), np.asarray(want[1]))
    recipe = settings.recipe(tiny_pipe, v, 1.0)
    assert (recipe["sampler"], recipe["scheduler"]) == ("dpm++2m", "DPMSolverMultistepScheduler")
    assert "sampler" not in H.GenerateSettings(prompt="a bag").validated(tiny_pipe).recipe(tiny_pipe, v, 1.0)
    with pytest.raises(H.UserError, match="does not fit"):
        H.GenerateSettings(prompt="a bag", sampler="flow-euler").validated(tiny_pipe)
    # the Learn tab draws its samples with the picked sampler too, and the direction records it
    learned = H.learn(tiny_pipe, H.LearnSettings(positive="a blue bag", negative="a bag", mode="text", num_samples=1, steps=2,
                                                 sampler="dpm++2m"))
    assert learned.metadata["sampling"]["sampler"] == "dpm++2m"
    with pytest.raises(H.UserError, match="does not fit"):
        H.learn(tiny_pipe, H.LearnSettings(positive="a blue bag", negative="a bag", mode="text", sampler="flow-euler"))


# ----- every family ---------------------------------------------------------------------------------------------------
FAMILIES = {  # family: (tiny pipeline, call size, another sampler or None (flow matching: its own only), one that does not fit)
    "sdxl": ("steer.testing.sdxl:tiny_sdxl_pipeline", {}, "dpm++2m-karras", "flow-euler"),
    "pixart": ("steer.testing.pixart:tiny_pixart_pipeline", "TINY_CALL", "euler-a", "flow-euler"),
    "sd3": ("steer.testing.sd3:tiny_sd3_pipeline", {}, None, "euler"),
    "flux": ("steer.testing.flux:tiny_flux_pipeline", {"height": 16, "width": 16}, None, "dpm++2m"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_samples_with_the_samplers_that_fit_it(family):
    """SDXL and PixArt take the SD samplers (another one gives other images, steering at scale 0 changes nothing);
    SD3 and Flux take flow-euler only, which is their own scheduler (the same images bit for bit, dynamic shifting
    and all); a sampler of the other kind is one line."""
    import importlib

    from steer.denoisers import CONTEXT_SITE

    spec, size, other, misfit = FAMILIES[family]
    module, fn = spec.split(":")
    pipe = getattr(importlib.import_module(module), fn)(seed=0)
    size = getattr(importlib.import_module(module), size) if isinstance(size, str) else size
    base = call(pipe, **size)
    if other is None:
        assert sampler_names(pipe.scheduler) == ["flow-euler"]
        np.testing.assert_array_equal(call(pipe.with_sampler("flow-euler"), **size), base)
        other = "flow-euler"
    else:
        assert np.abs(call(pipe.with_sampler(other), **size) - base).max() > 1e-4
    sampled = pipe.with_sampler(other)
    v = random_vector(pipe, [CONTEXT_SITE], seed=1)
    plain = call(sampled, **size)
    assert np.isfinite(plain).all()
    np.testing.assert_array_equal(call(sampled, steering=v, steering_scale=0.0, **size), plain)
    assert np.abs(call(sampled, steering=v, steering_scale=2.0, **size) - plain).max() > 0  # (the tiny PixArt barely reads text)
    with pytest.raises(ValueError, match=re.escape(f"sampler '{misfit}' (") + ".* does not fit this pipeline"):
        pipe.with_sampler(misfit)
