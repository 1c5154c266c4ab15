"""The calibration tells a prompt recipe that edits from one that barely does, on the demo model, and says how to fix it.

"a blue X" against the same prompts with the colour left open ("a X") edits; against other colours ("a red X") the
direction edits far less reliably (docs/steering.md: 0.94 vs 0.12 blue at 1.0 on 16 open prompts over the first half
of the run; with the window the calibration chooses, here the whole run, half of these six), and its calibration
distance (0.86 vs 0.17) is what tells them apart without a classifier.
"""

import warnings

import pytest
import torch

from steer.calibrate import POOR_DISTANCE, fit_advice
from steer.cli.loading import load_pipeline
from steer.cli.main import main
from steer.lab import data as D
from steer.lab.classifier import load_classifier, predict

BLUE = D.COLOUR_NAMES.index("blue")
POSITIVE = ["a blue t-shirt", "a blue sneaker", "a blue bag", "a blue coat"]
LEFT_OPEN = ["a t-shirt", "a sneaker", "a bag", "a coat"]
OTHER_COLOURS = ["a red t-shirt", "a green sneaker", "a yellow bag", "a white coat"]
OPEN_PROMPTS = ["a t-shirt", "a trouser", "a pullover", "a dress", "a sandal", "a bag"]


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return load_pipeline(None, "cpu"), load_classifier()


def learn(pipe, negative):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        v = pipe.learn_direction(POSITIVE, negative, progress=False)  # the defaults, as the README learns
    return v, [str(w.message) for w in caught if str(w.message).startswith("calibration:")]


def blue_share(pipe, clf, v) -> float:
    gens = [torch.Generator().manual_seed(1000) for _ in OPEN_PROMPTS]
    images = pipe(OPEN_PROMPTS, generator=gens, num_inference_steps=20, guidance_scale=5.0, output_type="np", steering=v, steering_scale=1.0).images
    _, colour = predict(clf, images.transpose(0, 3, 1, 2))
    return float((colour == BLUE).mean())


def test_the_left_open_recipe_edits_silently_and_the_other_colours_one_is_flagged(demo):
    pipe, clf = demo
    good, good_warnings = learn(pipe, LEFT_OPEN)
    weak, weak_warnings = learn(pipe, OTHER_COLOURS)
    assert good_warnings == [] and good.metadata["calibration"]["distance"] < POOR_DISTANCE
    assert weak.metadata["calibration"]["distance"] > POOR_DISTANCE
    assert len(weak_warnings) == 1 and "left open" in weak_warnings[0] and "\n" not in weak_warnings[0]
    assert fit_advice(weak.metadata["calibration"]) == weak_warnings[0]
    # the flag is about the edit: the flagged direction turns fewer of the items blue, the other nearly all (measured:
    # 6 of 6 and 4 of 6 with the full edit where the colour comes closest, session 39; 3 of 6 with the margin's before)
    good_share, weak_share = blue_share(pipe, clf, good), blue_share(pipe, clf, weak)
    assert good_share >= 0.8 and weak_share <= 0.67 and weak_share < good_share


def test_cli_learn_prints_the_advice_as_one_warning_line(tmp_path, capsys):
    out = tmp_path / "weak.safetensors"
    assert main(["learn", "--positive", "a blue item", "--negative", "a red item", "--steps", "20", "--guidance", "5", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert out.is_file() and len(lines) == 1 and lines[0].startswith("warning: calibration:") and "left open" in lines[0]


@pytest.mark.parametrize(
    ("calibration", "flagged"),
    [
        ({"converged": True, "distance": 0.2}, False),
        ({"converged": True, "distance": 0.8}, True),
        ({"converged": False, "distance": 0.95}, False),  # not converged: calibrate's own warning covers it
        ({"converged": True, "distance": "0.9"}, False),  # a hostile file's metadata: no advice, no crash
        ({"converged": True, "distance": float("nan")}, False),
        (None, False),
        (["not", "a", "mapping"], False),
    ],
)
def test_fit_advice_reads_only_a_well_formed_poor_calibration(calibration, flagged):
    assert (fit_advice(calibration) is not None) == flagged
