"""The Gradio demo's take-away: the hint under the picker, auto, the fit, and the [add, remove] pair through the HTTP
API against the Python API. The server and helpers are `app_server`'s (a server of this module's own)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from app_server import (  # noqa: F401 (the *_fixture: pytest finds them here by their fixture names)
    STEPS,
    client_fixture,
    direction_file_fixture,
    expected_pair,
    generate_args,
    learned_text_direction,
    native,
    pipe_fixture,
    pixels,
    server_fixture,
)

from steer.app import helpers as H
from steer.app.handlers import AUTO_CHOICE, take_away_choices
from steer.recipe import read_recipe
from steer.vectors import SteeringVector


def test_the_take_away_hint_before_generating(pipe, tmp_path):
    """Shown under the Take away picker as the prompt or the direction changes: the direction the prompt states
    against the edit, once none is picked; a label, so anything odd is simply no hint."""
    from steer.app.handlers import SteerApp

    cat = learned_text_direction(pipe, "a photo of a cat", "a photo", "cat")
    dog = learned_text_direction(pipe, "a photo of a dog", "a photo", "dog")
    app = SteerApp(pipe, H.DirectionCatalog({"cat": cat.save(tmp_path / "cat.safetensors"), "dog": dog.save(tmp_path / "dog.safetensors")}))
    hint = app.take_away_hint("cat", None, H.NONE_CHOICE, "a photo of a dog")
    assert hint.startswith(H.md_text("'a photo of a dog' states 'of a dog', which 'cat' replaces", 400))
    assert hint.endswith("Pick **dog** under *Take away* (and *Fit*) to take it away as the edit is added.")
    assert app.take_away_hint("cat", None, "dog", "a photo of a dog") == ""  # picked already
    assert app.take_away_hint("cat", None, H.NONE_CHOICE, "a photo") == ""  # states nothing against it
    assert app.take_away_hint("dog", None, H.NONE_CHOICE, "a photo of a dog") == ""  # states the edit itself
    for odd in (("nope", "a photo of a dog"), (H.NONE_CHOICE, "a photo of a dog"), ("cat", None), ("cat", "x" * 10_000)):
        assert app.take_away_hint(odd[0], None, H.NONE_CHOICE, odd[1]) == ""
    # with auto picked: what it will take away, or that it takes nothing
    assert app.take_away_hint("cat", None, AUTO_CHOICE, "a photo of a dog") == "Auto: taking away **dog** (the prompt states 'of a dog')."
    assert app.take_away_hint("cat", None, AUTO_CHOICE, "a photo") == "Auto: the prompt states nothing against the edit; nothing is taken away."
    assert take_away_choices(app.catalog, {"x": cat})[:2] == [H.NONE_CHOICE, AUTO_CHOICE] and take_away_choices(app.catalog, {"x": cat})[-1] == "x"


def test_take_away_scales_and_checks(pipe):
    assert H.take_away_scales([0.0, 0.5, 2.0]) == [[0.0, -0.0], [0.5, -0.5], [2.0, -1.0]]
    with pytest.raises(H.UserError, match="positive strength"):
        H.take_away_scales([0.0, -1.0])
    assert H.strip_scales(2.0, 3, signed=False) == [0.0, 1.0, 2.0]
    dog = learned_text_direction(pipe, "a photo of a dog", "a photo", "dog")
    H.check_take_away(dog, None)
    with pytest.raises(H.UserError, match="pick a direction to add"):
        H.check_take_away(None, dog)
    with pytest.raises(H.UserError, match="the take-away is the direction itself"):
        H.check_take_away(dog, SteeringVector(dict(dog.directions), dict(dog.metadata)))


def test_api_take_away_matches_python_api(client, pipe, tmp_path, monkeypatch):
    """Add one direction and take away another: the Python API's [add, remove] recipe, recorded in the PNG."""
    from gradio_client import handle_file

    cat = learned_text_direction(pipe, "a photo of a cat", "a photo", "cat")
    dog = learned_text_direction(pipe, "a photo of a dog", "a photo", "dog")
    names = {}
    for vector in (cat, dog):
        picked, status = client.predict(handle_file(str(vector.save(tmp_path / f"{vector.name}.safetensors"))), True, api_name="/upload_direction")
        assert "Loaded" in status
        names[vector.name] = picked["value"]
    values = generate_args(names["cat"], scale=2.0, window_end=1.0, take_away=names["dog"])
    original, steered, png, status = client.predict(**values, api_name="/generate")
    assert "Steered with **cat** × 2" in status and "taking away **dog** (amount 1)" in status
    assert "replaces: alone" not in status  # a take-away given: nothing to suggest
    # without it, the note names the direction the prompt ("a photo of a dog") states against the edit (steer.take_away)
    *_, alone_status = client.predict(**{**values, "take_away": H.NONE_CHOICE}, api_name="/generate")
    said = H.md_text("'a photo of a dog' states 'of a dog', which 'cat' replaces: alone the edit mostly fights the prompt", 400)
    assert f"{said}. Pick **{H.md_text(names['dog'])}** under *Take away* (and *Fit*)" in alone_status
    *_, open_status = client.predict(**{**values, "take_away": H.NONE_CHOICE, "prompt": "a photo"}, api_name="/generate")
    assert "replaces: alone" not in open_status  # the prompt states neither
    # auto: what the prompt states against the edit (the same images as picking it), or nothing
    _, auto_steered, auto_png, auto_status = client.predict(**{**values, "take_away": AUTO_CHOICE}, api_name="/generate")
    assert "taking away **dog** (auto) (amount 1)" in auto_status and np.abs(native(auto_steered) - native(steered)).max() == 0
    assert read_recipe(auto_png)["steering"]["take_away"]["digest"] == dog.digest()
    _, none_steered, _, none_status = client.predict(**{**values, "take_away": AUTO_CHOICE, "prompt": "a photo"}, api_name="/generate")
    _, plain_steered, _, _ = client.predict(**{**values, "take_away": H.NONE_CHOICE, "prompt": "a photo"}, api_name="/generate")
    assert "nothing taken away (auto: the prompt states nothing against the edit)" in none_status
    assert np.abs(native(none_steered) - native(plain_steered)).max() == 0
    rec = cat.metadata["recommended"]
    steer = dict(steering_branch="cond", steering_mode="add", steering_normalize=False, steering_preserve_norm=rec["preserve_norm"],
                 steering_negative="replace")  # a take-away turns the prompt's word too (steer.word_swap)
    gens = [torch.Generator().manual_seed(7) for _ in range(2)]
    want = pipe(["a photo of a dog"] * 2, num_inference_steps=STEPS, guidance_scale=5.0, height=32, width=32, generator=gens,
                steering=[cat, dog], steering_scale=[[0.0, 0.0], [2.0, -1.0]], steering_window=(0.0, 1.0), **steer).images
    assert np.abs(native(original) - pixels(want[0])).max() <= 1 and np.abs(native(steered) - pixels(want[1])).max() <= 1
    _, alone = expected_pair(pipe, cat, 2.0, **steer)
    assert np.abs(native(steered) - alone).mean() > 0.5, "the take-away changed nothing"
    taken = read_recipe(png)["steering"]
    assert taken["negative"] == "replace" and taken["take_away"] == {"name": "dog", "digest": dog.digest(), "amount": 1.0}
    gallery, status = client.predict(**values, count=3, api_name="/strip")
    assert [item["caption"] for item in gallery] == ["+0", "+1", "+2"] and "taking away **dog**" in status
    # the fit sets the strength and window sliders to what the Python API's fit finds
    strength, start, end, status = client.predict(names["cat"], names["dog"], 5.0, True, api_name="/fit_take_away")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the fit may not converge
        fit = pipe.fit_take_away(cat, dog, guidance_scale=5.0)
    assert "Fitted: **cat**" in status and (start, end) == fit.window
    assert strength == pytest.approx(round(fit.strength / 0.05) * 0.05)
    assert client.predict(names["cat"], AUTO_CHOICE, 5.0, True, "", "", "a photo of a dog", api_name="/fit_take_away")[:3] == (strength, start, end)
    *_, status = client.predict(names["cat"], AUTO_CHOICE, 5.0, True, "", "", "a photo", api_name="/fit_take_away")
    assert "this prompt states nothing: nothing to fit" in status and "Traceback" not in status
    # with the Generate tab's negative prompt: fitted for generating with it (random weights fit alike either way: the
    # call is checked)
    from steer.pipelines.mixin import SteeringMixin

    real, asked = SteeringMixin.fit_take_away, []
    monkeypatch.setattr(SteeringMixin, "fit_take_away", lambda self, *a, **kw: asked.append(kw.get("negative_prompt")) or real(self, *a, **kw))
    *_, status = client.predict(names["cat"], names["dog"], 5.0, True, "", "a coat", api_name="/fit_take_away")
    assert "Fitted: **cat**" in status and asked == ["a coat"]
    monkeypatch.undo()
    *_, status = client.predict(names["cat"], H.NONE_CHOICE, 5.0, True, api_name="/fit_take_away")
    assert "pick a take-away first" in status
    # mistakes are one-line messages
    *_, status = client.predict(**generate_args(names["dog"], take_away=names["dog"]), api_name="/generate")
    assert "the take-away is the direction itself" in status
    *_, status = client.predict(**generate_args(H.NONE_CHOICE, take_away=names["dog"]), api_name="/generate")
    assert "pick a direction to add" in status
    *_, status = client.predict(**generate_args(names["dog"], take_away="constructed"), api_name="/generate")
    assert "reference level" in status and "Traceback" not in status

