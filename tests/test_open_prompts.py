"""The open prompts the calibration steers (`steer.calibrate.open_prompts`): the positives with their attribute left
open, when the attribute is worded alike in every positive and when it is not ("a red t-shirt", "an orange bag")."""

import numpy as np
import pytest
import torch

from steer.calibrate import POOR_DISTANCE, calibrated_for
from steer.cli.loading import load_pipeline
from steer.cli.main import main
from steer.lab import data as D
from steer.lab.classifier import load_classifier, predict
from steer.vectors import SteeringVector
from steer.wording import open_prompts

C, K = D.COLOUR_NAMES, D.CLASS_NAMES


def test_the_benchmark_and_readme_prompt_sets_open_as_before():
    """One word shared by every positive (the benchmark's and the README's sets): it is what is dropped, paired or not."""
    for colour in C:
        assert open_prompts([f"a {colour} {k}" for k in K], [f"a {k}" for k in K]) == [f"a {k}" for k in K]
    for garment in K:
        assert open_prompts([f"a {c} {garment}" for c in C], [f"a {c} item" for c in C]) == [f"a {c}" for c in C]
    # contrasted with another value of the attribute, paired or one negative for all
    assert open_prompts(["a blue t-shirt", "a blue bag"], ["a red t-shirt", "a red bag"]) == ["a t-shirt", "a bag"]
    assert open_prompts(["a blue t-shirt", "a blue bag"], ["a red coat"]) == ["a t-shirt", "a bag"]
    # the calibration's cycled sets (num_samples longer or shorter than the prompt lists) open alike
    pos, neg = ["a blue t-shirt", "a blue bag", "a blue coat"], ["a t-shirt", "a bag", "a coat"]
    assert open_prompts([pos[i % 3] for i in range(7)], [neg[i % 3] for i in range(7)]) == [neg[i % 3] for i in range(7)]


def test_an_attribute_worded_differently_in_each_positive_is_left_open_pair_by_pair():
    """No word is in every positive ("a" / "an"; "elderly" / "old"): each positive drops where it differs from its own
    negative. Before, nothing was dropped, so the calibration steered the positives toward themselves."""
    assert open_prompts(["a red t-shirt", "an orange bag"], ["a t-shirt", "a bag"]) == ["a t-shirt", "a bag"]
    assert open_prompts(["a photo of an elderly man", "a photo of an old woman"], ["a photo of a man", "a photo of a woman"]) == [
        "a photo of a man", "a photo of a woman"]
    assert open_prompts(["an old man", "an elderly woman"], ["a young man", "a young woman"]) == ["a man", "a woman"]
    assert open_prompts(["a photo of a dog"], ["a photo"]) == ["a photo"]


def test_positives_that_add_words_to_their_negatives_are_opened_to_them_whatever_the_counts():
    """Fewer negatives than positives, the attribute worded three ways ("an" shared by every positive and no negative):
    before, only "an" was dropped and the calibration steered "elderly man" toward the elderly samples."""
    assert open_prompts(["an elderly man", "an old woman", "an aged man"], ["a man", "a woman"]) == [
        "a man", "a woman", "a man"]
    assert open_prompts(["a portrait of an elderly man", "an old woman smiling", "an aged man"],
                        ["a portrait of a man", "a woman smiling", "a man", "a dog"]) == [
        "a portrait of a man", "a woman smiling", "a man"]
    # one word shared by every positive and negatives that are not a part of them: the shared word is dropped (and
    # "an" before what is left made "a")
    assert open_prompts(["a blue t-shirt", "a blue bag", "a blue coat"], ["a coat"]) == ["a t-shirt", "a bag", "a coat"]
    assert open_prompts(["an elderly man", "an elderly woman"], ["a child", "a dog", "a cat"]) == ["a man", "a woman"]


def test_a_positive_with_nothing_to_leave_open_is_one_line_before_any_sampling(tiny_pipe):
    with pytest.raises(ValueError, match="^the positive prompt 'a bag' has no words its negative prompts lack"):
        open_prompts(["a red sneaker", "a bag"], ["a sneaker", "a bag"])
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="^the positive prompt 'a bag' has no words"):
            tiny_pipe.learn_direction(["a red sneaker", "a bag"], ["a sneaker", "a bag"], progress=False)
    finally:
        handle.remove()
    assert calls == []
    # without calibration there is no open prompt to make: the direction is learned
    v = tiny_pipe.learn_direction(["a red sneaker", "a bag"], ["a sneaker", "a bag"], calibrate=False, progress=False)
    assert v.metadata.get("calibration") is None


def test_a_warm_direction_worded_two_ways_calibrates_and_edits_the_demo_model(tmp_path, capsys):
    """"Toward warm colours" from "a red ..." and "an orange ..." prompts, learned on the command line: the calibration
    converges (before, it steered the positives toward their own samples, warned of absurd distances and fell back to
    an uncalibrated strength 2.2x the calibrated one), says what it steered, and scale 1.0 turns open prompts
    red/orange, garment kept (measured 6/6, 6/6)."""
    torch.set_num_threads(1)
    out = tmp_path / "warm.safetensors"
    args = ["learn", "--positive", "a red t-shirt", "an orange bag", "a red sneaker", "an orange coat",
            "--negative", "a t-shirt", "a bag", "a sneaker", "a coat", "--steps", "20", "--guidance", "5", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "warning" not in printed.err + printed.out  # no calibration advice
    assert ("calibrated on: 'a t-shirt', 'a bag', 'a sneaker', 'a coat' (the positives with the attribute left open), for guidance 5, "
            "20 steps, sampler ddim, no negative prompt") in printed.out
    warm = SteeringVector.load(out)
    calibration = warm.metadata["calibration"]
    assert calibration["open_prompts"] == ["a t-shirt", "a bag", "a sneaker", "a coat"]
    assert calibration["converged"] and calibration["distance"] < POOR_DISTANCE  # measured 0.22

    pipe, clf = load_pipeline(None, "cpu"), load_classifier()
    prompts = ["a t-shirt", "a sneaker", "a bag", "a coat", "a trouser", "a dress"]

    def judged(**steering):
        gens = [torch.Generator().manual_seed(1000) for _ in prompts]
        images = pipe(prompts, generator=gens, num_inference_steps=20, guidance_scale=5.0, output_type="np", **steering).images
        return predict(clf, images.transpose(0, 3, 1, 2))

    warm_colours = [C.index("red"), C.index("orange")]
    ref_cls, ref_col = judged()
    cls, col = judged(steering=warm, steering_scale=1.0)
    assert np.isin(ref_col, warm_colours).mean() <= 0.34
    assert np.isin(col, warm_colours).mean() >= 0.66 and (cls == ref_cls).mean() >= 0.8


def test_what_a_direction_was_calibrated_for_is_said_in_words():
    """Scale 1.0 is the full edit for how the calibration sampled: `steer learn` prints it, the app's summary shows it."""
    from steer.app import helpers as H
    from steer.vectors import SteeringVector

    sampling = {"num_inference_steps": 20, "guidance_scale": 7.5, "scheduler": "DDIMScheduler", "sampler": "ddim"}
    meta = {"sampling": sampling, "calibration": {"strength": 0.3}}
    assert calibrated_for(meta) == "guidance 7.5, 20 steps, sampler ddim, no negative prompt"
    with_negative = {**meta, "sampling": {**sampling, "negative_prompt": "lowres, *blurry*"}}
    assert calibrated_for(with_negative) == "guidance 7.5, 20 steps, sampler ddim, negative prompt 'lowres, *blurry*'"
    for uncalibrated in ({"sampling": sampling}, {"calibration": {"strength": 0.3}}, {"sampling": "junk", "calibration": {}}):
        assert calibrated_for(uncalibrated) is None
    summary = H.direction_summary(SteeringVector({"x": torch.ones(4)}, with_negative))
    assert "strength 1 is the full edit calibrated for guidance 7.5, 20 steps, sampler ddim, negative prompt 'lowres, \\*blurry\\*'" in summary
    assert "calibrated for" not in H.direction_summary(SteeringVector({"x": torch.ones(4)}, {"sampling": sampling}))
