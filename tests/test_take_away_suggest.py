"""Which direction to take away when a prompt states what the edit replaces ("a red sneaker" + to_blue: to_red), from
the prompts the directions record (`steer.take_away.suggested_take_aways`), where it is looked for
(`take_away_candidates`), and where users are told or it is used: `steer generate` (``--take-away auto``), `steer batch`
and, in tests/test_app*.py, the app."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steer.take_away import CANDIDATE_BYTES, said_elsewhere, suggested_take_aways
from steer.vectors import SteeringVector
from steer.wording import stated_phrases

CLASSES = ("t-shirt", "sneaker", "bag", "dress")


def learned_from(name: str, positive: list[str], negative: list[str], seed: int) -> SteeringVector:
    """A direction recording the prompts it was learned from (its tensor is arbitrary: only the words are read)."""
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({"layer": torch.randn(4, generator=g)},
                          {"name": name, "positive": {"prompts": positive}, "negative": {"prompts": negative}})


def colour(c: str, seed: int) -> SteeringVector:
    return learned_from(f"to_{c}", [f"a {c} {k}" for k in CLASSES], [f"a {k}" for k in CLASSES], seed)


def garment(k: str, seed: int) -> SteeringVector:
    return learned_from(f"to_{k}", [f"a {c} {k}" for c in ("red", "blue", "green")], [f"a {c} item" for c in ("red", "blue", "green")], seed)


@pytest.fixture(scope="module")
def catalog() -> dict[str, SteeringVector]:
    found = {f"to_{c}": colour(c, i) for i, c in enumerate(("red", "blue", "green"))}
    found.update({f"to_{k.replace(' ', '_')}": garment(k, 10 + i) for i, k in enumerate(("sneaker", "bag", "dress", "ankle boot"))})
    return found


def test_a_prompt_stating_what_the_edit_replaces_gets_the_direction_of_that_attribute(catalog):
    assert suggested_take_aways(catalog["to_blue"], "a red sneaker", catalog) == [("to_red", ["red"])]
    assert suggested_take_aways(catalog["to_bag"], "a red dress", catalog) == [("to_dress", ["dress"])]  # not to_red: another attribute
    assert suggested_take_aways(catalog["to_sneaker"], "a green ankle boot", catalog) == [("to_ankle_boot", ["ankle boot"])]
    assert suggested_take_aways(catalog["to_bag"], "three red dresses, studio light", catalog) == [("to_dress", ["dress"])]  # plurals
    assert suggested_take_aways(catalog["to_blue"], "a red and green bag", catalog) == [("to_red", ["red"]), ("to_green", ["green"])]


def test_the_hint_stays_one_short_line_for_a_huge_prompt(catalog):
    """The hint used to echo the whole prompt (16,000 characters on one line); it is cut as every message is."""
    from steer.take_away import take_away_hint

    prompt = "a red sneaker, " + "studio light, " * 1200
    found = suggested_take_aways(catalog["to_blue"], prompt, catalog)
    assert found == [("to_red", ["red"])]
    hint = take_away_hint(prompt, catalog["to_blue"], found)
    assert hint.startswith("'a red sneaker, studio light,") and len(hint) < 200 and "\n" not in hint
    assert hint.endswith("states 'red', which 'to_blue' replaces: alone the edit mostly fights the prompt")


def test_nothing_is_suggested_where_nothing_is_stated_against_the_edit(catalog):
    assert suggested_take_aways(catalog["to_blue"], "a sneaker", catalog) == []  # the attribute left open
    assert suggested_take_aways(catalog["to_blue"], "a blue sneaker", catalog) == []  # it states the edit itself
    assert suggested_take_aways(catalog["to_blue"], "a reddish sneaker", catalog) == []  # whole words only
    assert suggested_take_aways(catalog["to_bag"], "a red sneaker", {"to_bag": catalog["to_bag"]}) == []  # no candidate
    unprompted = SteeringVector({"layer": torch.ones(4)}, {"name": "from images"})
    assert suggested_take_aways(unprompted, "a red sneaker", catalog) == []  # learned otherwise: its attribute is unknown
    assert suggested_take_aways(catalog["to_blue"], "a red sneaker", {"img": unprompted}) == []
    slider = SteeringVector(catalog["to_blue"].directions, catalog["to_blue"].metadata, catalog["to_red"])
    assert suggested_take_aways(slider, "a red sneaker", catalog) == []  # a slider turns such prompts itself
    assert suggested_take_aways(catalog["to_blue"], "a red sneaker", {"slider": slider}) == []
    twin = SteeringVector(catalog["to_blue"].directions, catalog["to_red"].metadata)  # what steers is to_blue's own
    assert suggested_take_aways(catalog["to_blue"], "a red sneaker", {"twin": twin}) == []  # itself, whatever it records


def test_stated_phrases_are_each_positives_attribute_words_once():
    assert stated_phrases(["a red t-shirt", "a red bag"], ["a t-shirt", "a bag"]) == ["red"]
    assert stated_phrases(["a red ankle boot", "a blue ankle boot"], ["a red item", "a blue item"]) == ["ankle boot"]
    assert stated_phrases(["an old man", "an elderly woman"], ["a man", "a woman"]) == ["old", "elderly"]


def test_steer_generate_suggests_the_take_away_on_the_demo_model(tmp_path, capsys, one_thread):
    """On the demo model's bundled directions: to_blue on "a red sneaker" names to_red, and the suggested command line
    runs; an open prompt, a take-away already given, or a slider get no such note."""
    import warnings

    from steer.cli.main import main

    common = ["generate", "--steps", "2", "--seed", "3"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*common, "--direction", "to_blue", "--prompt", "a red sneaker", "--out", str(tmp_path / "a")]) == 0
    assert not [w for w in caught if "fit_take_away" in str(w.message)]  # the note below, not the Python call's hint too
    err = capsys.readouterr().err
    assert ("note: 'a red sneaker' states 'red', which 'toward blue' replaces: alone the edit mostly fights the prompt; add "
            "--take-away to_red (or auto) --fit to take it away as the edit is added") in err
    assert main([*common, "--direction", "to_blue", "--take-away", "to_red", "--prompt", "a red sneaker", "--out", str(tmp_path / "b")]) == 0
    assert "states 'red'" not in capsys.readouterr().err
    assert main([*common, "--direction", "to_bag", "--prompt", "a pair of red dresses", "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "states 'dress', which 'toward bag' replaces" in err and "--take-away to_dress (or auto) --fit" in err
    for args in (["--direction", "to_blue", "--prompt", "a sneaker"], ["--direction", "to_blue", "--prompt", "a red sneaker", "--scale", "-1"]):
        assert main([*common, *args, "--out", str(tmp_path / "d")]) == 0
        assert "note:" not in capsys.readouterr().err


def mine(tmp_path) -> Path:
    """A user's folder: to_blue and to_red as their own files (renamed), and a file that is no direction."""
    from steer.assets import bundled_directions

    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("to_blue", "to_red"):
        vector = SteeringVector.load(bundled_directions()[name])
        vector.metadata["name"] = f"my {name}"
        vector.save(folder / f"mine_{name}.safetensors")
    (folder / "notes.safetensors").write_bytes(b"not a direction")  # no candidate, no error
    with open(folder / "checkpoint.safetensors", "wb") as big:  # a model kept beside it: not read (sparse, no disk)
        big.truncate(CANDIDATE_BYTES + 1)
    return folder


def test_candidates_are_the_files_beside_the_direction_first_and_no_large_file_is_read(tmp_path):
    from steer.assets import bundled_directions
    from steer.take_away import take_away_candidates

    folder, read = mine(tmp_path), []
    found = take_away_candidates(folder / "mine_to_blue.safetensors", {"to_red": bundled_directions()["to_red"]},
                                 load=lambda f: read.append(f.name) or SteeringVector.load(f))
    assert list(found) == [str(folder / "mine_to_red.safetensors"), "to_red"]  # the direction itself left out
    assert sorted(read) == ["mine_to_red.safetensors", "notes.safetensors", "to_red.safetensors"]  # not the checkpoint
    assert list(take_away_candidates(None, {"to_red": bundled_directions()["to_red"]})) == ["to_red"]


def test_steer_generate_looks_in_the_directions_own_folder_too(tmp_path, capsys, one_thread):
    """Directions learned by the user sit side by side: the take-away is suggested by its path (before the bundled
    one of the same attribute)."""
    from steer.cli.main import main

    folder = mine(tmp_path)
    assert main(["generate", "--steps", "2", "--direction", str(folder / "mine_to_blue.safetensors"), "--prompt", "a red bag",
                 "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"states 'red', which 'my to_blue' replaces: alone the edit mostly fights the prompt; add --take-away {folder / 'mine_to_red.safetensors'} (or auto) --fit" in err


def test_the_suggested_take_away_turns_what_the_edit_alone_cannot_on_the_demo_model(one_thread):
    """The suggestion is worth taking: on the demo model, to_blue added to six "a red X" prompts leaves them red
    (measured 0 of 6 blue); with the suggested to_red taken away at the fitted strength and window, 6 of 6 are blue
    with the garment kept. to_bag on six dresses: 4 of 6 bags alone, 6 of 6 with to_dress taken away. Measured with
    the take-away removing only (``negative="remove"``, as before the word swap); with the swap (the default) the
    bags are the same and the blues paler: 3 of 6 read blue by the classifier (the others light blue, read white and
    cyan), every garment blue-dominant by its pixels (docs/steering.md "Session 41")."""
    import warnings

    from steer.assets import bundled_directions
    from steer.cli.loading import load_pipeline
    from steer.lab import data as D
    from steer.lab.classifier import load_classifier, predict

    pipe, clf = load_pipeline(None, "cpu"), load_classifier()
    pipe.set_progress_bar_config(disable=True)
    bundled = {name: SteeringVector.load(path) for name, path in bundled_directions().items()}

    def sample(prompts, **steer):
        gens = [torch.Generator().manual_seed(1000) for _ in prompts]
        return pipe(prompts, generator=gens, num_inference_steps=20, guidance_scale=5.0, output_type="np", **steer).images.transpose(0, 3, 1, 2)

    for target, source, prompts, edited, want in (
            ("to_blue", "to_red", [f"a red {k}" for k in ("t-shirt", "sneaker", "bag", "coat", "trouser", "dress")], 1, D.COLOUR_NAMES.index("blue")),
            ("to_bag", "to_dress", [f"a {c} dress" for c in ("red", "blue", "green", "white", "orange", "purple")], 0, D.CLASS_NAMES.index("bag"))):
        vector = bundled[target]
        assert [name for name, _ in suggested_take_aways(vector, prompts[0], bundled)] == [source]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit, swapped = (pipe.fit_take_away(vector, bundled[source], guidance_scale=5.0, negative=n) for n in ("remove", "replace"))
        ref = predict(clf, sample(prompts))
        alone = predict(clf, sample(prompts, steering=vector, steering_scale=1.0))
        taken = predict(clf, sample(prompts, steering=[vector, bundled[source]], **fit.options()))
        assert (alone[edited] == want).mean() <= 0.67  # measured 0/6 (blue), 4/6 (bag)
        assert (taken[edited] == want).mean() >= 0.83 and (taken[1 - edited] == ref[1 - edited]).mean() >= 0.83  # measured 6/6, 6/6
        images = sample(prompts, steering=[vector, bundled[source]], **swapped.options())
        replaced = predict(clf, images)
        assert (replaced[edited] == want).mean() >= (0.5 if edited else 0.83)  # measured 3/6 (pale blues), 6/6 (bag)
        assert (replaced[1 - edited] == ref[1 - edited]).mean() >= 0.83  # measured 6/6, 6/6
        if edited:  # the colour: every garment's lit pixels blue-dominant
            lit = images.max(1, keepdims=True) > 0.25
            mean = (images * lit).sum((2, 3)) / lit.sum((2, 3)).clip(1)
            assert (mean[:, 2] > mean[:, :2].max(1)).all(), mean


def test_steer_batch_notes_the_take_away_once_per_direction_and_prompt(tmp_path, one_thread):
    """A batch job adding to_bag to "a red dress" gets a note naming the job fields that take to_dress away; a job that
    already takes it away, or whose prompt states nothing against the edit, gets none."""
    from steer.assets import DEFAULT_MODEL
    from steer.cli.loading import load_pipeline
    from steer.jobs import run as batch

    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    job = {"prompt": "a red dress", "num_inference_steps": 2, "directions": [{"path": "to_bag"}]}
    told: list[str] = []
    batch.run([job, {**job, "seed": 1}, {**job, "take_away": "to_dress"}, {**job, "prompt": "a red item"}], pipe, tmp_path / "out",
              batch_size=2, model=str(DEFAULT_MODEL), progress=False, report=told.append)
    notes = [t for t in told if t.startswith("note:")]
    assert notes == ["note: line 1: 'a red dress' states 'dress', which 'toward bag' replaces: alone the edit mostly fights the "
                     'prompt; add "take_away": "to_dress" (or "auto"), "take_away_fit": true to the job']  # once for lines 1 and 2
    folder = mine(tmp_path)  # a job's own direction file: the files beside it first
    told.clear()
    batch.run([{"prompt": "a red bag", "num_inference_steps": 2, "directions": [{"path": str(folder / "mine_to_blue.safetensors")}]}],
              pipe, tmp_path / "out2", batch_size=2, model=str(DEFAULT_MODEL), progress=False, report=told.append)
    assert [t for t in told if t.startswith("note:")] == [
        f"note: line 1: 'a red bag' states 'red', which 'my to_blue' replaces: alone the edit mostly fights the prompt; add "
        f'"take_away": "{folder.resolve() / "mine_to_red.safetensors"}" (or "auto"), "take_away_fit": true to the job']


def test_take_away_auto_takes_away_what_the_prompt_states_or_nothing(tmp_path, capsys, one_thread):
    """``--take-away auto`` / a job's ``"take_away": "auto"``: the first suggested direction, recorded in the image's
    recipe as if named; a prompt that states nothing against the edit runs without one (and says so)."""
    from steer.assets import DEFAULT_MODEL, bundled_directions
    from steer.cli.loading import load_pipeline
    from steer.cli.main import main
    from steer.jobs import run as batch
    from steer.recipe import read_recipe

    red = SteeringVector.load(bundled_directions()["to_red"])
    common = ["generate", "--steps", "2", "--seed", "3", "--direction", "to_blue", "--take-away", "auto"]
    assert main([*common, "--prompt", "a red sneaker", "--out", str(tmp_path / "a")]) == 0
    assert "take-away: auto -> to_red" in capsys.readouterr().err
    taken = read_recipe(next((tmp_path / "a").glob("*.png")))["take_away"]
    assert taken["hash"] == red.digest() and taken["amount"] == 1.0
    assert main([*common, "--fit", "--prompt", "a sneaker", "--out", str(tmp_path / "b")]) == 0  # nothing to take away or fit
    err = capsys.readouterr().err
    assert "take-away: auto -> none ('a sneaker' states nothing 'toward blue' replaces)" in err and "fit:" not in err
    assert "take_away" not in read_recipe(next((tmp_path / "b").glob("*.png")))

    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    told: list[str] = []
    job = {"num_inference_steps": 2, "directions": [{"path": "to_bag"}], "take_away": "auto"}
    batch.run([{**job, "prompt": "a red dress"}, {**job, "prompt": "a red item"}], pipe, tmp_path / "c", batch_size=2,
              model=str(DEFAULT_MODEL), progress=False, report=told.append)
    recipes = {read_recipe(p)["prompt"]: read_recipe(p) for p in (tmp_path / "c").rglob("*.png")}
    assert recipes["a red dress"]["take_away"]["hash"] == SteeringVector.load(bundled_directions()["to_dress"]).digest()
    assert "take_away" not in recipes["a red item"]
    assert "note: line 2: take_away auto: 'a red item' states nothing 'toward bag' replaces: nothing taken away" in told


def test_a_python_call_says_what_to_take_away_as_the_command_line_does(tmp_path, one_thread):
    """`pipe("a red t-shirt", steering="to_blue")` warns once, naming to_red and the Python way to take it away (the CLI,
    batch and app say it too); rows that add nothing, prompts that state nothing against the edit or the edit itself,
    and subtracting stay quiet. A direction given by path looks beside its file first, as `steer generate` does."""
    import warnings

    from steer.cli.loading import load_pipeline

    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)

    def told(prompt, steering="to_blue", scale=1.0) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe(prompt, steering=steering, steering_scale=scale, num_inference_steps=1, output_type="latent")
        return [str(w.message) for w in caught if "take it away" in str(w.message)]

    said = told("a red t-shirt")
    assert said == ["'a red t-shirt' states 'red', which 'toward blue' replaces: alone the edit mostly fights the prompt; take "
                    "it away as the edit is added: fit = pipe.fit_take_away(direction, 'to_red'), then pipe(..., steering="
                    "[direction, 'to_red'], **fit.options())"]
    assert told(["a sneaker", "a red dress"], "to_bag", [0.0, 1.0])[0].startswith("'a red dress' states 'dress', which 'toward bag'")
    assert told(["a red dress", "a red item"], "to_bag", [0.0, 1.0]) == []  # the dress row is not steered
    assert told("a t-shirt") == told("a blue t-shirt") == told("a red t-shirt", scale=-1.0) == []
    with said_elsewhere():  # the CLI and the app say it in their own words
        assert told("a red t-shirt") == []
    folder = mine(tmp_path)
    assert f"pipe.fit_take_away(direction, {str(folder / 'mine_to_red.safetensors')!r})" in told(
        "a red bag", str(folder / "mine_to_blue.safetensors"))[0]


def test_fits_take_directions_by_bundled_name_as_calls_do(one_thread):
    """`pipe.fit_take_away("to_blue", "to_red")` and `pipe.fit_edit("to_blue")` read the bundled files as `steering=`
    does (they raised AttributeError on the string); a name that is no direction is one line with a suggestion."""
    from steer.cli.loading import load_pipeline

    pipe = load_pipeline(None, "cpu", progress=False)
    pipe.set_progress_bar_config(disable=True)
    fit = pipe.fit_take_away("to_blue", "to_red", num_samples=1, num_inference_steps=2, grid=[1.0], windows=[(0, 1)])
    assert fit.prompts == [("a red t-shirt", "a blue t-shirt")] and fit.window == (0.0, 1.0)
    edit = pipe.fit_edit("to_blue", num_samples=1, num_inference_steps=2, grid=[1.0])
    assert edit.prompts == [("a t-shirt", "a blue t-shirt")] and edit.scale == 1.0
    assert pipe.load_direction("to_blue").digest() == SteeringVector.load(bundled_names()["to_blue"]).digest()
    with pytest.raises(ValueError, match="did you mean 'to_blue'"):
        pipe.fit_take_away("to_blu", "to_red")
    with pytest.raises(TypeError, match="expected one direction"):
        pipe.fit_edit(["to_blue"])


def bundled_names():
    from steer.assets import bundled_directions

    return bundled_directions()
