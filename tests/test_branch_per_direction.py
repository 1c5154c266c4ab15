"""One CFG branch per direction: a call whose directions record different branches (a slider on split beside a
one-sided direction on cond) steers each on its own, as windows and routes already are; a call that sets one branch
applies it to all. Exact deltas on the text site, the pipeline call, the recipe of every front end and its replay."""

import warnings

import numpy as np
import pytest
import torch

from steer.config import SteeringConfig, recommended_settings
from steer.denoisers import CONTEXT_SITE
from steer.engine import SteeringSession, build_layer_plans
from steer.jobs import run as batch
from steer.recipe import read_recipe
from steer.testing import capture_site, no_hooks_left, random_vector
from steer.vectors import SteeringVector

STEPS = 4


def call(pipe, prompt="a red sneaker", seed=0, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images


@pytest.fixture(scope="module")
def mixed(tiny_pipe):
    """Two text-site directions applied alike but for the branch: one records split, the other cond."""
    rec = {"mode": "add", "window": [0.0, 1.0]}
    split = random_vector(tiny_pipe, [CONTEXT_SITE], seed=11, fingerprint=True, recommended={**rec, "branch": "split"})
    cond = random_vector(tiny_pipe, [CONTEXT_SITE], seed=12, fingerprint=True, recommended={**rec, "branch": "cond"})
    return split, cond


def test_each_direction_moves_its_own_cfg_halves_exactly(tiny_pipe, mixed):
    """Unconditional half: only the split direction, negated; conditional half: both. Nothing else moves."""
    split, cond = mixed
    a, b = 0.3, 0.5
    raw, steered = capture_site(tiny_pipe, CONTEXT_SITE, lambda arm: call(tiny_pipe, callback_on_step_end=arm, steering=[split, cond],
                                                                         steering_scale=[a, b]))
    d_split, d_cond = split.directions[CONTEXT_SITE], cond.directions[CONTEXT_SITE]
    assert raw
    for r, s in zip(raw, steered, strict=True):
        uncond, conditional = (s - r).chunk(2)
        torch.testing.assert_close(uncond, (-a * d_split).expand_as(uncond), atol=1e-5, rtol=0)
        torch.testing.assert_close(conditional, (a * d_split + b * d_cond).expand_as(conditional), atol=1e-5, rtol=0)
    assert no_hooks_left(tiny_pipe.unet)


def test_the_recorded_branches_apply_without_a_word_and_a_call_can_set_one_for_all(tiny_pipe, mixed):
    split, cond = mixed
    assert recommended_settings([split, cond])["steering_branch"] == ("split", "cond")
    assert recommended_settings([split, split])["steering_branch"] == "split"  # agreed: the one value, not a list
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing disagrees any more: no note
        own = call(tiny_pipe, steering=[split, cond], steering_scale=[0.6, 0.6])
    explicit = call(tiny_pipe, steering=[split, cond], steering_scale=[0.6, 0.6], steering_branch=["split", "cond"])
    one = call(tiny_pipe, steering=[split, cond], steering_scale=[0.6, 0.6], steering_branch="cond")
    assert np.array_equal(own, explicit)
    assert not np.array_equal(own, one)  # the split direction's unconditional half is what differs
    # a direction at 0 in every row is as if absent: the other runs on its own branch, one value for the call
    assert np.array_equal(call(tiny_pipe, steering=[split, cond], steering_scale=[0.6, 0.0]), call(tiny_pipe, steering=split, steering_scale=0.6))
    assert np.array_equal(call(tiny_pipe, steering=[split, cond], steering_scale=[0.0, 0.0]), call(tiny_pipe))


def test_a_slider_keeps_split_beside_a_one_sided_direction_on_cond(tiny_pipe, mixed):
    """Both sides of a slider run on its branch whichever end the scale is at (the call splits it into its sides)."""
    split, cond = mixed
    other = random_vector(tiny_pipe, [CONTEXT_SITE], seed=13, fingerprint=True, recommended=dict(split.metadata["recommended"]))
    slider = SteeringVector(split.directions, {**split.metadata, "name": "slider"}, other)
    for scale in (0.7, -0.7):
        own = call(tiny_pipe, steering=[slider, cond], steering_scale=[scale, 0.5])
        side = slider.one_sided if scale > 0 else slider.opposite
        assert np.array_equal(own, call(tiny_pipe, steering=[side, cond], steering_scale=[abs(scale), 0.5], steering_branch=["split", "cond"]))
        assert not np.array_equal(own, call(tiny_pipe, steering=[slider, cond], steering_scale=[scale, 0.5], steering_branch="cond"))


def test_per_direction_branches_refuse_bad_values_in_one_line(tiny_pipe, mixed):
    with pytest.raises(ValueError, match=r"^steering_branch must be one of .*, or one of them per direction, got \['cond', 'sideways'\]$"):
        SteeringConfig(branch=["cond", "sideways"])
    with pytest.raises(ValueError, match="steering_branch must be one of"):
        SteeringConfig(branch=[])
    with pytest.raises(ValueError, match=r"^steering_branch holds 3 branch\(es\) for 2 direction\(s\): give one for all, or one per direction$"):
        call(tiny_pipe, steering=list(mixed), steering_scale=[0.5, 0.5], steering_branch=["cond", "split", "both"])
    assert no_hooks_left(tiny_pipe.unet)


def test_sequential_cfg_calls_take_each_directions_sign():
    """With separate conditional and unconditional calls (Flux's true CFG), each column gets its own branch's sign."""
    from steer.testing import tiny_components

    unet = tiny_components()["unet"]
    vectors = [SteeringVector({CONTEXT_SITE: torch.ones(32)}), SteeringVector({CONTEXT_SITE: torch.ones(32)})]
    session = SteeringSession(unet, build_layer_plans(vectors, None, False), torch.tensor([[2.0, 3.0]]),
                              SteeringConfig(window=(0, 1), branch=("split", "cond")))
    session.call_branch = "uncond"
    assert session.row_scales(1).tolist() == [[-2.0, 0.0]] and session.branch_sign() == 1
    session.call_branch = "cond"
    assert session.row_scales(1).tolist() == [[2.0, 3.0]]
    only_cond = SteeringSession(unet, build_layer_plans(vectors, None, False), torch.tensor([[2.0, 3.0]]),
                                SteeringConfig(window=(0, 1), branch=("cond", "cond")))
    assert only_cond.branches is None and only_cond.config.branch == "cond"  # one value: the call's one branch
    only_cond.call_branch = "uncond"
    assert only_cond.branch_sign() == 0  # nothing acts on the unconditional call


def test_the_cli_and_batch_record_each_branch_and_the_recipe_replays(tiny_pipe, mixed, tmp_path, capsys):
    from steer.cli.main import main

    split, cond = mixed
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    paths = [str(split.save(tmp_path / "split.safetensors")), str(cond.save(tmp_path / "cond.safetensors"))]
    cli = ["generate", "--model", str(model), "--prompt", "a bag", "--steps", str(STEPS), "--direction", *paths]
    assert main([*cli, "--out", str(tmp_path / "cli")]) == 0
    assert "recommend different" not in capsys.readouterr().err
    png = next((tmp_path / "cli").glob("*.png"))
    assert read_recipe(png)["branch"] == ["split", "cond"]
    assert main(["reproduce", str(png), "--model", str(model), "--directions", str(tmp_path)]) == 0  # bit for bit
    assert main([*cli, "--branch", "both", "--out", str(tmp_path / "one")]) == 0
    assert read_recipe(next((tmp_path / "one").glob("*.png")))["branch"] == "both"
    assert main([*cli, "--branch", "cond", "split", "--out", str(tmp_path / "two")]) == 0
    assert read_recipe(next((tmp_path / "two").glob("*.png")))["branch"] == ["cond", "split"]
    capsys.readouterr()
    assert main([*cli, "--branch", "cond", "split", "both", "--out", str(tmp_path / "three")]) == 2
    assert "--branch takes one branch for all directions or one per direction (2), got 3" in capsys.readouterr().err
    assert not (tmp_path / "three").exists()

    job = {"prompt": "a bag", "num_inference_steps": STEPS, "directions": paths, "seed": 0}
    out = tmp_path / "batch"
    summary = batch.run([{**job, "name": "own"}, {**job, "name": "bad", "steering_branch": ["split"] * 3}], tiny_pipe, out,
                        batch_size=1, model="tiny", progress=False)
    assert summary["failed"] == 1 and "steering_branch must be one of" in summary["failures"][0]["reason"]
    listed = batch.run([{**job, "name": "listed", "steering_branch": ["split", "cond"]}], tiny_pipe, tmp_path / "listed", model="tiny",
                       progress=False)
    assert listed["failed"] == 0
    assert read_recipe(out / "own.png")["branch"] == read_recipe(tmp_path / "listed" / "listed.png")["branch"] == ["split", "cond"]
    assert np.array_equal(np.asarray(read_png(out / "own.png")), np.asarray(read_png(tmp_path / "listed" / "listed.png")))


def read_png(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB").copy()
