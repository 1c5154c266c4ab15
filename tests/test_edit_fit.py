"""`pipe.fit_edit`: the scale at which a direction edits given images as far as its own prompts do (tiny random SD
pipeline, CPU): its cost as counted, batch-size independent, the CLI's ``--fit`` with ``--image``, one-line refusals."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from steer.cli.main import main
from steer.denoisers import CONTEXT_SITE
from steer.edit_fit import paired_prompts
from steer.recipe import read_recipe
from steer.testing import assert_one_line_error, random_vector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
PROMPTS = {"positive": {"prompts": ["a blue bag", "a blue dress", "a blue coat"]}, "negative": {"prompts": ["a coat", "a bag", "a dress"]}}


@pytest.fixture(scope="module")
def direction(tiny_pipe):
    return random_vector(tiny_pipe, [CONTEXT_SITE], scale=2.0, **PROMPTS)


@pytest.fixture(scope="module")
def learned(tiny_pipe):
    """A text direction learned on the tiny pipeline: its random weights make its calibrated push large, so the
    grid that brackets the closest edit is small."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tiny_pipe.learn_direction(PROMPTS["positive"]["prompts"], PROMPTS["negative"]["prompts"], num_inference_steps=2,
                                         calibration_samples=2, readers="all", progress=False)


GRID = (0.01, 0.03, 0.1, 0.3)


def test_prompts_pair_up_by_their_words_whatever_their_order(direction):
    assert paired_prompts(direction, 4) == [("a coat", "a blue coat"), ("a bag", "a blue bag"), ("a dress", "a blue dress"),
                                            ("a coat", "a blue coat")]


def test_the_fit_costs_what_it_says_is_floored_and_does_not_depend_on_the_batch_size(tiny_pipe, learned):
    rows = [0]
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda _m, a: rows.__setitem__(0, rows[0] + a[0].shape[0]))
    kw = dict(strength=0.5, num_samples=3, grid=GRID, num_inference_steps=4)
    try:
        whole = tiny_pipe.fit_edit(learned, batch_size=None, **kw)
        counted = rows[0]
        split = tiny_pipe.fit_edit(learned, batch_size=2, **kw)
        raw = tiny_pipe.fit_edit(learned, floor=None, **kw)
    finally:
        handle.remove()
    # 3 images from noise (4 steps) + target, unsteered and 4 grid edits of int(0.5 * 4) = 2 steps, CFG: 2 rows each
    assert whole.unet_rows == counted == (4 + 6 * 2) * 3 * 2
    assert whole.strength == 0.5 and len(whole.distances) == 4 and whole.prompts[0] == ("a coat", "a blue coat")
    # the edits come closest inside the grid (the tiny model's calibrated push overshoots), and the fit says 1.0
    assert whole.converged and GRID[0] < whole.closest < GRID[-1] and whole.distance < 1.0
    assert whole.scale == 1.0 and raw.scale == raw.closest == pytest.approx(whole.closest, rel=1e-5)
    np.testing.assert_allclose(split.distances, whole.distances, rtol=1e-5)
    assert split.closest == pytest.approx(whole.closest, rel=1e-5)


def test_refusals_are_one_line(tiny_pipe, direction):
    with pytest.raises(ValueError, match="runs no step"):
        tiny_pipe.fit_edit(direction, strength=0.1, num_inference_steps=4)
    with pytest.raises(ValueError, match="sets steering_scale"):
        tiny_pipe.fit_edit(direction, strength=0.5, steering_scale=2.0)
    bare = random_vector(tiny_pipe, [CONTEXT_SITE])
    with pytest.raises(ValueError, match="records no negative prompts: fitting an edit needs directions learned from prompts"):
        tiny_pipe.fit_edit(bare, strength=0.5)


def test_generate_fit_with_an_image_uses_the_fitted_scale_and_records_it(model_dir, direction, tmp_path, capsys):
    path = direction.save(tmp_path / "d.safetensors")
    other = (2.0 * direction).save(tmp_path / "other.safetensors")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "src.png")
    base = ["generate", "--model", model_dir, "--prompt", "a bag", "--image", str(tmp_path / "src.png"), "--steps", "4", "--strength", "0.5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([*base, "--direction", str(path), "--fit", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 0, err
    line = next(x for x in err.splitlines() if x.startswith("fit: scale"))
    fitted = float(line.split()[2])
    (png,) = (tmp_path / "out").glob("seed0_scale*.png")
    assert read_recipe(png)["scale"] == pytest.approx(fitted, abs=1e-3) and "at strength 0.5" in line
    for extra, needle in (([], "--fit fits a take-away (--take-away) or an image edit (--image)"),
                          (["--direction", str(path), str(path)], "fits the scale of one --direction"),
                          (["--direction", str(path), "--take-away", str(other)], "give one of them")):
        argv = [*base, *extra, "--fit", "--out", str(tmp_path / "bad")]
        if not extra:
            argv = [a for a in argv if a not in ("--image", str(tmp_path / "src.png"), "--strength", "0.5")]
        assert_one_line_error(main(argv), capsys.readouterr().err, needle)
    assert not (tmp_path / "bad").exists()
