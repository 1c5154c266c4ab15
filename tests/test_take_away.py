"""Fitting a take-away (`steer.take_away`): the prompt rewriting, the fit's bookkeeping on a tiny pipeline, and its
errors."""

import warnings

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

from steer import SteeringVector
from steer.denoisers import CONTEXT_SITE, layer_channels
from steer.take_away import APPEARANCE_WINDOWS, WINDOWS
from steer.testing import tiny_pipeline
from steer.wording import attribute_span, attribute_words, open_prompts, rewrite_attribute


def test_attribute_words_and_their_replacement():
    assert attribute_words(["a blue sneaker", "a blue bag"], ["a sneaker", "a bag"]) == ["blue"]
    assert open_prompts(["a blue sneaker", "a blue bag"], ["a sneaker", "a bag"]) == ["a sneaker", "a bag"]
    items = ["a red item", "a blue item"]
    assert attribute_span("a red dress", items) == (2, 3) and attribute_span("a photo of a dog", ["a photo"]) == (2, 5)
    assert rewrite_attribute("a red dress", items, "a blue ankle boot", items) == "a red ankle boot"
    assert rewrite_attribute("a red ankle boot", items, "a red bag", items) == "a red bag"
    assert rewrite_attribute("a red t-shirt", ["a t-shirt"], "a blue sneaker", ["a sneaker"]) == "a blue t-shirt"
    assert rewrite_attribute("a photo of a dog", ["a photo"], "a photo of a cat", ["a photo"]) == "a photo of a cat"
    with pytest.raises(ValueError, match="no words its negative prompts lack"):
        attribute_span("a t-shirt", ["a red t-shirt"])


def learned(pipe, colour: str) -> SteeringVector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        return pipe.learn_direction([f"a {colour} sneaker", f"a {colour} bag"], ["a sneaker", "a bag"], num_inference_steps=2,
                                    calibration_samples=2, progress=False)


def fit_counting_rows(pipe, blue, red, shared: bool = True, steps: int = 2, **kw):
    """`fit_take_away` and the UNet batch rows it ran (``shared=False``: each window sampled whole)."""
    rows = []
    handle = pipe.unet.register_forward_pre_hook(lambda _m, a: rows.append(a[0].shape[0]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: the fit may not converge
            if not shared:
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr("steer.take_away.branch_step", lambda *a, **k: None)
                    return pipe.fit_take_away(blue, red, num_samples=2, grid=(0.5, 1.0), num_inference_steps=steps, **kw), sum(rows)
            return pipe.fit_take_away(blue, red, num_samples=2, grid=(0.5, 1.0), num_inference_steps=steps, **kw), sum(rows)
    finally:
        handle.remove()


def test_fit_samples_the_rewritten_prompts_and_counts_its_cost(tiny_pipe):
    blue, red = learned(tiny_pipe, "blue"), learned(tiny_pipe, "red")
    fit, rows = fit_counting_rows(tiny_pipe, blue, red, fit_by="distance")
    assert fit.prompts == [("a red sneaker", "a blue sneaker"), ("a red bag", "a blue bag")]
    assert fit.window in {(0.0, 0.5), (0.0, 1.0)} and set(fit.distances) == {"0,0.5", "0,1"}
    assert all(len(curve) == 2 for curve in fit.distances.values()) and 0.5 <= fit.strength <= 1.0
    # DDIM: the sources and targets whole; the grid's first step once, continued twice (each window whole: 2 x 2 sets)
    assert rows == fit.unet_rows == (2 * 2 + 2 * 1 + 2 * 2 * 1) * 2 * 2
    assert fit.to_dict()["window"] == list(fit.window)
    # the fit samples, and its calls run, with the word swap (`steer.word_swap`); negative="remove" without it
    assert fit.options() == {"steering_scale": [fit.strength, -min(fit.strength, 1.0)], "steering_negative": "replace", "steering_window": fit.window}
    assert fit.negative == fit.to_dict()["negative"] == "replace"


def test_fit_needs_directions_learned_from_prompts(tiny_pipe):
    blue = learned(tiny_pipe, "blue")
    g = torch.Generator().manual_seed(0)
    bare = SteeringVector({n: torch.randn(c, generator=g) for n, c in layer_channels(tiny_pipe.unet, [CONTEXT_SITE]).items()}, {"name": "bare"})
    with pytest.raises(ValueError, match="direction 'bare' records no positive prompts"):
        tiny_pipe.fit_take_away(blue, bare)
    with pytest.raises(ValueError, match="positive, finite strengths"):
        tiny_pipe.fit_take_away(blue, learned(tiny_pipe, "red"), grid=(0.0, 1.0))


def prompt_vector(colour: str) -> SteeringVector:
    """A direction that records the prompts it was learned from (all `fit_take_away` reads of it)."""
    meta = {"name": f"to_{colour}", "positive": {"prompts": [f"a {colour} sneaker", f"a {colour} bag"]}, "negative": {"prompts": ["a sneaker", "a bag"]}}
    return SteeringVector({CONTEXT_SITE: torch.ones(4) * len(colour)}, meta)  # each colour its own tensor (and digest)


@pytest.mark.parametrize(
    ("reach", "strength", "window", "advice"),
    [
        ({"0,0.5": 0.3, "0,1": 1.0}, 1.0, (0.0, 1.0), None),  # the whole run reaches the rewritten prompts at 1
        ({"0,0.5": 1.0, "0,1": 0.25}, 1.0, (0.0, 0.5), None),
        ({"0,0.5": 0.2, "0,1": 0.4}, 2.0, (0.0, 1.0), "the closest strength is the largest tried (2)"),
        ({"0,0.5": 0.05, "0,1": 0.1}, 2.0, (0.0, 1.0), "come only to 0.80 of their unsteered distance"),
    ],
)
def test_fit_picks_the_closest_strength_and_window_and_says_when_the_pair_may_not_flip(monkeypatch, reach, strength, window, advice):
    """Latents stand in for the model: the rewritten prompts sample at 1, the sources at 0, and a steered source at
    ``reach[window] * s``; so the relative distance along the grid is ``|1 - reach * s|``."""

    def fake_latents(pipe, prompts, seeds, **kw):
        if "steering_scale" not in kw:
            return torch.tensor([[1.0 if "blue" in p else 0.0] for p in prompts])
        w = kw["steering_window"]
        assert kw["steering_negative"] == "replace" and all(row[1] == -min(row[0], 1.0) for row in kw["steering_scale"])
        return torch.tensor([[reach[f"{w[0]:g},{w[1]:g}"] * row[0]] for row in kw["steering_scale"]])

    monkeypatch.setattr("steer.take_away.sample_latents", fake_latents)
    monkeypatch.setattr("steer.take_away.branch_step", lambda *a, **k: None)  # no pipeline here: each window whole
    monkeypatch.setattr("steer.take_away.run_length", lambda _pipe, steps: steps)
    from steer.take_away import fit_take_away

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_take_away(None, prompt_vector("blue"), prompt_vector("red"), num_samples=2)
    assert fit.converged and fit.strength == pytest.approx(strength) and fit.window == window
    assert fit.prompts == [("a red sneaker", "a blue sneaker"), ("a red bag", "a blue bag")]
    said = [str(w.message) for w in caught]
    if advice is None:
        assert fit.advice() is None and said == []
    else:
        assert advice in fit.advice() and said == [fit.advice()]


def fake_image_latents(pipe, prompts, seeds, **kw):
    """Latents (images, 2, 1, 1) standing in for the model: channel 0 is the layout, channel 1 the colour. The rewritten
    prompts ("blue") sample at (1, 1), the sources at (0, 0); steered over the first half a source reaches the colour
    alone, (0, s), over the whole run (0.9 s, 0.4 s): closer in latent distance (0.36 at s = 1.34 against 0.71 at 1),
    further in colour (0.2 at 2, the grid's top, against 0 at 1)."""
    if "steering_scale" not in kw:
        return torch.tensor([[[[1.0]], [[1.0]]] if "blue" in p else [[[0.0]], [[0.0]]] for p in prompts])
    early = tuple(kw["steering_window"]) == (0.0, 0.5)
    return torch.tensor([[[[0.0]], [[row[0]]]] if early else [[[0.9 * row[0]]], [[0.4 * row[0]]]] for row in kw["steering_scale"]])


@pytest.mark.parametrize(
    ("recorded", "measured", "fit_by", "colour", "window", "strength", "by"),
    [
        (None, 0.95, "auto", 1.0, (0.0, 0.5), 1.0, "colour"),  # a colour replaced: where the samples reach its colour
        (0.95, 0.3, "auto", 1.0, (0.0, 0.5), 1.0, "colour"),  # the direction's own record of its edit comes first
        (0.5, 0.95, "auto", 1.0, (0.0, 1.0), 1.34, "distance"),  # a layout edit by its record (a coat for a pullover)
        (None, 0.5, "auto", 1.0, (0.0, 1.0), 1.34, "distance"),  # an object replaced (the layout moves)
        (None, 0.95, "distance", 1.0, (0.0, 1.0), 1.34, "distance"),
        (None, 0.95, "auto", float("nan"), (0.0, 1.0), 1.34, "distance"),  # a decode overflowed: no colour verdict
    ],
)
def test_an_appearance_take_away_is_fitted_by_the_colour_its_samples_reach(monkeypatch, recorded, measured, fit_by, colour, window,
                                                                          strength, by):
    monkeypatch.setattr("steer.take_away.sample_latents", fake_image_latents)
    monkeypatch.setattr("steer.take_away.branch_step", lambda *a, **k: None)
    monkeypatch.setattr("steer.take_away.run_length", lambda _pipe, steps: steps)
    copies = []
    monkeypatch.setattr("steer.take_away.codec_vae", lambda _pipe: copies.append(1) or object())
    read = []
    monkeypatch.setattr("steer.take_away.structure_kept", lambda _p, a, b, vae=None: read.append(len(a)) or measured)

    def fake_colours(_pipe, latents, batch_size=8, vae=None):
        red = latents[:, 1, 0, 0] * colour
        return torch.stack([red, torch.zeros_like(red), torch.zeros_like(red)], 1)

    monkeypatch.setattr("steer.take_away.mean_colours", fake_colours)
    monkeypatch.setattr("steer.appearance.mean_colours", fake_colours)
    from steer.take_away import fit_take_away

    vector = prompt_vector("blue")
    if recorded is not None:
        vector.metadata["route_choice"] = {"structure": recorded, "below": 0.8, "readers": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_take_away(None, vector, prompt_vector("red"), num_samples=2, fit_by=fit_by, negative="remove")
    assert fit.window == window and fit.chosen_by == by and fit.to_dict()["chosen_by"] == by
    # an edit fitted by colour tries its own windows: the second starts a quarter into the run (the fake samples the same)
    # (in this table the fits whose samples are read by colour are the ones chosen by it; a NaN decode reads none)
    late = "0.25,1" if by == "colour" else "0,1"
    assert set(fit.distances) == {"0,0.5", late}
    assert min(fit.distances[late]) < min(fit.distances["0,0.5"]), "the latent distance prefers the later window: the colour overrules it"
    assert fit.strength == pytest.approx(strength, abs=0.02)
    # the distance is the latent one where the fit is (at s = 1 over the first half: |(1, 1) - (0, 1)| / |(1, 1)|)
    assert fit.distance == pytest.approx(2**-0.5 if window == (0.0, 0.5) else 0.36, abs=0.01)
    assert read == ([] if fit_by == "distance" or recorded is not None else [2])
    # the VAE is copied once where something is decoded, never for a layout edit the direction records as one
    assert len(copies) == (0 if fit_by == "distance" or recorded == 0.5 else 1)
    assert fit.structure == (None if fit_by == "distance" else recorded if recorded is not None else measured)
    if by == "colour":
        assert fit.colour_distances["0,0.5"][2] == pytest.approx(0.0) and min(fit.colour_distances[late]) == pytest.approx(0.2)
        assert fit.to_dict()["colour_distances"][late][-1] == 0.2 and "fitted by the samples' colour" in fit.window_note()
    else:
        assert fit.colour_distances is None and "colour_distances" not in fit.to_dict() and fit.window_note() == ""


@pytest.mark.parametrize(("recorded", "measured", "windows"), [(0.95, 0.3, ("0,0.5", "0.25,1")), (None, 0.95, ("0,0.5", "0.25,1")),
                                                              (0.5, 0.95, ("0,0.5", "0,1"))])
def test_with_the_word_swap_an_appearance_take_away_is_fitted_by_distance_over_its_own_windows(monkeypatch, recorded, measured, windows):
    """Under ``negative="replace"`` (the default) the word is swapped, so an appearance edit takes the latent minimum
    over its own candidate windows (docs/steering.md "Session 41"): nothing is decoded for colour, a layout edit is
    fitted as before."""
    monkeypatch.setattr("steer.take_away.sample_latents", fake_image_latents)
    monkeypatch.setattr("steer.take_away.branch_step", lambda *a, **k: None)
    monkeypatch.setattr("steer.take_away.run_length", lambda _pipe, steps: steps)
    monkeypatch.setattr("steer.take_away.codec_vae", lambda _pipe: object())
    monkeypatch.setattr("steer.take_away.structure_kept", lambda _p, a, b, vae=None: measured)
    monkeypatch.setattr("steer.take_away.mean_colours", lambda *a, **k: pytest.fail("a swap's fit decodes no colours"))
    from steer.take_away import fit_take_away

    vector = prompt_vector("blue")
    if recorded is not None:
        vector.metadata["route_choice"] = {"structure": recorded, "below": 0.8, "readers": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = fit_take_away(None, vector, prompt_vector("red"), num_samples=2)
    assert tuple(fit.distances) == windows and fit.chosen_by == "distance" and fit.negative == "replace"
    assert fit.window == (float(windows[1].split(",")[0]), 1.0) and fit.strength == pytest.approx(1.34, abs=0.02)
    assert fit.structure == (recorded if recorded is not None else measured)


def test_the_fit_by_colour_samples_its_own_windows_whole(tiny_pipe):
    """An appearance edit's candidate windows (the first half; from a quarter of the run to its end) share no first
    part, so each is sampled whole; the first half's samples are the same as a distance fit's."""
    blue, red = learned(tiny_pipe, "blue"), learned(tiny_pipe, "red")
    blue.metadata["route_choice"] = {"structure": 0.95, "below": 0.8, "readers": None}  # a colour edit, as learned ones record
    auto, rows = fit_counting_rows(tiny_pipe, blue, red)
    plain, rows_plain = fit_counting_rows(tiny_pipe, blue, red, fit_by="distance")
    assert set(auto.distances) == {"0,0.5", "0.25,1"} and set(plain.distances) == {"0,0.5", "0,1"}
    assert auto.distances["0,0.5"] == pytest.approx(plain.distances["0,0.5"], abs=1e-5)
    assert auto.window in APPEARANCE_WINDOWS and set(auto.colour_distances or {"0,0.5": 0, "0.25,1": 0}) == {"0,0.5", "0.25,1"}
    # 2 steps, 2 samples, CFG: sources and targets whole, then each window's 2 strengths whole (a distance fit, sharing its first step: 8 rows less)
    assert rows == auto.unet_rows == (2 * 2 + 2 * 2 * 2) * 2 * 2 and rows_plain == plain.unet_rows == rows - 8
    assert auto.structure == 0.95 and plain.structure is None
    with pytest.raises(ValueError, match=r"^fit_by= is one of 'auto', 'distance', got 'colour'$"):
        tiny_pipe.fit_take_away(blue, red, fit_by="colour")
    with pytest.raises(ValueError, match=r"^negative= is one of 'replace', 'remove', got 'subtract'$"):
        tiny_pipe.fit_take_away(blue, red, negative="subtract")


# the learned directions' removal window (to the end) and the call's window; on DDIM, DPM-Solver (its history handed
# from the first half's calls to the continuing ones) and Euler ancestral (each image's generator state handed on), 3
# images per call: uneven splits
@pytest.mark.parametrize(("removal", "scheduler"), [("recorded", "ddim"), ("window", "ddim"), ("recorded", "dpm"), ("recorded", "euler-a")])
def test_the_windows_share_their_first_half_and_fit_as_when_sampled_whole(tiny_pipe, removal, scheduler):
    pipe = tiny_pipe
    if scheduler != "ddim":  # a pipeline of its own: the session's tiny_pipe keeps DDIM
        pipe = tiny_pipeline(seed=0)
        kind = DPMSolverMultistepScheduler if scheduler == "dpm" else EulerAncestralDiscreteScheduler
        pipe.scheduler = kind.from_config(pipe.scheduler.config)
    blue, red = learned(pipe, "blue"), learned(pipe, "red")
    assert red.metadata["recommended"]["removal_window"][1] == 1.0, "learned take-aways remove to the end of the run"
    if removal == "window":  # directions that record no removal window: the removal follows each candidate window
        for v in (blue, red):
            v.metadata["recommended"].pop("removal_window")
    split = {"batch_size": 3} if scheduler != "ddim" else {}
    shared, rows = fit_counting_rows(pipe, blue, red, steps=4, windows=WINDOWS, **split)
    whole, rows_whole = fit_counting_rows(pipe, blue, red, shared=False, steps=4, windows=WINDOWS, **split)
    for key in ("0,0.5", "0,1"):
        assert shared.distances[key] == pytest.approx(whole.distances[key], abs=1e-5)
    assert shared.strength == pytest.approx(whole.strength, abs=1e-5) and shared.window == whole.window
    assert abs(shared.distances["0,0.5"][1] - shared.distances["0,1"][1]) > 1e-4, "the two windows differ: the check means something"
    assert (rows, rows_whole) == (shared.unet_rows, whole.unet_rows) == ((2 * 4 + 2 * 2 + 2 * 2 * 2) * 4, (2 + 2 * 2) * 4 * 4)


def test_fit_splits_its_calls_by_batch_size_with_the_same_result(tiny_pipe):
    blue, red = learned(tiny_pipe, "blue"), learned(tiny_pipe, "red")
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda _m, a: calls.append(a[0].shape[0]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = tiny_pipe.fit_take_away(blue, red, num_samples=2, grid=(0.5, 1.0), num_inference_steps=2, batch_size=None, windows=WINDOWS)
            widest = max(calls)
            calls.clear()
            split = tiny_pipe.fit_take_away(blue, red, num_samples=2, grid=(0.5, 1.0), num_inference_steps=2, batch_size=1, windows=WINDOWS)
    finally:
        handle.remove()
    assert widest == 2 * 2 * 2 * 2 and max(calls) == 2, "one image (2 CFG rows) per call"  # the tail: 2 x grid x samples
    for key in one.distances:
        assert split.distances[key] == pytest.approx(one.distances[key], rel=1e-5)  # batch-size-dependent kernels: ~1e-6


def test_fit_refuses_the_options_it_sets_itself(tiny_pipe):
    blue, red = prompt_vector("blue"), prompt_vector("red")
    with pytest.raises(ValueError, match=r"^fit_take_away sets steering_window itself \(the candidate windows are windows=\)$"):
        tiny_pipe.fit_take_away(blue, red, steering_window=(0.0, 1.0))


def test_a_take_away_that_is_the_direction_or_contradicts_the_negative_mode_is_one_line(tiny_pipe, tmp_path, capsys):
    """Taking away the direction being added cancels the edit, and ``--negative subtract`` with ``--take-away`` used to
    become ``remove`` silently: each is refused in one line, in Python, on the command line and (as it was) in a batch job."""
    from steer.cli.main import main
    from steer.jobs import run as batch
    from steer.take_away import ITSELF

    blue, red = prompt_vector("blue"), prompt_vector("red")
    with pytest.raises(ValueError, match="^the take-away is the direction itself"):
        tiny_pipe.fit_take_away(blue, blue)
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    capsys.readouterr()
    b, r = str(blue.save(tmp_path / "blue.safetensors")), str(red.save(tmp_path / "red.safetensors"))
    run = ["generate", "--model", str(model), "--prompt", "a red sneaker", "--steps", "2", "--out", str(tmp_path / "o")]
    for extra, message in [(["--direction", b, "--take-away", b], "--take-away to_red)"),
                           (["--direction", b, "--take-away", r, "--negative", "subtract"], "--negative subtract contradicts it"),
                           # a negative weight removed the edit direction instead of adding it (named scale+1)
                           (["--direction", b, "--take-away", r, "--weights", "-1"], "--take-away goes with a positive --weights")]:
        assert main([*run, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "o").exists()
    job = {"prompt": "a red sneaker", "num_inference_steps": 2, "directions": [{"path": b}]}
    plan = batch.plan_jobs([(1, {**job, "take_away": b}), (2, {**job, "take_away": r, "steering_negative": "subtract"})],
                           tiny_pipe, tmp_path / "batch", model="tiny")
    assert [f["reason"] for f in plan.failures] == [ITSELF, "take_away removes what the prompt says (steering_negative 'replace', or 'remove' without turning its word); leave steering_negative out"]


def test_a_direction_whose_full_edit_is_its_colour_is_fitted_on_the_margins_strengths(monkeypatch):
    """A colour direction's full edit is its colour minimum (`steer.calibrate`, session 39), smaller than the margin's
    that the take-away grid was set on: the fit samples the grid in the margin's units, so the same added strengths."""
    from steer.calibrate import MARGIN
    from steer.take_away import GRID, fit_take_away, margin_units

    blue, red = prompt_vector("blue"), prompt_vector("red")
    assert margin_units(blue) == 1.0  # no calibration record: the grid as given
    blue.metadata["calibration"] = {"strength": 0.35, "closest": 0.3, "strength_by": "colour"}
    assert margin_units(blue) == pytest.approx(MARGIN * 0.3 / 0.35)
    for junk in ({"strength": 0.35, "closest": "x", "strength_by": "colour"}, {"strength": 0.0, "closest": 0.3, "strength_by": "colour"},
                 {"strength": 0.42, "closest": 0.3}):
        assert margin_units(SteeringVector({"x": torch.ones(2)}, {"calibration": junk})) == 1.0
    sampled = []

    def fake_latents(pipe, prompts, seeds, **kw):
        if "steering_scale" in kw:
            sampled.append([row[0] for row in kw["steering_scale"]])
            return torch.tensor([[min(row[0], 1.0)] for row in kw["steering_scale"]])
        return torch.tensor([[1.0 if "blue" in p else 0.0] for p in prompts])

    monkeypatch.setattr("steer.take_away.sample_latents", fake_latents)
    monkeypatch.setattr("steer.take_away.branch_step", lambda *a, **k: None)
    monkeypatch.setattr("steer.take_away.run_length", lambda _pipe, steps: steps)
    fit = fit_take_away(None, blue, red, num_samples=1, windows=[(0.0, 1.0)])
    assert sampled[0] == pytest.approx([g * MARGIN * 0.3 / 0.35 for g in GRID]) and fit.grid == pytest.approx(sampled[0])
