"""A slider on a prompt that states its other side ("a red t-shirt" slid toward blue) is flipped: the side added at its
fitted strength and window, the other side taken away (`steer.sliders`); open prompts and rows that state the side
itself are drawn as before, bit for bit."""

import numpy as np
import pytest
import torch

from steer import SteeringVector
from steer.sliders import flip_of, split_sides, without_flips
from steer.wording import singular, states

STEPS = 6
RED, BLUE = ["a red sneaker", "a red bag"], ["a blue sneaker", "a blue bag"]
QUICK = dict(num_inference_steps=4, calibration_samples=2, progress=False)


@pytest.fixture(scope="module")
def slider(tiny_pipe):
    torch.set_num_threads(1)
    with pytest.warns(UserWarning):  # random weights render no attribute: the calibration says so
        return tiny_pipe.learn_direction(RED, BLUE, two_sided=True, **QUICK)


def draw(pipe, prompts, **kw):
    prompts = [prompts] if isinstance(prompts, str) else prompts
    return pipe(prompts, num_inference_steps=STEPS, output_type="np",
                generator=[torch.Generator().manual_seed(i) for i in range(len(prompts))], **kw).images


def test_phrases_are_matched_as_words_in_order():
    assert states("a Red t-shirt, studio light", ["red"])
    assert not states("a reddish t-shirt", ["red"]) and not states("a t-shirt", ["red"])
    assert states("an ankle boot", ["ankle boot"]) and not states("a boot by the ankle", ["ankle boot"])
    assert states("an old man", ["elderly", "old"]) and not states("a man", ["elderly", "old"])


def test_a_plural_states_its_singular_phrase_and_back():
    """Users write plurals: "red trousers" states the phrase "trouser" learned from "a red trouser", and "dresses" the
    phrase "dress" (whose own final "s" is no plural)."""
    assert states("a pair of red trousers", ["trouser"]) and states("two blue sneakers", ["sneaker"])
    assert states("three red dresses", ["dress"]) and states("a red dress", ["dresses"])
    assert states("ankle boots in a row", ["ankle boot"]) and not states("a red dressing gown", ["dress"])
    assert [singular(w) for w in ("glasses", "watches", "ponies", "boots", "bus", "iris", "kiss", "its")] == [
        "glass", "watch", "pony", "boot", "bus", "iris", "kiss", "its"]
    # irregular plurals, as SD prompts use them: an age slider learned on "an old man" turns "two old men"
    assert states("two old men on a bench", ["old man"]) and states("a group of young children", ["young child"])
    assert states("three grey wolves", ["wolf"]) and states("a woman", ["women"]) and not states("a man", ["woman"])
    assert [singular(w) for w in ("men", "people", "knives", "gloves", "shoes")] == ["man", "person", "knife", "glove", "shoe"]


def test_learning_a_slider_records_each_sides_phrases_and_fitted_flip(slider):
    for side, phrase in ((slider, "red"), (slider.opposite, "blue")):
        flip = side.metadata["flip"]
        assert flip["words"] == [phrase]
        assert flip["strength"] > 0 and 0 <= flip["window"][0] < flip["window"][1] <= 1
        assert flip["unet_rows"] > 0 and flip_of(side)["window"] == tuple(flip["window"])
        assert flip["negative"] == flip_of(side)["negative"] == "replace"
    edited = SteeringVector(slider.directions, {**slider.metadata, "flip": {**slider.metadata["flip"], "negative": "subtract"}})
    with pytest.raises(ValueError, match="its metadata 'flip' negative must be one of"):
        flip_of(edited)


def test_a_prompt_stating_the_other_side_is_flipped_as_the_take_away_recipe(tiny_pipe, slider, one_thread):
    """-1 on "a red sneaker": the opposite (blue) added at its fitted strength over its fitted window and the red side's
    excess removed at min(strength, 1): what `fit_take_away`'s recipe calls explicitly."""
    blue = slider.opposite.metadata["flip"]
    assert blue["negative"] == "replace"  # fitted, and flipped, with the word swap (`steer.word_swap`)
    window = tuple(slider.metadata["recommended"]["window"])
    recipe = dict(steering=[slider.one_sided, slider.opposite], steering_scale=[-min(blue["strength"], 1.0), blue["strength"]],
                  steering_window=[window, tuple(blue["window"])])
    explicit = draw(tiny_pipe, "a red sneaker", steering_negative="replace", **recipe)
    flipped = draw(tiny_pipe, "a red sneaker", steering=slider, steering_scale=-1.0)
    assert np.array_equal(flipped, explicit)
    # a file from before the word swap records no negative: its flips remove only, as they did
    def before(side):
        return SteeringVector(side.directions, {**side.metadata, "flip": {k: v for k, v in side.metadata["flip"].items() if k != "negative"}})
    old = SteeringVector(slider.directions, before(slider).metadata, before(slider.opposite))
    removed = draw(tiny_pipe, "a red sneaker", steering_negative="remove", **recipe)
    assert np.array_equal(draw(tiny_pipe, "a red sneaker", steering=old, steering_scale=-1.0), removed)
    assert not np.array_equal(removed, explicit)
    assert not np.array_equal(flipped, draw(tiny_pipe, "a red sneaker", steering=without_flips(slider), steering_scale=-1.0))
    # +1 on "a blue bag" flips toward red the same way round, at half strength half of it
    red = slider.metadata["flip"]
    half = draw(tiny_pipe, "a blue bag", steering=[slider.opposite, slider.one_sided],
                steering_scale=[-min(0.5 * red["strength"], 1.0), 0.5 * red["strength"]], steering_negative="replace",
                steering_window=[window, tuple(red["window"])])
    assert np.array_equal(draw(tiny_pipe, "a blue bag", steering=slider, steering_scale=0.5), half)


@pytest.mark.parametrize(("prompt", "scale"), [("a sneaker", -1.0), ("a sneaker", 1.0), ("a red and blue bag", -1.0),
                                               ("a blue-ish sneaker", -1.0)])
def test_open_prompts_and_prompts_stating_both_sides_are_drawn_as_before(tiny_pipe, slider, prompt, scale, one_thread):
    assert np.array_equal(draw(tiny_pipe, prompt, steering=slider, steering_scale=scale),
                          draw(tiny_pipe, prompt, steering=without_flips(slider), steering_scale=scale))


@pytest.mark.parametrize(("prompt", "scale"), [("a blue sneaker", -1.0), ("a red sneaker", 1.0), ("A RED bag.", 0.5)])
def test_a_prompt_slid_toward_the_side_it_states_is_held(tiny_pipe, slider, prompt, scale, one_thread):
    """Its image is that side's full edit already (adding the side again turned red garments brown on the demo model)."""
    assert np.array_equal(draw(tiny_pipe, prompt, steering=slider, steering_scale=scale), draw(tiny_pipe, prompt))
    assert not np.array_equal(draw(tiny_pipe, prompt, steering=without_flips(slider), steering_scale=scale), draw(tiny_pipe, prompt))


def test_one_batch_flips_only_the_rows_whose_prompt_states_the_other_side(tiny_pipe, slider, one_thread):
    prompts = ["a red sneaker", "a sneaker", "a blue bag"]
    batch = draw(tiny_pipe, prompts, steering=slider, steering_scale=[-1.0, -1.0, 1.0])
    for i, (prompt, scale) in enumerate(zip(prompts, [-1.0, -1.0, 1.0], strict=True)):
        alone = tiny_pipe(prompt, num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(i),
                          steering=slider, steering_scale=scale).images[0]
        assert np.allclose(batch[i], alone, atol=1e-5), prompt  # a batched row equals its own call up to rounding
    # num_images_per_prompt repeats each prompt's rows: both rows of "a red sneaker" flip
    two = tiny_pipe(["a red sneaker"], num_images_per_prompt=2, num_inference_steps=STEPS, output_type="np",
                    generator=[torch.Generator().manual_seed(0) for _ in range(2)], steering=slider, steering_scale=-1.0).images
    assert np.allclose(two[1], draw(tiny_pipe, "a red sneaker", steering=slider, steering_scale=-1.0)[0], atol=1e-5)


def test_what_keeps_the_plain_sides(tiny_pipe, slider, one_thread):
    plain = without_flips(slider)
    # prompt embeddings: no words to read
    embeds, _ = tiny_pipe.encode_prompt("a red sneaker", "cpu", 1, False)
    negative = tiny_pipe.encode_prompt("", "cpu", 1, False)[0]
    by_embeds = {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
    assert np.array_equal(tiny_pipe(num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0),
                                    steering=slider, steering_scale=-1.0, **by_embeds).images,
                          tiny_pipe(num_inference_steps=STEPS, output_type="np", generator=torch.Generator().manual_seed(0),
                                    steering=plain, steering_scale=-1.0, **by_embeds).images)
    # steering_negative="remove" asked for: the slider removes along itself, as before
    removing = dict(steering_scale=-1.0, steering_negative="remove")
    assert np.array_equal(draw(tiny_pipe, "a red sneaker", steering=slider, **removing),
                          draw(tiny_pipe, "a red sneaker", steering=plain, **removing))
    # a one-sided direction subtracted in the same call: subtracting and removing cannot share it, so plain, said once
    from steer.testing import random_vector

    other = random_vector(tiny_pipe, ["encoder_hidden_states"], seed=3, scale=0.05,
                          recommended=dict(slider.metadata["recommended"]))  # applied alike: no disagreement to warn about
    with pytest.warns(UserWarning, match="applied without the flip"):
        mixed = draw(tiny_pipe, "a red sneaker", steering=[slider, other], steering_scale=[-1.0, -0.5])
    assert np.array_equal(mixed, draw(tiny_pipe, "a red sneaker", steering=[plain, other], steering_scale=[-1.0, -0.5]))


def test_a_call_window_holds_for_the_sides_and_the_flip_keeps_its_own(slider):
    scales = torch.tensor([[-1.0], [-1.0]])
    vectors, columns, given = split_sides([slider], scales, {"steering_window": (0.1, 0.4)}, ["a red bag", "a bag"])
    blue = slider.opposite.metadata["flip"]
    assert given["steering_window"] == ((0.1, 0.4), (0.1, 0.4), tuple(blue["window"]))
    assert given["steering_negative"] == "replace"
    np.testing.assert_allclose(columns.numpy(), [[-min(blue["strength"], 1.0), 0.0, blue["strength"]], [0.0, 1.0, 0.0]], rtol=1e-6)
    assert [v.name for v in vectors][2] == slider.opposite.name
    # per-vector windows given: the slider's for its sides, the flip's own for the flip column
    _, _, given = split_sides([slider], scales, {"steering_window": [(0.2, 0.6)]}, ["a red bag", "a bag"])
    assert given["steering_window"] == ((0.2, 0.6), (0.2, 0.6), tuple(blue["window"]))


def test_an_edited_flip_record_is_one_line(tiny_pipe, slider):
    odd = SteeringVector(slider.directions, {**slider.metadata, "flip": {"words": "red", "strength": 1.0, "window": [0, 1]}},
                         slider.opposite)
    with pytest.raises(ValueError, match="^direction .*: its metadata 'flip'"):
        draw(tiny_pipe, "a blue bag", steering=odd, steering_scale=1.0)
    bad = SteeringVector(slider.directions, {**slider.metadata, "flip": {"words": ["red"], "strength": -2, "window": [0, 1]}},
                         slider.opposite)
    with pytest.raises(ValueError, match="positive finite strength"):
        draw(tiny_pipe, "a blue bag", steering=bad, steering_scale=1.0)


@pytest.mark.filterwarnings("ignore:calibration")
def test_flip_stated_false_records_no_flip(tiny_pipe, one_thread):
    v = tiny_pipe.learn_direction(RED, BLUE, two_sided=True, flip_stated=False, **QUICK)
    assert "flip" not in v.metadata and "flip" not in v.opposite.metadata


def test_a_compiled_denoiser_flips_as_the_eager_one(slider, one_thread):
    """The flip is a take-away (`steering_negative="remove"`) with one window per column: a compiled denoiser steers
    its text tokens before the graph (the README's compiled take-away) and draws what the eager hooks draw."""
    from steer.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    eager = {s: draw(pipe, ["a red sneaker", "a blue bag"], steering=slider, steering_scale=s) for s in (-1.0, 1.0)}
    pipe.compile_unet(backend="eager")
    try:
        for s in (-1.0, 1.0, -1.0):
            np.testing.assert_array_equal(draw(pipe, ["a red sneaker", "a blue bag"], steering=slider, steering_scale=s), eager[s])
    finally:
        torch._dynamo.reset()


@pytest.mark.filterwarnings("ignore:calibration")
def test_a_fit_that_fails_leaves_the_slider_learned_without_that_flip(tiny_pipe, monkeypatch, one_thread):
    import steer.learn

    def failing(pipe, toward, away, **kw):
        raise ValueError("'a red sneaker' has no words its negative prompts lack")

    monkeypatch.setattr(steer.learn, "fit_take_away", failing)
    with pytest.warns(UserWarning, match="will not flip prompts that state the other side: its fit failed"):
        v = tiny_pipe.learn_direction(RED, BLUE, two_sided=True, **QUICK)
    assert v.opposite is not None and "flip" not in v.metadata and "flip" not in v.opposite.metadata


def test_the_bundled_red_blue_slider_turns_open_and_stated_prompts_on_the_demo_model(one_thread):
    """Shipped by `bench/ship_sliders.py` (assets/directions/sliders.md): -1 blue and +1 red on open prompts, and a
    prompt that states the other end turned (measured there 1.00 / 1.00 and 0.88 / 1.00 success / kept)."""
    from steer.cli.loading import load_pipeline
    from steer.lab import data as D
    from steer.lab.classifier import load_classifier, predict

    C = D.COLOUR_NAMES
    pipe, clf = load_pipeline(None, "cpu"), load_classifier()
    pipe.set_progress_bar_config(disable=True)

    def colours(prompts, scale):
        images = pipe(prompts, generator=[torch.Generator().manual_seed(200 + i) for i in range(len(prompts))], num_inference_steps=20,
                      guidance_scale=5.0, output_type="np", steering="red_blue_slider", steering_scale=scale).images
        return predict(clf, images.transpose(0, 3, 1, 2))[1]

    for prompts, scale, colour in ((["a t-shirt", "a sneaker", "a bag", "a dress"], -1.0, "blue"),
                                   (["a red t-shirt", "a red sneaker", "a red bag", "a red dress"], -1.0, "blue"),
                                   (["a blue t-shirt", "a blue sneaker", "a blue bag", "a blue dress"], 1.0, "red")):
        col = colours(prompts, scale)
        assert (col == C.index(colour)).mean() >= 0.75, (prompts[0], [C[c] for c in col])


def test_the_command_line_says_when_a_slider_turns_or_holds_the_prompt(tmp_path, capsys, one_thread):
    from steer.cli.main import main

    common = ["generate", "--direction", "red_blue_slider", "--steps", "2", "--seed", "3"]
    assert main([*common, "--prompt", "a red t-shirt", "--sweep", "-1,1,3", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert ("note: 'a red t-shirt': at -1 the slider turns it toward 'blue', taking its 'red' away; at +1 it is "
            "slid toward the end it states already: left as the prompt draws it") in err
    assert main([*common, "--prompt", "a t-shirt", "--scale", "-1", "--out", str(tmp_path / "b")]) == 0
    assert "note:" not in capsys.readouterr().err  # an open prompt: the slider only adds a side
    # with a one-sided direction subtracted too, the pipeline's own advice is the only word: a one-line warning (it was
    # a two-line Python warning naming steer's source file)
    assert main([*common[:3], "to_green", *common[3:], "--prompt", "a red t-shirt", "--scale", "-1", "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "warning: a slider on a prompt that states its other side is flipped" in err and "UserWarning" not in err


def test_the_scale_limit_holds_the_calls_own_scale_not_the_flips_product(tiny_pipe, slider):
    """A flip multiplies ``|scale|`` by its fitted strength: -9,000 on "a red sneaker" was refused as "steering_scale
    10062 is out of range", a number the user never gave, while "a sneaker" at -10,000 ran."""
    from steer.validation import MAX_SCALE

    strong = slider.opposite.metadata["flip"]
    opposite = SteeringVector(slider.opposite.directions, {**slider.opposite.metadata, "flip": {**strong, "strength": 1.5}})
    boosted = SteeringVector(slider.directions, slider.metadata, opposite)
    assert draw(tiny_pipe, "a red sneaker", steering=boosted, steering_scale=-MAX_SCALE).shape[0] == 1
    with pytest.raises(ValueError, match=f"steering_scale {MAX_SCALE * 1.01:g} is out of range"):
        draw(tiny_pipe, "a red sneaker", steering=boosted, steering_scale=-MAX_SCALE * 1.01)
