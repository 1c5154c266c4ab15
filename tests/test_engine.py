"""Behaviour of the steering engine on a tiny random-weight pipeline (CPU, fp32)."""

import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from steer import ModelMismatchError, SteeringFileError, SteeringStableDiffusionPipeline, SteeringVector
from steer.config import SteeringConfig
from steer.denoisers import CONTEXT_SITE, LayerError, cross_attention_sites, layer_channels
from steer.engine import SteeringSession, build_layer_plans, window_bounds
from steer.testing import capture_site, no_hooks_left, random_vector, run_in_threads, step_barrier, tiny_pipeline

STEPS = 6
PROMPT = "a red sneaker"


def call(pipe, gen, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(PROMPT, generator=gen(0), output_type="np", **kw).images


# 1 ---------------------------------------------------------------------------------------------------------------
def test_no_steering_and_zero_scale_are_bit_identical_to_parent(tiny_pipe, gen):
    parent = StableDiffusionPipeline.__call__(tiny_pipe, PROMPT, num_inference_steps=STEPS, generator=gen(0), output_type="np").images
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.1", "up_blocks.1.attentions.0"], scale=5.0)
    assert np.array_equal(call(tiny_pipe, gen), parent)
    assert np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=0.0), parent)
    assert np.array_equal(call(tiny_pipe, gen, steering=[v, v], steering_scale=[0.0, 0.0]), parent)
    assert not np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=1.0), parent)


# 2 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("branch", ["cond", "uncond", "both"])
def test_hooked_output_moves_by_scale_times_v_only_in_window_and_branch(tiny_pipe, gen, branch):
    layer = "up_blocks.0.resnets.1"
    v = random_vector(tiny_pipe, [layer], seed=3)
    scale, window = 0.7, (0.3, 0.7)
    steer_kw = dict(steering=v, steering_scale=scale, steering_window=window, steering_branch=branch)
    raw, steered = capture_site(tiny_pipe, layer, lambda arm: call(tiny_pipe, gen, callback_on_step_end=arm, **steer_kw))
    assert len(raw) == len(steered) == STEPS - 1
    first, stop = window_bounds(window, STEPS)
    half = raw[0].shape[0] // 2
    delta = (scale * v.directions[layer])[None, :, None, None]
    for step, (r, s) in enumerate(zip(raw, steered, strict=True), start=1):
        moved = s - r
        rows = {"cond": slice(half, None), "uncond": slice(0, half), "both": slice(0, None)}[branch]
        still = {"cond": slice(0, half), "uncond": slice(half, None), "both": slice(0, 0)}[branch]
        if first <= step < stop:
            torch.testing.assert_close(moved[rows], delta.expand_as(moved[rows]), rtol=0, atol=1e-5)
            assert torch.equal(s[still], r[still])
        else:
            assert torch.equal(s, r), f"step {step} is outside the window but moved"


def test_window_matches_paper_steps():
    assert window_bounds((0.45, 0.95), 40) == (18, 38)  # paper: 0-indexed steps 18..37 of 40
    assert window_bounds((0.0, 1.0), 7) == (0, 7)
    assert window_bounds((0.8, 1.0), 3) == (2, 3)  # narrower than a step: still the step it falls in
    assert window_bounds((0.5, 0.5), 10) == (5, 5)  # empty stays empty


def test_per_row_scales_in_one_batched_call_equal_separate_calls(tiny_pipe, gen):
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.0", "up_blocks.1.resnets.0"], seed=1)
    scales = [-2.0, 0.0, 2.0]
    batched = tiny_pipe([PROMPT] * 3, num_inference_steps=STEPS, generator=[gen(i) for i in range(3)], output_type="np", steering=v, steering_scale=scales).images
    for i, s in enumerate(scales):
        alone = tiny_pipe(PROMPT, num_inference_steps=STEPS, generator=gen(i), output_type="np", steering=v, steering_scale=s).images
        np.testing.assert_allclose(batched[i], alone[0], atol=2e-5)


def test_session_on_bare_unet_without_cfg_steers_every_row():
    from steer.testing import tiny_components

    unet = tiny_components()["unet"]
    layer = "up_blocks.1.attentions.1"  # a Transformer2DModel: tuple output
    v = SteeringVector({layer: torch.randn(layer_channels(unet, [layer])[layer])})
    plans = build_layer_plans([v], None, normalize=False)
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.randn(2, 3, 32)
    module = dict(unet.named_modules())[layer]
    outs = []
    h = module.register_forward_hook(lambda m, a, o: outs.append(o[0].clone()), prepend=True)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=c)
        with SteeringSession(unet, plans, torch.tensor([[2.0]]), SteeringConfig(window=(0, 1))) as s:
            after = []
            h2 = module.register_forward_hook(lambda m, a, o: after.append(o[0].clone()))
            unet(x, t, encoder_hidden_states=c)
            h2.remove()
    h.remove()
    torch.testing.assert_close(after[0] - outs[1], (2.0 * v.directions[layer])[None, :, None, None].expand_as(after[0]), atol=1e-5, rtol=0)
    assert s.applied_steps == [0]
    assert no_hooks_left(unet)


def test_the_uncond_branch_without_guidance_steers_the_one_prediction_and_says_so(tiny_pipe, gen):
    """At guidance 1 there is no unconditional half: 'uncond' steers the one prediction, where +s pushes toward the
    direction (under guidance 'uncond' pushes away): the same image as 'cond', with one warning a call (it was silent)."""
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.2"], scale=3.0)
    with pytest.warns(UserWarning, match="steering_branch='uncond' steers the unconditional half") as caught:
        uncond = call(tiny_pipe, gen, steering=v, steering_branch="uncond", steering_window=(0, 1), guidance_scale=1.0)
    assert sum("steering_branch='uncond'" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(uncond, call(tiny_pipe, gen, steering=v, steering_branch="cond", steering_window=(0, 1), guidance_scale=1.0))


# 3 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_hooks_removed_on_every_exit_path(tiny_pipe, gen, exc):
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.0"])
    call(tiny_pipe, gen, steering=v, steering_scale=1.0)
    assert no_hooks_left(tiny_pipe.unet)

    def boom(pipe, i, t, kw):
        raise exc("stop")

    with pytest.raises(exc):
        call(tiny_pipe, gen, steering=v, steering_scale=1.0, callback_on_step_end=boom)
    assert no_hooks_left(tiny_pipe.unet)
    with pytest.raises(exc), tiny_pipe.steering(v, 1.0):
        call(tiny_pipe, gen, callback_on_step_end=boom)
    assert no_hooks_left(tiny_pipe.unet)


def test_context_manager_applies_to_calls_inside_only(tiny_pipe, gen):
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.2"], scale=3.0)
    plain = call(tiny_pipe, gen)
    explicit = call(tiny_pipe, gen, steering=v, steering_scale=0.5, steering_window=(0, 1))
    with tiny_pipe.steering(v, scale=0.5, window=(0, 1)):
        inside = call(tiny_pipe, gen)
        overridden = call(tiny_pipe, gen, steering_scale=0.0)
    after = call(tiny_pipe, gen)
    assert np.array_equal(inside, explicit)
    assert np.array_equal(overridden, plain)
    assert np.array_equal(after, plain)


def test_a_block_or_call_naming_its_own_direction_takes_none_of_the_enclosing_blocks_options(tiny_pipe, gen):
    """Blocks and calls with ``steering=`` replace an enclosing block's direction; they inherited its options (an inner
    ``to_bag`` ran under the outer direction's branch and window, and the outer per-direction scale list was read as
    one scale per image for the inner one)."""
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.2"], scale=3.0, seed=1)
    w = random_vector(tiny_pipe, ["up_blocks.0.resnets.2"], scale=3.0, seed=2)
    alone = call(tiny_pipe, gen, steering=w)
    with tiny_pipe.steering([v, w], scale=[1.0, 0.5], window=(0, 1), branch="both"):
        assert np.array_equal(call(tiny_pipe, gen, steering=w), alone)
        with tiny_pipe.steering(w):
            assert np.array_equal(call(tiny_pipe, gen), alone)
        assert np.array_equal(call(tiny_pipe, gen, steering_scale=[0.0, 0.5]), call(tiny_pipe, gen, steering=w, steering_scale=0.5,
                                                                                   steering_window=(0, 1), steering_branch="both"))


def test_a_direction_at_scale_0_in_a_list_is_as_if_absent(tiny_pipe, gen):
    """Its recorded settings took part in those the call agrees on: ``[to_blue, red_to_blue]`` at ``[1, 0]`` ran
    ``to_blue`` under the built-in branch and mode (0.41 of a pixel off ``to_blue`` alone), with a warning about it."""
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.2"], scale=3.0, seed=1)
    w = random_vector(tiny_pipe, ["up_blocks.0.resnets.2"], scale=3.0, seed=2)
    v.metadata["recommended"] = {"window": [0.0, 1.0], "branch": "split"}
    w.metadata["recommended"] = {"window": [0.0, 0.5], "branch": "cond", "mode": "token"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a note about settings the idle direction records
        together = call(tiny_pipe, gen, steering=[v, w], steering_scale=[1.0, 0.0])
        windows = call(tiny_pipe, gen, steering=[w, v], steering_scale=[0.0, 1.0], steering_window=[(0, 0.5), (0, 1)])
    assert np.array_equal(together, call(tiny_pipe, gen, steering=v)) and np.array_equal(windows, together)


def test_learning_and_fits_inside_a_steering_block_are_not_steered_by_it(tiny_pipe):
    """A block steers the calls a user makes inside it, not the sampling that learning and fitting do themselves:
    `learn_direction`, `fit_take_away` and `fit_edit` inside ``with pipe.steering(other, 3)`` give what they give
    outside (the block used to steer their "unsteered" references: another strength, found silently)."""
    import warnings

    other = random_vector(tiny_pipe, [CONTEXT_SITE], seed=5, scale=3.0)

    def learn(colour):
        return tiny_pipe.learn_direction([f"a {colour} sneaker", f"a {colour} bag"], ["a sneaker", "a bag"], num_inference_steps=2,
                                         calibration_samples=2, progress=False)

    def all_three():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: calibrations may not converge
            blue, red = learn("blue"), learn("red")
            away = tiny_pipe.fit_take_away(blue, red, num_samples=2, num_inference_steps=2)
            edit = tiny_pipe.fit_edit(blue, strength=0.5, num_samples=2, num_inference_steps=2)
        return blue.metadata["calibration"], (away.strength, away.window), edit.scale

    outside = all_three()
    with tiny_pipe.steering(other, scale=3.0, window=(0, 1)):
        inside = all_three()
    assert inside == outside


# 4 ---------------------------------------------------------------------------------------------------------------
def test_two_threads_at_once_get_their_own_results(tiny_pipe, gen):
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.0", "up_blocks.0.resnets.1"], seed=2, scale=2.0)
    settings = {"a": dict(steering_scale=1.5, guidance_scale=7.5), "b": dict(steering_scale=-1.5, guidance_scale=3.0, steering_branch="both")}
    alone = {k: call(tiny_pipe, gen, steering=v, **kw) for k, kw in settings.items()}
    sync = step_barrier(2)  # force the two denoising loops to interleave step by step
    together = run_in_threads(lambda k: call(tiny_pipe, gen, steering=v, callback_on_step_end=sync, **settings[k]), settings)
    for k in settings:
        assert np.array_equal(together[k], alone[k]), k
    assert no_hooks_left(tiny_pipe.unet)


def test_two_unsteered_calls_at_once_do_not_share_the_scheduler(tiny_pipe, gen):
    """diffusers' own pipelines share one scheduler between concurrent calls (a call's set_timesteps changes the
    other's loop); every call of a steered pipeline, steered or not, runs on its own copy."""
    settings = {"a": dict(num_inference_steps=4), "b": dict(num_inference_steps=7, guidance_scale=3.0)}
    alone = {k: call(tiny_pipe, gen, **kw) for k, kw in settings.items()}
    sync = step_barrier(2, timeout=2)  # the shorter run ends first: the other's wait times out, then it runs alone
    together = run_in_threads(lambda k: call(tiny_pipe, gen, callback_on_step_end=sync, **settings[k]), settings)
    for k in settings:
        assert np.array_equal(together[k], alone[k]), k


# 5 ---------------------------------------------------------------------------------------------------------------
def test_unknown_layer_lists_close_matches(tiny_pipe, gen):
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.0"])
    with pytest.raises(LayerError, match=r"up_blocks\.0\.resnet\.0.*did you mean.*up_blocks\.0\.resnets\.0"):
        tiny_pipe.learn_direction(["x"], layers=["up_blocks.0.resnet.0"], method="mean")
    bad = SteeringVector({"up_blocks.0.resnet.0": torch.ones(64)})
    with pytest.raises(LayerError, match="did you mean"):
        call(tiny_pipe, gen, steering=bad)
    with pytest.raises(ValueError, match="not in the direction"):
        call(tiny_pipe, gen, steering=v, steering_layers=["up_blocks.1.resnets.0"])
    with pytest.raises(LayerError, match="matches no module"):
        call(tiny_pipe, gen, steering=v, steering_layers=["down_blocks.9.*"])


def test_glob_layers_restrict_the_vector(tiny_pipe, gen):
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.0", "up_blocks.1.resnets.0"], scale=3.0)
    only_first = call(tiny_pipe, gen, steering=v, steering_layers="up_blocks.0.*", steering_window=(0, 1))
    sub = call(tiny_pipe, gen, steering=v.select(["up_blocks.0.resnets.0"]), steering_window=(0, 1))
    assert np.array_equal(only_first, sub)


def test_channel_mismatch_names_layer_and_sizes(tiny_pipe, gen):
    bad = SteeringVector({"up_blocks.0.resnets.0": torch.ones(7)})
    with pytest.raises(ModelMismatchError, match=r"up_blocks\.0\.resnets\.0.*7 channels.*64"):
        call(tiny_pipe, gen, steering=bad)
    assert no_hooks_left(tiny_pipe.unet)


def test_vector_from_another_model_names_the_difference(tiny_pipe, gen):
    from steer.testing import tiny_pipeline
    from steer.vectors import unet_fingerprint

    layers = ["up_blocks.0.resnets.0"]
    other_weights = tiny_pipeline(seed=1)
    v = random_vector(other_weights, layers, model=unet_fingerprint(other_weights.unet, layers))
    with pytest.raises(ModelMismatchError, match="weights hash"):
        call(tiny_pipe, gen, steering=v)
    call(tiny_pipe, gen, steering=v, steering_strict=False)  # a fine-tune of the same architecture is allowed
    other_arch = tiny_pipeline(seed=0, text_width=48)
    w = random_vector(other_arch, layers, model=unet_fingerprint(other_arch.unet, layers))
    with pytest.raises(ModelMismatchError, match="cross_attention_dim: 48 -> 32"):
        call(tiny_pipe, gen, steering=w, steering_strict=False)
    # two directions of one name from two models ([to_blue, demo-4x/to_blue]): the error says which model
    w.metadata["model"]["name_or_path"] = "models/demo-4x"
    with pytest.raises(ModelMismatchError, match=r"was learned on a different UNet \('models/demo-4x'\)"):
        call(tiny_pipe, gen, steering=[v, w], steering_strict=False)


def test_save_load_roundtrip_and_damaged_files(tiny_pipe, tmp_path):
    from steer.vectors import unet_fingerprint

    layers = ["up_blocks.0.resnets.0", "up_blocks.1.attentions.0"]
    v = random_vector(tiny_pipe, layers, model=unet_fingerprint(tiny_pipe.unet, layers), activation_norm={layers[0]: 3.0})
    path = v.save(tmp_path / "dir.safetensors")
    w = SteeringVector.load(path)
    assert w.layers == v.layers and all(torch.equal(w.directions[n], v.directions[n]) for n in layers)
    assert w.metadata["model"]["channels"] == {layers[0]: 64, layers[1]: 32}
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 50])
    with pytest.raises(SteeringFileError, match="truncated or corrupt"):
        SteeringVector.load(tmp_path / "trunc.safetensors")
    edited = bytearray(data)
    edited[-3] ^= 0xFF  # flip bits inside the last tensor's data
    (tmp_path / "edited.safetensors").write_bytes(bytes(edited))
    with pytest.raises(SteeringFileError, match="edited or damaged"):
        SteeringVector.load(tmp_path / "edited.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(SteeringFileError):
        SteeringVector.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.ones(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(SteeringFileError, match="not a steering vector"):
        SteeringVector.load(tmp_path / "other.safetensors")
    with pytest.raises(SteeringFileError, match="not found"):
        SteeringVector.load(tmp_path / "missing.safetensors")


def test_arithmetic_and_normalization(tiny_pipe):
    layers = ["up_blocks.0.resnets.0", "up_blocks.1.resnets.0"]
    a, b = random_vector(tiny_pipe, layers, seed=1), random_vector(tiny_pipe, layers[:1], seed=2)
    for n in layers:
        torch.testing.assert_close((a + b).directions[n], a.directions[n] + (b.directions[n] if n in b.directions else 0))
        torch.testing.assert_close((a - b).directions[n], a.directions[n] - (b.directions[n] if n in b.directions else 0))
        torch.testing.assert_close((2.0 * a).directions[n], 2 * a.directions[n])
        torch.testing.assert_close((a * 2.0).directions[n], 2 * a.directions[n])
        torch.testing.assert_close((-a).directions[n], -a.directions[n])
        torch.testing.assert_close((a / 4).directions[n], a.directions[n] / 4)
        assert abs(float(a.normalized().directions[n].norm()) - 1.0) < 1e-5
    assert a.to(dtype=torch.float16).directions[layers[0]].dtype == torch.float16


def test_a_scaled_calibrated_direction_records_where_its_full_edit_now_is():
    """``2 * v`` kept the strength ``v`` was calibrated at and the benchmark measured at ``v``'s own scale, and the app
    said "strength 1 is the full edit" of it; the strength held is scaled now and the factor recorded, so the full edit
    is named where it is (0.5), and the benchmark of another scale is dropped."""
    from steer.app.files import direction_summary
    from steer.calibrate import full_edit_scale

    meta = {"calibration": {"strength": 0.8, "open_prompts": ["a bag"]}, "benchmark": {"open_at_1": {"success_at_1": 0.9}},
            "sampling": {"guidance_scale": 5.0, "num_inference_steps": 20}}
    v = SteeringVector({"x": torch.ones(4)}, meta)
    two, half, minus = 2 * v, v / 4, -v
    assert two.metadata["calibration"]["strength"] == 1.6 and two.metadata["calibration"]["scaled"] == 2.0
    assert (half * 2).metadata["calibration"]["scaled"] == 0.5 and full_edit_scale(half.metadata) == 4.0
    assert minus.metadata["calibration"]["strength"] == -0.8 and full_edit_scale(minus.metadata) == -1.0
    assert "benchmark" not in two.metadata and "benchmark" in v.metadata and v.metadata["calibration"]["strength"] == 0.8
    assert "benchmark" in (1 * v).metadata and "scaled" not in (1 * v).metadata["calibration"]
    assert full_edit_scale(v.metadata) == 1.0 and full_edit_scale((0 * v).metadata) is None
    assert "strength 1 is the full edit" in direction_summary(v) and "strength 0.5 is the full edit" in direction_summary(two)
    assert "calibration" not in v.normalized().metadata and "full edit" not in direction_summary(0 * v)


def test_arithmetic_on_directions_that_recommend_normalize_scales_and_adds_what_steers(tiny_pipe, gen):
    """Under a recommended ``normalize=True`` the engine rescaled every layer to its activation norm, so ``2 * v``
    steered exactly as ``v`` and ``v + w`` not as ``[v, w]`` (the bundled ``*_to_blue`` directions); the normalization
    is now applied in the arithmetic. A copy's metadata is its own, and ``-v`` drops the level measured along ``+v``."""
    layers = ["up_blocks.0.resnets.1", "up_blocks.1.attentions.0"]
    v, w = (random_vector(tiny_pipe, layers, seed=s, scale=0.05, activation_norm={n: 3.0 for n in layers}) for s in (1, 2))
    for d in (v, w):
        d.metadata["recommended"] = {"normalize": True, "window": [0.0, 1.0]}
    v.metadata["reference_level"] = {layers[0]: [0.5]}
    one = call(tiny_pipe, gen, steering=v)
    assert np.abs(call(tiny_pipe, gen, steering=2 * v) - call(tiny_pipe, gen, steering=v, steering_scale=2.0)).max() < 1e-5
    assert np.abs(call(tiny_pipe, gen, steering=2 * v) - one).max() > 1e-3
    assert np.abs(call(tiny_pipe, gen, steering=v / 4) - call(tiny_pipe, gen, steering=v, steering_scale=0.25)).max() < 1e-5
    assert np.abs(call(tiny_pipe, gen, steering=v + w) - call(tiny_pipe, gen, steering=[v, w])).max() < 1e-5
    assert (2 * v).metadata["recommended"]["normalize"] is False and v.metadata["recommended"]["normalize"] is True
    copied = 2 * v
    copied.metadata["recommended"]["window"][0] = 0.5
    assert v.metadata["recommended"]["window"] == [0.0, 1.0]
    assert "reference_level" not in (-v).metadata and "reference_level" in (2 * v).metadata
    slider = SteeringVector(v.directions, v.metadata, w)  # -slider, one_sided and select are copies of their own too
    for copied in ((-slider).opposite, slider.one_sided, slider.select(layers[:1])):
        copied.metadata["recommended"]["window"][0] = 0.25
    assert v.metadata["recommended"]["window"] == [0.0, 1.0]
    with warnings.catch_warnings():  # an applied direction (normalize False) and one recording none: nothing to warn
        warnings.simplefilter("error")
        plain = random_vector(tiny_pipe, layers, seed=3, scale=0.05)
        plain.metadata["recommended"] = {"window": [0.0, 1.0]}
        (2 * v) + plain


def test_normalized_scale_is_in_units_of_activation_norm(tiny_pipe):
    layer = "up_blocks.0.resnets.0"
    v = random_vector(tiny_pipe, [layer], activation_norm={layer: 4.0})
    plan = build_layer_plans([v], None, normalize=True)[layer]
    assert abs(float(plan.directions[0].norm()) - 4.0) < 1e-4
    no_norm = random_vector(tiny_pipe, [layer])
    with pytest.raises(ValueError, match="activation norm"):
        build_layer_plans([no_norm], None, normalize=True)


def test_bad_scale_and_window_arguments(tiny_pipe, gen):
    v = random_vector(tiny_pipe, ["up_blocks.0.resnets.0"])
    with pytest.raises(ValueError, match="one per image"):
        call(tiny_pipe, gen, steering=v, steering_scale=[1.0, 2.0, 3.0])
    # several directions: a flat list as long as the batch was read per image, only when the lengths matched by chance
    w, x = random_vector(tiny_pipe, ["up_blocks.0.resnets.0"], seed=2), random_vector(tiny_pipe, ["up_blocks.0.resnets.0"], seed=3)
    with pytest.raises(ValueError, match=r"steering_scale has 2 values for 3 directions and 2 images: give one per direction \(3\), "
                                         r"or one row per image as a nested list"):
        tiny_pipe([PROMPT] * 2, num_inference_steps=1, steering=[v, w, x], steering_scale=[2.0, -1.0])
    with pytest.raises(ValueError, match="start < end"):
        call(tiny_pipe, gen, steering=v, steering_window=(0.9, 0.1))
    with pytest.raises(ValueError, match=r"^steering_window must satisfy 0 <= start < end <= 1, got \(0.5, 0.5\)$"):
        call(tiny_pipe, gen, steering=v, steering_window=(0.5, 0.5))  # an empty window would steer nothing, silently
    with pytest.raises(ValueError, match="steering_branch"):
        call(tiny_pipe, gen, steering=v, steering_branch="neg")
    with pytest.raises(ValueError, match="finite"):
        call(tiny_pipe, gen, steering=v, steering_scale=float("nan"))


def test_weighted_mode_concentrates_the_edit_where_activations_are_large(tiny_pipe, gen):
    layer = "up_blocks.1.resnets.1"
    v = random_vector(tiny_pipe, [layer], scale=0.5)
    steer_kw = dict(steering=v, steering_window=(0, 1), steering_mode="weighted")
    raw, steered = capture_site(tiny_pipe, layer, lambda arm: call(tiny_pipe, gen, callback_on_step_end=arm, **steer_kw))
    r, s = raw[-1], steered[-1]
    moved = (s - r).norm(dim=1)  # (N, H, W)
    act = r.norm(dim=1)
    rows = slice(r.shape[0] // 2, None)
    corr = torch.corrcoef(torch.stack([moved[rows].flatten(), act[rows].flatten()]))[0, 1]
    assert corr > 0.99
    # the mean spatial weight is one, so the average edit equals the uniform one
    torch.testing.assert_close(moved[rows].mean(dim=(1, 2)), torch.full_like(moved[rows][:, 0, 0], float(v.directions[layer].norm())), rtol=1e-3, atol=0)


# 7 ---------------------------------------------------------------------------------------------------------------
def test_torch_compile_steers_without_recompiling(gen):
    from torch._dynamo.utils import counters

    from steer.testing import tiny_pipeline

    torch._dynamo.reset()
    pipe = tiny_pipeline(seed=0)
    v = random_vector(pipe, ["up_blocks.0.resnets.1", "up_blocks.1.attentions.0"], scale=2.0)
    eager = {s: call(pipe, gen, steering=v, steering_scale=s, num_inference_steps=4) for s in (0.0, 1.0, -1.0)}
    w = random_vector(pipe, ["up_blocks.0.resnets.1"], seed=5, scale=2.0)
    per_vector = dict(steering=[v, w], steering_scale=[1.0, -1.0], steering_window=[(0.0, 0.5), (0.25, 1.0)], num_inference_steps=4)
    eager["windows"] = call(pipe, gen, **per_vector)  # one window per vector
    slider = SteeringVector(v.directions, v.metadata, random_vector(pipe, v.layers, seed=7, scale=2.0))  # two-sided
    eager["slider"] = {s: call(pipe, gen, steering=slider, steering_scale=s, num_inference_steps=4) for s in (-1.0, 1.0)}
    plain_compile = tiny_pipeline(seed=0)
    plain_compile.unet = torch.compile(plain_compile.unet, backend="eager")
    with pytest.raises(RuntimeError, match="compile_unet"):
        call(plain_compile, gen, steering=v, num_inference_steps=4)
    pipe.compile_unet(backend="eager")  # every site, the text tokens included
    assert CONTEXT_SITE in pipe._static_sites.layers and pipe._static_sites.readers
    counters.clear()
    graphs = None
    for s in (0.0, 1.0, -1.0, 1.0):
        out = call(pipe, gen, steering=v, steering_scale=s, num_inference_steps=4)
        np.testing.assert_array_equal(out, eager[s])
        graphs = graphs or counters["stats"]["unique_graphs"]  # the first call's (two with the text site: no graph break or recompile logged)
    call(pipe, gen, steering=v, steering_scale=0.5, steering_window=(0.0, 0.5), num_inference_steps=4)
    np.testing.assert_array_equal(call(pipe, gen, **per_vector), eager["windows"])
    for s in (-1.0, 1.0, -1.0):  # a slider moved across 0: its sides swap in and out, nothing recompiles
        np.testing.assert_array_equal(call(pipe, gen, steering=slider, steering_scale=s, num_inference_steps=4), eager["slider"][s])
    assert counters["stats"]["unique_graphs"] == graphs <= 2  # nothing recompiled
    torch._dynamo.reset()


def test_from_pipe_shares_weights_and_steers(gen):
    from steer.testing import tiny_pipeline

    base = tiny_pipeline(seed=0, cls=StableDiffusionPipeline)
    pipe = SteeringStableDiffusionPipeline.from_pipe(base)
    assert pipe.unet is base.unet and pipe.vae is base.vae
    pipe.set_progress_bar_config(disable=True)
    v = random_vector(pipe, ["up_blocks.0.resnets.0"], scale=3.0)
    assert not np.array_equal(call(pipe, gen, steering=v), call(pipe, gen))


def test_compile_unet_leaves_the_pipelines_sharing_its_unet_unsteered(gen):
    """compile_unet's site hooks sit on the uncompiled UNet, which the diffusers pipeline it came from (and copies made
    before compiling) still call: the last steered call's deltas stayed in the buffers and steered them (0.42 of a
    pixel), and a call of another batch size failed on the buffer's shape."""
    from diffusers import StableDiffusionPipeline

    base = tiny_pipeline(seed=0, cls=StableDiffusionPipeline)
    base.set_progress_bar_config(disable=True)
    pipe = SteeringStableDiffusionPipeline.from_pipe(base)
    pipe.set_progress_bar_config(disable=True)

    def run(p, **kw):
        return p("a red sneaker", num_inference_steps=4, generator=gen(0), output_type="np", **kw).images

    copy, before = pipe.with_sampler("ddim"), run(base)
    before_copy = run(copy)
    v = random_vector(pipe, ["up_blocks.0.resnets.1"], scale=3.0)
    pipe.compile_unet(layers=["up_blocks.0.resnets.1"], backend="eager")
    assert not np.array_equal(run(pipe, steering=v, steering_scale=2.0), before)
    assert np.array_equal(run(base), before) and np.array_equal(run(copy), before_copy)
    assert base(["a", "b"], num_inference_steps=2, output_type="np").images.shape[0] == 2


def _compiled_uses(pipe, gen):
    """What the paths that use a pipeline's denoiser outside a steered call give: trajectory recording (learning,
    fits), image extraction, the detector's re-encode and Wen et al.'s score."""
    from steer.detect.baselines import wen_scores
    from steer.detect.detector import MemorizationDetector
    from steer.extract import extract_from_images, record_steps

    steps, _ = record_steps(pipe, ["a blue bag"], [1], ["up_blocks.1.attentions.0"], num_inference_steps=3)
    images = torch.rand(2, 3, 32, 32, generator=gen(3))
    pooled, _ = extract_from_images(pipe, images, ["up_blocks.1.attentions.0"])
    detector = MemorizationDetector(pipe, layers=["up_blocks.1.attentions.0"])
    return steps["up_blocks.1.attentions.0"], pooled, detector.representations(images), wen_scores(pipe, PROMPT, k=2, num_inference_steps=3, generator=gen(0))


def test_every_use_of_a_compiled_denoiser_holds_its_sites_lock(gen):
    """compile_unet's site buffers are shared by every call of its UNet, but learning (`record_steps`), image
    extraction, the detector's re-encode and Wen's score called it without the sites' lock, as did a steered call of a
    copy made before compiling: a learn in one thread and a steered call in another changed each other's results
    (20.5 on a recorded activation). Each now holds the lock while the denoiser runs."""
    pipe = tiny_pipeline(seed=0)
    copy = pipe.with_sampler("ddim")  # its UNet is the uncompiled one, sites and all
    pipe.compile_unet(layers=["up_blocks.0.resnets.1"], backend="eager")
    lock, held = pipe._static_sites.lock, []

    @torch._dynamo.disable
    def probe(*_):
        held.append(lock._is_owned())

    handles = [m.register_forward_pre_hook(probe) for m in (pipe.unet, pipe.denoiser)]  # compiled wrapper, eager UNet
    try:
        _compiled_uses(pipe, gen)
        call(copy, gen, steering=random_vector(pipe, ["up_blocks.0.resnets.1"]), num_inference_steps=2)
    finally:
        for handle in handles:
            handle.remove()
    assert held and all(held), held
    assert not lock._is_owned()
    torch._dynamo.reset()


def test_recording_on_a_warm_compiled_pipeline_records_on_the_uncompiled_unet(gen):
    """A warm compiled graph ignores hooks added later (off its own sites): recording through it gave no steps (CASteer
    learning then failed with unrelated errors). Recording runs on the uncompiled UNet: every path gives what the
    eager pipeline gives, and a CASteer direction learned on the compiled pipeline is the eager one."""
    import warnings

    def learn(pipe):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: the calibration may not converge
            return pipe.learn_direction(["a blue bag", "a blue sneaker"], ["a bag", "a sneaker"], preset="casteer",
                                        step_buckets=1, num_samples=2, num_inference_steps=2, calibration_samples=2, progress=False)

    eager = tiny_pipeline(seed=0)
    want, learned = _compiled_uses(eager, gen), learn(eager)
    pipe = tiny_pipeline(seed=0)
    pipe.compile_unet(layers=cross_attention_sites(pipe.unet), backend="eager")  # CASteer's sites: its calibration steers

    def hooks(p) -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in p.denoiser.modules())

    sites = hooks(pipe)
    call(pipe, gen, num_inference_steps=2)  # the graph is warm for a CFG batch of one image, as record_steps calls it
    got = _compiled_uses(pipe, gen)
    assert sorted(got[0]) == sorted(want[0]) == [0, 1, 2]
    for step in want[0]:
        torch.testing.assert_close(got[0][step], want[0][step])
    for a, b in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(a, b)
    direction = learn(pipe)
    assert direction.layers == learned.layers
    for layer in learned.layers:
        torch.testing.assert_close(direction.directions[layer], learned.directions[layer])
    assert hooks(pipe) == sites  # the recorders' hooks are gone, the persistent sites stay
    torch._dynamo.reset()
