"""One window per direction: directions that record different windows each act only inside their own.

On the tiny random SD pipeline: exact deltas step by step, the recorded windows applied when a call sets none (and
overridden when it sets one), per-direction removal windows, one-line errors, batch jobs, CLI and app recipes.
"""

import warnings

import numpy as np
import pytest
import torch

from steer.config import PAPER_WINDOW, SteeringConfig, recommended_settings, window_record
from steer.denoisers import CONTEXT_SITE
from steer.engine import window_bounds
from steer.jobs import run as batch
from steer.recipe import read_recipe
from steer.testing import capture_site, no_hooks_left, random_vector
from steer.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = 6
EARLY, LATE = (0.0, 0.5), (0.5, 1.0)


def call(pipe, prompt="a red sneaker", seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images


def windowed(vector: SteeringVector, window, removal=None) -> SteeringVector:
    """``vector`` recording ``window`` (None: no window) and ``removal`` as its recommended (removal) window."""
    rec = {k: v for k, v in (vector.metadata.get("recommended") or {}).items() if k not in ("window", "removal_window")}
    rec = {**rec, **({"window": list(window)} if window else {}), **({"removal_window": list(removal)} if removal else {})}
    return SteeringVector(vector.directions, {**vector.metadata, "name": f"{vector.name}-{window}-{removal}", "recommended": rec})


@pytest.fixture(scope="module")
def text_pair(tiny_pipe):
    """Two text-site directions, recommending the text preset's application, early and late windows."""
    rec = {"branch": "split", "mode": "token", "preserve_norm": True}
    first = random_vector(tiny_pipe, [CONTEXT_SITE], seed=1, fingerprint=True, recommended=rec)
    second = random_vector(tiny_pipe, [CONTEXT_SITE], seed=2, fingerprint=True, recommended=rec)
    return windowed(first, EARLY), windowed(second, LATE)


def test_each_direction_moves_the_site_only_inside_its_own_window(tiny_pipe):
    """Given one window per direction, a steered site moves by exactly the sum of the directions whose window holds
    the step, and not at all where none does."""
    layer = "up_blocks.0.resnets.1"
    a, b = random_vector(tiny_pipe, [layer], seed=3), random_vector(tiny_pipe, [layer], seed=4)
    windows, scales = [(0.0, 0.5), (0.3, 0.7)], [0.7, -0.4]
    raw, steered = capture_site(tiny_pipe, layer, lambda arm: call(
        tiny_pipe, steering=[a, b], steering_scale=scales, steering_window=windows, steering_branch="both", callback_on_step_end=arm))
    bounds = [window_bounds(w, STEPS) for w in windows]
    seen = set()
    for step, (r, s) in enumerate(zip(raw, steered, strict=True), start=1):
        inside = [first <= step < stop for first, stop in bounds]
        seen.add(tuple(inside))
        want = sum((sc * v.directions[layer] for sc, v, i in zip(scales, (a, b), inside, strict=True) if i), torch.zeros(r.shape[1]))
        if any(inside):
            torch.testing.assert_close(s - r, want[None, :, None, None].expand_as(r), rtol=0, atol=1e-5)
        else:
            assert torch.equal(s, r), f"step {step} is outside both windows but moved"
    assert seen == {(True, False), (True, True), (False, True), (False, False)}  # every case was exercised
    assert no_hooks_left(tiny_pipe.unet)


def test_directions_recording_different_windows_act_each_in_its_own(tiny_pipe, text_pair):
    """A call that sets no window applies each direction in the window it records (not the built-in one, the earlier
    fallback when they differed): with the other at scale 0 each gives exactly what it gives alone; a window set in
    the call, or in ``pipe.steering(...)``, applies to all."""
    early, late = text_pair
    assert recommended_settings([early, late])["steering_window"] == (EARLY, LATE)
    assert recommended_settings([early, windowed(late, EARLY)])["steering_window"] == EARLY  # agreeing: one window
    assert recommended_settings([early, windowed(late, None)])["steering_window"] == (EARLY, PAPER_WINDOW)
    pair = dict(steering=[early, late])
    assert np.array_equal(call(tiny_pipe, **pair, steering_scale=[0.8, 0.0]), call(tiny_pipe, steering=early, steering_scale=0.8))
    assert np.array_equal(call(tiny_pipe, **pair, steering_scale=[0.0, 0.8]), call(tiny_pipe, steering=late, steering_scale=0.8))
    both = call(tiny_pipe, **pair, steering_scale=[0.8, 0.8])
    assert np.array_equal(both, call(tiny_pipe, **pair, steering_scale=[0.8, 0.8], steering_window=[EARLY, LATE]))
    assert not np.array_equal(both, call(tiny_pipe, **pair, steering_scale=[0.8, 0.8], steering_window=PAPER_WINDOW))
    whole = call(tiny_pipe, **pair, steering_scale=[0.8, 0.8], steering_window=(0.0, 1.0))
    with tiny_pipe.steering([early, late], scale=[0.8, 0.8], window=(0.0, 1.0)):
        assert np.array_equal(call(tiny_pipe), whole)
    assert not np.array_equal(whole, both)
    assert no_hooks_left(tiny_pipe.unet)


def test_per_direction_windows_refuse_a_wrong_count_in_one_line(tiny_pipe, text_pair):
    with pytest.raises(ValueError, match=r"steering_window holds 3 window\(s\) for 2 direction\(s\)"):
        call(tiny_pipe, steering=list(text_pair), steering_window=[EARLY, LATE, EARLY])
    with pytest.raises(ValueError, match="steering_window must satisfy 0 <= start < end <= 1"):
        call(tiny_pipe, steering=list(text_pair), steering_window=[EARLY, (0.7, 0.2)])
    with pytest.raises(ValueError, match="steering_window must be a pair"):
        SteeringConfig(window=[EARLY, "late"])
    assert no_hooks_left(tiny_pipe.unet)


def test_a_none_window_is_the_one_its_direction_records(tiny_pipe, text_pair):
    """What the command line, batch and the app pass for a slider whose sides record different windows (each side
    in its own: tests/test_slider_windows.py); for a one-sided direction, the window it records."""
    given = call(tiny_pipe, steering=list(text_pair), steering_scale=[3.0, 3.0], steering_window=[(0.0, 1.0), None])
    assert np.array_equal(given, call(tiny_pipe, steering=list(text_pair), steering_scale=[3.0, 3.0], steering_window=[(0.0, 1.0), LATE]))
    bare = random_vector(tiny_pipe, [CONTEXT_SITE], seed=3, fingerprint=True)  # records none: the built-in window
    assert np.array_equal(call(tiny_pipe, steering=[bare], steering_scale=3.0, steering_window=[None]),
                          call(tiny_pipe, steering=bare, steering_scale=3.0, steering_window=PAPER_WINDOW))


def test_removal_windows_per_direction(tiny_pipe):
    """Directions recording different removal windows: each is removed only inside its own (with the other at 0,
    exactly as alone), the removal window of one that records none follows its window, and a removal window set in
    the call applies to all."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights render no attribute
        red = tiny_pipe.learn_direction(["a red sneaker"], ["a sneaker"], num_inference_steps=3, calibration_samples=2, progress=False)
        bag = tiny_pipe.learn_direction(["a red bag"], ["a red item"], num_inference_steps=3, calibration_samples=2, progress=False)
    early_red, late_bag = windowed(red, EARLY, removal=EARLY), windowed(bag, EARLY, removal=LATE)
    assert recommended_settings([early_red, late_bag])["steering_removal_window"] == (EARLY, LATE)
    assert recommended_settings([early_red, windowed(bag, LATE)])["steering_removal_window"] == (EARLY, None)
    remove = dict(steering_negative="remove")
    for scales, alone in (([-0.6, 0.0], early_red), ([0.0, -0.6], late_bag)):
        got = call(tiny_pipe, "a red bag", steering=[early_red, late_bag], steering_scale=scales, **remove)
        assert np.array_equal(got, call(tiny_pipe, "a red bag", steering=alone, steering_scale=-0.6, **remove))
    session = tiny_pipe.build_steering_session([early_red, windowed(bag, LATE)], torch.tensor([[-1.0, -1.0]]),
                                               SteeringConfig(**{k[9:]: v for k, v in recommended_settings([early_red, windowed(bag, LATE)]).items()}))
    assert session.removal_windows == [EARLY, LATE]  # the one recording none: its own window
    both = call(tiny_pipe, "a red bag", steering=[early_red, late_bag], steering_scale=[-0.6, -0.6], **remove)
    everywhere = call(tiny_pipe, "a red bag", steering=[early_red, late_bag], steering_scale=[-0.6, -0.6], steering_removal_window=(0.0, 1.0), **remove)
    assert not np.array_equal(both, everywhere)
    assert no_hooks_left(tiny_pipe.unet)


def test_recipes_record_each_directions_window(tiny_pipe, text_pair, tmp_path, capsys):
    """Batch, CLI and app recipes record the window per direction when the directions were applied in different
    ones, and one ``[start, end]`` otherwise (recipes, and batch resume keys, of such calls are unchanged); a batch
    job may give one window per direction, and a wrong count is refused naming the line."""
    from steer.app import helpers as H
    from steer.cli.main import main

    early, late = text_pair
    paths = [str(early.save(tmp_path / "early.safetensors")), str(late.save(tmp_path / "late.safetensors"))]
    job = {"prompt": "a bag", "seed": 5, "num_inference_steps": STEPS, "directions": [{"path": p, "scale": 0.5} for p in paths]}
    batch.run([{**job, "name": "mixed"}, {**job, "name": "given", "steering_window": [[0.0, 1.0], [0.2, 0.6]]},
               {**job, "name": "one", "steering_window": [0.0, 1.0]}], tiny_pipe, tmp_path / "out", batch_size=1, model="tiny", progress=False)
    recipes = {n: read_recipe(tmp_path / "out" / f"{n}.png") for n in ("mixed", "given", "one")}
    assert recipes["mixed"]["window"] == [list(EARLY), list(LATE)]
    assert recipes["given"]["window"] == [[0.0, 1.0], [0.2, 0.6]]
    assert recipes["one"]["window"] == [0.0, 1.0]
    bad = batch.run([{**job, "steering_window": [[0.0, 1.0]] * 3}, {**job, "steering_window": [[0.0, 1.0], [0.6, 0.2]]},
                     {**job, "steering_window": [0.5, 0.5]}],  # empty: would steer nothing
                    tiny_pipe, tmp_path / "bad", batch_size=1, model="tiny", progress=False)
    assert [f["line"] for f in bad["failures"]] == [1, 2, 3] and bad["written"] == 0
    assert bad["failures"][0]["reason"] == "steering_window holds 3 window(s) for 2 direction(s): give one [start, end] for all, or one per direction"
    assert "steering_window must satisfy 0 <= start < end <= 1" in bad["failures"][1]["reason"]
    assert bad["failures"][2]["reason"].endswith("steering_window must satisfy 0 <= start < end <= 1, got (0.5, 0.5)")

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    assert main(["generate", "--model", str(model), "--prompt", "a bag", "--steps", str(STEPS), "--direction", *paths, "--out", str(tmp_path / "cli")]) == 0
    (png,) = (tmp_path / "cli").glob("*.png")
    assert read_recipe(png)["window"] == [list(EARLY), list(LATE)]
    cli = ["generate", "--model", str(model), "--prompt", "a bag", "--steps", str(STEPS), "--direction", *paths]
    assert main([*cli, "--window", "0,1", "0.2,0.6", "--out", str(tmp_path / "cli2")]) == 0  # one per direction
    assert read_recipe(next((tmp_path / "cli2").glob("*.png")))["window"] == [[0.0, 1.0], [0.2, 0.6]]
    assert main([*cli, "--window", "0,1", "--out", str(tmp_path / "cli3")]) == 0  # one for both
    assert read_recipe(next((tmp_path / "cli3").glob("*.png")))["window"] == [0.0, 1.0]
    capsys.readouterr()
    assert main([*cli, "--window", "0,1", "0,1", "0,1", "--out", str(tmp_path / "cli4")]) == 2
    assert "--window takes one start,end for all directions or one per direction (2), got 3" in capsys.readouterr().err
    assert not (tmp_path / "cli4").exists()

    settings = H.GenerateSettings(prompt="a red bag", steps=STEPS).validated(tiny_pipe)
    assert settings.recipe(tiny_pipe, early, 1.0)["steering"]["window"] == window_record(settings.config.window)


def test_directions_recording_different_application_settings_are_told(tiny_pipe, text_pair, tmp_path, capsys):
    """Mode, normalization and norm preservation apply to every direction of a call alike: when the directions record
    different ones and the call leaves them unset, the built-in value applies to all, and the call (and `steer
    generate`, and batch) says so in one line naming the settings and the directions; set in the call, no word. The
    branch is not among them: each direction runs on its own (tests/test_branch_per_direction.py)."""
    from steer.cli.main import main

    early, _ = text_pair
    paper = random_vector(tiny_pipe, ["up_blocks.0.resnets.1"], seed=6, fingerprint=True, name="paper-like", recommended={"mode": "add", "window": [0.0, 1.0]})
    with pytest.warns(UserWarning, match=r"recommend different steering_mode \(rand1-.*: token, paper-like: add\) -> add; steering_preserve_norm") as told:
        call(tiny_pipe, steering=[early, paper], steering_scale=[0.5, 0.5])
    assert not any("steering_branch" in str(w.message) for w in told)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every one set: nothing to say
        call(tiny_pipe, steering=[early, paper], steering_scale=[0.5, 0.5], steering_branch="split", steering_mode="token", steering_preserve_norm=True)
        call(tiny_pipe, steering=list(text_pair), steering_scale=[0.5, 0.5])  # text directions agree on all of them
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    paths = [str(early.save(tmp_path / "early.safetensors")), str(paper.save(tmp_path / "paper.safetensors"))]
    assert main(["generate", "--model", str(model), "--prompt", "a bag", "--steps", str(STEPS), "--direction", *paths, "--out", str(tmp_path / "cli")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: these directions recommend different steering_mode") == 1 and "steering_preserve_norm" in err
    assert "steering_branch" not in err
    told: list[str] = []
    job = {"prompt": "a bag", "num_inference_steps": STEPS, "directions": paths}
    batch.run([job, {**job, "seed": 1}, {**job, "steering_branch": "split", "steering_mode": "token"}], tiny_pipe, tmp_path / "batch",
              batch_size=1, model="tiny", progress=False, report=told.append)
    notes = [t for t in told if "recommend different" in t]
    assert len(notes) == 2 and notes[0].startswith("warning: line 1: these directions recommend different steering_mode")
    assert "steering_branch" not in notes[0]
    assert notes[1].startswith("warning: line 3: these directions recommend different steering_preserve_norm")  # the rest set


def test_the_sum_of_directions_keeps_what_they_record(tiny_pipe, text_pair):
    """``a + b`` records the settings both directions record (it used to record none, so a sum of text directions was
    applied the paper's way); with different windows it becomes a per-step direction over their hull, each part zero
    outside its own window, so at scale 1 it gives exactly the two in one call; settings they record differently are
    left to the built-in ones with a warning, and windows that do not divide the run evenly are refused in one line."""
    early, late = text_pair
    total = early + late
    assert total.metadata["recommended"] == {"branch": "split", "mode": "token", "preserve_norm": True, "window": [0.0, 1.0]}
    assert tuple(total.directions[CONTEXT_SITE].shape) == (2, early.directions[CONTEXT_SITE].shape[-1])
    assert np.array_equal(call(tiny_pipe, steering=total), call(tiny_pipe, steering=[early, late], steering_scale=[1.0, 1.0]))
    same = early + windowed(late, EARLY)
    assert same.directions[CONTEXT_SITE].ndim == 1 and same.metadata["recommended"]["window"] == list(EARLY)
    assert np.array_equal(call(tiny_pipe, steering=same), call(tiny_pipe, steering=[early, windowed(late, EARLY)], steering_scale=[1.0, 1.0]))
    assert (2.0 * total).metadata["recommended"] == total.metadata["recommended"]
    difference = early - windowed(late, (0.25, 0.75))  # quarters: four buckets, the second part negated in its own
    rows = difference.directions[CONTEXT_SITE]
    e, lt = early.directions[CONTEXT_SITE], late.directions[CONTEXT_SITE]
    assert torch.equal(rows[0], e) and torch.equal(rows[1], e - lt) and torch.equal(rows[2], -lt) and not rows[3].any()
    assert difference.metadata["recommended"]["window"] == [0.0, 0.75]

    paper = random_vector(tiny_pipe, [CONTEXT_SITE], seed=6, fingerprint=True, name="paper-like", recommended={"mode": "add", "window": [0.0, 0.5]})
    with pytest.warns(UserWarning, match="recommend different branch, mode, preserve_norm: their sum records only what they share"):
        mixed = early + paper
    assert mixed.metadata["recommended"] == {"window": [0.0, 0.5]}
    with pytest.raises(ValueError, match=r"cannot add .* into one vector: the windows do not divide the run into at most 1000 equal shares"):
        early + windowed(late, (0.0, 0.4567))


def test_sum_of_a_list_select_of_one_name_and_to_a_dtype_do_what_they_say(tiny_pipe, text_pair):
    """``sum([a, b])`` is ``a + b`` (it used to raise from ``0 + a``), ``v.select("layer")`` keeps that layer (it used
    to take the string as a list of one-letter layer names), ``v.to(torch.float16)`` converts; ``1 + a`` stays refused."""
    early, late = text_pair
    total = sum([early, late])
    assert torch.equal(total.directions[CONTEXT_SITE], (early + late).directions[CONTEXT_SITE])
    assert sum([early]) is early
    with pytest.raises(TypeError):
        1 + early
    assert early.select(CONTEXT_SITE).layers == [CONTEXT_SITE] == early.select([CONTEXT_SITE]).layers
    half = early.to(torch.float16)  # positional, as Tensor.to takes it (it failed deep inside torch)
    assert half.directions[CONTEXT_SITE].dtype == torch.float16 and early.to("cpu", torch.float16).directions[CONTEXT_SITE].dtype == torch.float16


def test_a_selection_recommends_only_the_layers_it_keeps(tiny_pipe):
    """``v.select(some)`` of a direction that recommends layers used to keep recommending all of them, so steering
    with it failed ("steering_layers ... is not in the direction(s)") though no layers were given."""
    layers = ["up_blocks.0.resnets.0", "up_blocks.0.resnets.1"]
    v = random_vector(tiny_pipe, layers, seed=3, recommended={"layers": layers, "window": [0.0, 1.0]})
    one = v.select(layers[:1])
    assert one.metadata["recommended"] == {"layers": layers[:1], "window": [0.0, 1.0]}
    assert v.metadata["recommended"]["layers"] == layers  # the original untouched
    call(tiny_pipe, steering=one)
    other = random_vector(tiny_pipe, layers, seed=3, recommended={"layers": layers[1:]})
    assert "layers" not in other.select(layers[:1]).metadata.get("recommended", {})
