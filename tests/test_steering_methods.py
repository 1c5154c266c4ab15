"""The steering methods of issue "steering that edits": step buckets, the text-token site, token-norm units, norm
preservation, the split CFG branch, recommended settings, presets and calibration (tiny random-weight pipeline)."""

import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from steer import SteeringVector
from steer.calibrate import MARGIN
from steer.config import SteeringConfig
from steer.denoisers import CONTEXT_SITE, layer_channels, list_layers
from steer.engine import LayerPlan, apply_delta, build_layer_plans
from steer.wording import open_prompts

STEPS = 6
PROMPT = "a red sneaker"


def vec(pipe, layers, seed=0, buckets=1, **meta):
    ch = layer_channels(pipe.unet, layers)
    g = torch.Generator().manual_seed(seed)
    shape = (lambda c: (buckets, c)) if buckets > 1 else (lambda c: (c,))
    return SteeringVector({n: torch.randn(*shape(c), generator=g) for n, c in ch.items()}, {"name": f"v{seed}", **meta})


def call(pipe, gen, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(PROMPT, generator=gen(0), output_type="np", **kw).images


def capture(pipe, gen, layer, **kw):
    """The UNet's text input (CONTEXT_SITE) or a module output at every UNet call, as the next hook sees it."""
    seen = []
    if layer == CONTEXT_SITE:
        def spy(_m, args, kwargs):
            seen.append(kwargs["encoder_hidden_states"].detach().clone())
        handle = [None]

        def late(p, i, t, k):  # a pre-hook registered after the steering one sees the steered input
            if handle[0] is None:
                handle[0] = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
            return {}
    else:
        module = dict(pipe.unet.named_modules())[layer]
        handle = [None]

        def late(p, i, t, k):
            if handle[0] is None:
                handle[0] = module.register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o).detach().clone()))
            return {}
    try:
        call(pipe, gen, callback_on_step_end=late, **kw)
    finally:
        if handle[0] is not None:
            handle[0].remove()
    return seen  # calls 1.. (the hook is added after step 0)


def test_context_site_is_listed_and_steers_the_text_tokens_exactly(tiny_pipe, gen):
    assert CONTEXT_SITE in list_layers(tiny_pipe.unet, ("context", "resnets"))
    every = list_layers(tiny_pipe.unet, ("context", "resnets", "attentions", "attn2"))  # what `steer layers` lists
    assert every[0] == CONTEXT_SITE and any(n.endswith(".attn2") for n in every)
    attn2 = [n for n in every if n.endswith(".attn2")]
    assert all(every.index(n) > every.index(n.split(".transformer_blocks")[0]) for n in attn2)  # after its block
    assert layer_channels(tiny_pipe.unet, [CONTEXT_SITE])[CONTEXT_SITE] == tiny_pipe.unet.config.cross_attention_dim
    v = vec(tiny_pipe, [CONTEXT_SITE], seed=1)
    plain = capture(tiny_pipe, gen, CONTEXT_SITE)
    steered = capture(tiny_pipe, gen, CONTEXT_SITE, steering=v, steering_scale=0.5, steering_window=(0, 1), steering_branch="both")
    assert len(plain) == len(steered) == STEPS - 1
    for a, b in zip(plain, steered, strict=True):
        torch.testing.assert_close(b - a, (0.5 * v.directions[CONTEXT_SITE]).expand_as(a), atol=1e-5, rtol=0)
    parent = StableDiffusionPipeline.__call__(tiny_pipe, PROMPT, num_inference_steps=STEPS, generator=gen(0), output_type="np").images
    assert np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=0.0), parent)
    assert not np.array_equal(call(tiny_pipe, gen, steering=v, steering_scale=0.5, steering_window=(0, 1)), parent)


def test_split_branch_pushes_the_two_cfg_halves_opposite_ways(tiny_pipe, gen):
    v = vec(tiny_pipe, [CONTEXT_SITE], seed=2)
    plain = capture(tiny_pipe, gen, CONTEXT_SITE)
    steered = capture(tiny_pipe, gen, CONTEXT_SITE, steering=v, steering_scale=0.3, steering_window=(0, 1), steering_branch="split")
    d = 0.3 * v.directions[CONTEXT_SITE]
    for a, b in zip(plain, steered, strict=True):
        uncond, cond = (b - a).chunk(2)
        torch.testing.assert_close(cond, d.expand_as(cond), atol=1e-5, rtol=0)
        torch.testing.assert_close(uncond, (-d).expand_as(uncond), atol=1e-5, rtol=0)


def test_token_mode_with_norm_preservation_rotates_each_token_and_keeps_its_norm():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 7, 16, generator=g)
    v = torch.randn(16, generator=g)
    delta = torch.stack([v * 0.4, v * 0.4, torch.zeros(16), v * 2.0])
    moved = apply_delta(h, delta, "token", preserve_norm=False)
    torch.testing.assert_close(moved[0] - h[0], 0.4 * h[0].norm(dim=-1, keepdim=True) * v, atol=1e-5, rtol=0)
    kept = apply_delta(h, delta, "token", preserve_norm=True)
    torch.testing.assert_close(kept.norm(dim=-1), h.norm(dim=-1), atol=1e-4, rtol=0)
    assert torch.equal(kept[2], h[2])  # a zero delta leaves the row bit-identical
    cos = lambda x: torch.nn.functional.cosine_similarity(x, v.expand_as(x), dim=-1).mean()  # noqa: E731
    assert cos(h[0]) < cos(kept[0]) < cos(kept[3])  # larger strength turns tokens further toward v, monotonically
    fmap = torch.randn(2, 16, 3, 3, generator=g)  # (B, C, H, W): the channel axis is 1
    out = apply_delta(fmap, torch.stack([v, v]), "token", preserve_norm=True)
    torch.testing.assert_close(out.norm(dim=1), fmap.norm(dim=1), atol=1e-4, rtol=0)


def test_step_buckets_apply_each_bucket_on_its_share_of_the_run(tiny_pipe, gen):
    layer = "up_blocks.0.resnets.1"
    v = vec(tiny_pipe, [layer], seed=4, buckets=3)
    assert v.step_buckets == 3 and v.channels()[layer] == v.directions[layer].shape[1]
    module = dict(tiny_pipe.unet.named_modules())[layer]
    raw = []  # registered before the call: runs before the steering hook, sees the unsteered output of the same run
    pre = module.register_forward_hook(lambda m, a, o: raw.append(o.detach().clone()))
    try:
        steered = capture(tiny_pipe, gen, layer, steering=v, steering_scale=1.0, steering_window=(0, 1), steering_branch="both")
    finally:
        pre.remove()
    plan = LayerPlan(layer, v.directions[layer][None])
    for call_index, b in enumerate(steered, start=1):
        bucket = plan.bucket(call_index, STEPS)
        assert bucket == min(2, call_index * 3 // STEPS)
        a = raw[call_index]
        torch.testing.assert_close(b - a, v.directions[layer][bucket][None, :, None, None].expand_as(a), atol=1e-4, rtol=0)
    assert {plan.bucket(i, STEPS) for i in range(STEPS)} == {0, 1, 2}


def test_vectors_with_different_bucket_counts_combine_by_repeating_buckets(tiny_pipe):
    layer = "up_blocks.0.resnets.1"
    one, two = vec(tiny_pipe, [layer], seed=5), vec(tiny_pipe, [layer], seed=6, buckets=2)
    plan = build_layer_plans([one, two], None, normalize=False)[layer]
    assert tuple(plan.directions.shape) == (2, 2, one.channels()[layer])
    assert torch.equal(plan.directions[0, 0], plan.directions[0, 1])
    assert torch.equal(plan.directions[1], two.directions[layer])


def test_bucketed_vector_round_trips_and_old_one_dimensional_files_still_load(tiny_pipe, tmp_path):
    layer = "up_blocks.0.resnets.1"
    v = vec(tiny_pipe, [layer], seed=7, buckets=4, recommended={"branch": "split", "mode": "token", "preserve_norm": True, "window": [0.0, 1.0]})
    w = SteeringVector.load(v.save(tmp_path / "b.safetensors"))
    assert torch.equal(w.directions[layer], v.directions[layer]) and w.step_buckets == 4
    flat = SteeringVector.load(vec(tiny_pipe, [layer], seed=8).save(tmp_path / "f.safetensors"))
    assert flat.step_buckets == 1


def test_calls_use_the_direction_recommended_settings_unless_told_otherwise(tiny_pipe, gen):
    layer = "up_blocks.0.resnets.1"
    rec = {"window": [0.0, 1.0], "branch": "split", "mode": "token", "preserve_norm": True}
    v = vec(tiny_pipe, [layer], seed=9, recommended=rec)
    bare = SteeringVector(dict(v.directions), {"name": "bare"})
    by_metadata = call(tiny_pipe, gen, steering=v, steering_scale=0.2)
    explicit = call(tiny_pipe, gen, steering=bare, steering_scale=0.2, steering_window=(0, 1), steering_branch="split", steering_mode="token", steering_preserve_norm=True)
    assert np.array_equal(by_metadata, explicit)
    overridden = call(tiny_pipe, gen, steering=v, steering_scale=0.2, steering_branch="cond")
    assert not np.array_equal(overridden, by_metadata)
    with tiny_pipe.steering(v, scale=0.2, branch="cond"):
        assert np.array_equal(call(tiny_pipe, gen), overridden)


def test_config_rejects_unknown_branch_and_mode():
    with pytest.raises(ValueError, match="steering_branch"):
        SteeringConfig(branch="sideways")
    with pytest.raises(ValueError, match="steering_mode"):
        SteeringConfig(mode="multiply")


def test_open_prompts_drop_the_attribute_words():
    pos = ["a blue t-shirt", "a blue sneaker"]
    neg = ["a red t-shirt", "a green bag"]
    assert open_prompts(pos, neg) == ["a t-shirt", "a sneaker"]
    assert open_prompts(["a red ankle boot", "a green ankle boot"], ["a red bag", "a green coat"]) == ["a red", "a green"]


def test_default_learning_is_the_calibrated_text_direction_and_scale_one_is_its_strength(tiny_pipe, gen):
    rows = [0]
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, a: rows.__setitem__(0, rows[0] + a[0].shape[0]))
    try:
        with warnings.catch_warnings(record=True) as caught:  # random weights: calibration may not converge
            warnings.simplefilter("always")
            v = tiny_pipe.learn_direction(["a blue sneaker", "a blue bag"], ["a red sneaker", "a red bag"], num_inference_steps=4, progress=False)
    finally:
        handle.remove()
    assert v.layers == [CONTEXT_SITE] and v.metadata["preset"] == "text"
    # the sampler the strength was calibrated with is recorded with the sampling settings
    assert v.metadata["sampling"] == {"num_inference_steps": 4, "guidance_scale": 7.5, "scheduler": type(tiny_pipe.scheduler).__name__,
                                      "sampler": "ddim"}
    cal = v.metadata["calibration"]
    assert rows[0] == cal["unet_rows"] <= 2000
    assert cal["strength"] > 0 and abs(float(v.directions[CONTEXT_SITE].norm()) - cal["strength"]) < 1e-3
    assert cal["strength"] == pytest.approx(MARGIN * cal["closest"], rel=1e-3)
    assert cal["converged"] or any("calibration" in str(w.message) for w in caught)
    rec = v.metadata["recommended"]
    assert (rec["branch"], rec["mode"], rec["preserve_norm"], rec["window"]) == ("cond", "token", True, [0.0, 0.5])
    sweep = tiny_pipe(["a sneaker"] * 3, generator=[gen(0) for _ in range(3)], steering=v, steering_scale=[0.0, 0.5, 1.0], num_inference_steps=STEPS, output_type="np").images
    parent = StableDiffusionPipeline.__call__(tiny_pipe, ["a sneaker"] * 3, num_inference_steps=STEPS, generator=[gen(0) for _ in range(3)], output_type="np").images[0]
    np.testing.assert_array_equal(sweep[0], parent)
    assert 0 < np.abs(sweep[1] - parent).mean() < np.abs(sweep[2] - parent).mean()


def test_learning_window_is_recorded_and_used_by_the_calibration(tiny_pipe, gen):
    """``window=`` at learn time: the calibration steers only inside it and the vector recommends it."""
    windows = []
    original = tiny_pipe.__class__.__call__

    def spy(self, *args, **kwargs):
        if kwargs.get("steering") is not None:
            windows.append(tuple(kwargs["steering"].metadata["recommended"]["window"]))
        return original(self, *args, **kwargs)

    tiny_pipe.__class__.__call__ = spy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: calibration may not converge
            v = tiny_pipe.learn_direction("a blue sneaker", "a red sneaker", window=(0.0, 1.0), num_inference_steps=2, calibration_samples=2, progress=False)
    finally:
        tiny_pipe.__class__.__call__ = original
    # the sweep's 14 images (unsteered + 6 strengths, 2 seeds) in calls of batch_size (8) images, all over the window
    assert v.metadata["recommended"]["window"] == [0.0, 1.0] and windows == [(0.0, 1.0)] * 2
    for bad in ((0.5, 0.5), (-0.1, 0.5), (0.2, 1.5), (0.1,)):
        with pytest.raises(ValueError, match="^window must"):
            tiny_pipe.learn_direction("a blue sneaker", "a red sneaker", window=bad, calibrate=False)


def test_auto_window_calibrates_each_candidate_on_shared_samples_and_keeps_the_closest(tiny_pipe, gen):
    """``window="auto"``: one calibration per candidate window, the positives' and unsteered samples drawn once, the
    window whose samples come closest to the positives' recorded and recommended (removal still to the run's end)."""
    from steer.calibrate import DEFAULT_GRID, WINDOW_CHOICE_GRID
    from steer.learn import AUTO_WINDOWS

    rows, windows = [0], []
    original = tiny_pipe.__class__.__call__

    def spy(self, *args, **kwargs):
        if kwargs.get("steering") is not None:
            windows.append(tuple(kwargs.get("steering_window") or kwargs["steering"].metadata["recommended"]["window"]))
        return original(self, *args, **kwargs)

    pos, neg = ["a blue sneaker", "a blue bag"], ["a sneaker", "a bag"]
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, a: rows.__setitem__(0, rows[0] + a[0].shape[0]))
    tiny_pipe.__class__.__call__ = spy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: calibration may not converge
            fixed = tiny_pipe.learn_direction(pos, neg, num_inference_steps=2, calibration_samples=2, progress=False,
                                              calibration_grid=WINDOW_CHOICE_GRID)
            rows[0], windows[:] = 0, []
            auto = tiny_pipe.learn_direction(pos, neg, window="auto", num_inference_steps=2, calibration_samples=2, progress=False)
    finally:
        tiny_pipe.__class__.__call__ = original
        handle.remove()
    choice, cal, rec = auto.metadata["window_choice"], auto.metadata["calibration"], auto.metadata["recommended"]
    assert [tuple(w) for w in AUTO_WINDOWS] == [tuple(w) for w in choice["windows"]]
    # steered: the shared first part (4 strengths x 2 seeds), then both continuations (16 images, in calls of 8)
    assert windows == [(0.0, 1.0)] * 3
    # 2 samples x 2 CFG rows: positives and unsteered open samples over both steps, the 4 grid strengths over the
    # first step once (both windows steer it), then over the second twice (unsteered: the first window; steered: the
    # second): 8 sets, as many rows as a plain call
    assert cal["branched_at"] == 1
    assert rows[0] == cal["unet_rows"] == (2 * 2 + len(WINDOW_CHOICE_GRID) * 1 + 2 * len(WINDOW_CHOICE_GRID) * 1) * 2 * 2
    assert cal["unet_rows"] == (2 + len(DEFAULT_GRID)) * 2 * 2 * 2  # a plain call's on the default grid
    # the first candidate is the default window, calibrated on the same samples as a plain call on the same grid
    assert choice["distances"][0] == pytest.approx(fixed.metadata["calibration"]["distance"], abs=1e-4)
    assert choice["strengths"][0] == pytest.approx(fixed.metadata["calibration"]["strength"], abs=1e-4)
    candidates = [i for i, ok in enumerate(choice["converged"]) if ok] or [0]
    best = min(candidates, key=lambda i: choice["distances"][i])
    if choice["by"] == "colour":  # an appearance edit (the route chose every reader): the closest by colour
        assert auto.metadata["route_choice"]["readers"] is None
        best = min(candidates, key=lambda i: choice["colour_distances"][i])
    assert choice["chosen"] == rec["window"] == cal["window"] == list(AUTO_WINDOWS[best])
    assert rec["removal_window"] == [rec["window"][0], 1.0]
    assert abs(float(auto.directions[CONTEXT_SITE].norm()) - choice["strengths"][best]) < 1e-3
    with pytest.raises(ValueError, match="^window='auto' chooses the window by calibration"):
        tiny_pipe.learn_direction(pos, neg, window="auto", calibrate=False)
    with pytest.raises(ValueError, match="^window must be a pair .* or 'auto', got 'late'"):
        tiny_pipe.learn_direction(pos, neg, window="late", calibrate=False)


def test_calibration_grid_is_an_argument_and_bad_grids_are_one_line_errors(tiny_pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        v = tiny_pipe.learn_direction("a blue sneaker", "a sneaker", num_inference_steps=2, calibration_samples=2, calibration_grid=(0.4, 0.1, 0.2), progress=False)
    cal = v.metadata["calibration"]
    # the window choice (the default): positives and open samples over both steps, the grid over the first step once
    # and over the second twice (2 samples x 2 CFG rows)
    assert cal["grid"] == [0.1, 0.2, 0.4] and len(cal["distances"]) == 3 and cal["unet_rows"] == (2 * 2 + 3 * 1 + 2 * 3 * 1) * 2 * 2
    for bad in ((), (0.0, 0.2), (0.1, float("nan")), (0.1, float("inf")), ("x",), 5):
        with pytest.raises(ValueError, match="^the calibration grid must"):
            tiny_pipe.learn_direction("a blue sneaker", "a sneaker", num_inference_steps=2, calibration_samples=2, calibration_grid=bad, progress=False)


def test_paper_and_casteer_presets(tiny_pipe):
    paper = tiny_pipe.learn_direction("a blue sneaker", preset="paper", num_samples=2, num_inference_steps=3, progress=False)
    assert paper.metadata["method"] == "mean" and paper.metadata["recommended"]["branch"] == "cond"
    assert all(n.startswith("up_blocks") and ".resnets." in n for n in paper.layers)
    cas = tiny_pipe.learn_direction("a blue sneaker", "a red sneaker", preset="casteer", calibrate=False, num_samples=2, num_inference_steps=4, step_buckets=2, progress=False)
    assert all(n.endswith("attn2") for n in cas.layers) and cas.step_buckets == 2
    assert cas.metadata["recommended"]["branch"] == "split" and "calibration" not in cas.metadata  # uncalibrated:
    for d in cas.directions.values():  # unit norm per bucket, so its scale is a fraction of each token's norm
        torch.testing.assert_close(d.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    # 4 steps in 3 buckets: the steering hooks' mapping (steps 0-1 | 2 | 3), no bucket left empty
    uneven = tiny_pipe.learn_direction("a blue sneaker", "a red sneaker", preset="casteer", calibrate=False, num_samples=2, num_inference_steps=4, step_buckets=3, progress=False)
    assert uneven.step_buckets == 3 and [LayerPlan("x", torch.zeros(1, 3, 1)).bucket(k, 4) for k in range(4)] == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="step_buckets"):
        tiny_pipe.learn_direction("a blue sneaker", "a red sneaker", preset="casteer", calibrate=False, num_samples=2, num_inference_steps=2, step_buckets=3, progress=False)
    with pytest.raises(ValueError, match="preset"):
        tiny_pipe.learn_direction("a", "b", preset="magic")


def test_compiled_unet_steers_the_text_site_with_the_calibrated_settings_without_recompiling(gen):
    from torch._dynamo.utils import counters

    from steer.testing import tiny_pipeline

    torch._dynamo.reset()
    pipe = tiny_pipeline(seed=0)
    rec = {"window": [0.0, 1.0], "branch": "split", "mode": "token", "preserve_norm": True}
    v = vec(pipe, [CONTEXT_SITE], seed=11, recommended=rec, fixed_tokens={CONTEXT_SITE: 1})  # as learned ones are
    every_token = vec(pipe, [CONTEXT_SITE], seed=11, recommended=rec)  # as files from before fixed_tokens
    eager = {s: call(pipe, gen, steering=v, steering_scale=s, num_inference_steps=4) for s in (0.0, 0.3, -0.3)}
    eager_every_token = call(pipe, gen, steering=every_token, steering_scale=0.3, num_inference_steps=4)
    leveled = vec(pipe, [CONTEXT_SITE], seed=11, recommended=rec, reference_level={CONTEXT_SITE: [0.0] * pipe.tokenizer.model_max_length})
    eager_removed = call(pipe, gen, steering=leveled, steering_scale=-0.3, steering_negative="remove", num_inference_steps=4)
    assert not np.array_equal(eager_removed, eager[0.0])
    assert not np.array_equal(eager_every_token, eager[0.3])
    pipe.compile_unet(layers=[CONTEXT_SITE, "up_blocks.0.resnets.1"], backend="eager")
    call(pipe, gen, steering=v, steering_scale=0.3, num_inference_steps=4)  # mode/preserve are graph constants
    counters.clear()
    for s in (0.0, 0.3, -0.3, 0.3):
        np.testing.assert_allclose(call(pipe, gen, steering=v, steering_scale=s, num_inference_steps=4), eager[s], atol=1e-6, rtol=0)
    assert counters["stats"]["unique_graphs"] == 0  # no recompile after the warm-up call
    compiled_every_token = call(pipe, gen, steering=every_token, steering_scale=0.3, num_inference_steps=4)
    np.testing.assert_allclose(compiled_every_token, eager_every_token, atol=1e-6, rtol=0)
    # the take-away too (steered before the graph; tests/test_readers.py has the routed cases)
    np.testing.assert_array_equal(call(pipe, gen, steering=leveled, steering_scale=-0.3, steering_negative="remove", num_inference_steps=4), eager_removed)
    torch._dynamo.reset()


def test_remove_excess_takes_tokens_back_to_the_level_and_leaves_the_rest():
    from steer.engine.steering import remove_excess

    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(1, 8, generator=g), dim=-1)
    h = torch.randn(3, 4, 8, generator=g)
    unit = h / h.norm(dim=-1, keepdim=True)
    level = (unit[0] @ u[0]) - torch.tensor([0.3, -0.2, 0.1, -0.4])  # row 0: positions 0 and 2 above the level
    out = remove_excess(h, u, level[None], torch.tensor([[1.0], [0.0], [0.5]]))
    torch.testing.assert_close(out.norm(dim=-1), h.norm(dim=-1))  # norms kept
    assert torch.equal(out[1], h[1])  # amount 0: bit-identical
    proj = (out[0] / out[0].norm(dim=-1, keepdim=True)) @ u[0]
    torch.testing.assert_close(proj[[1, 3]], (unit[0] @ u[0])[[1, 3]])  # at or below the level: untouched
    torch.testing.assert_close(proj[[0, 2]], level[[0, 2]])  # above it: amount 1 lands exactly on the level
    half_level = (unit[2] @ u[0]) - 1.0  # row 2 entirely above this level: amount 0.5 removes half the excess
    out2 = remove_excess(h, u, half_level.expand(1, 4), torch.tensor([[0.0], [0.0], [0.5]]))
    torch.testing.assert_close((out2[2] / out2[2].norm(dim=-1, keepdim=True)) @ u[0], (unit[2] @ u[0]) - 0.5)
    # amounts above 1 act as 1: never below the level, norms kept (amount 2 crossed it; 1e4 grew norms 6000x)
    for big in (2.0, 10.0, 1e4):
        over = remove_excess(h, u, level[None], torch.tensor([[big], [0.0], [0.0]]))
        torch.testing.assert_close(over, remove_excess(h, u, level[None], torch.tensor([[1.0], [0.0], [0.0]])))
        torch.testing.assert_close(over.norm(dim=-1), h.norm(dim=-1))
    # a zero direction removes nothing, whatever level it records (a negative one shrank tokens by up to 21 %)
    zero = torch.zeros(1, 8)
    assert torch.equal(remove_excess(h, zero, torch.full((1, 4), -0.5), torch.ones(3, 1)), h)
    both = remove_excess(h, torch.cat([u, zero]), torch.cat([level[None], torch.full((1, 4), -0.5)]), torch.ones(3, 2))
    assert torch.equal(both, remove_excess(h, u, level[None], torch.ones(3, 1)))


def test_the_text_tokens_are_steered_once_per_step_bucket_and_as_if_steered_at_every_call(tiny_pipe, gen, monkeypatch):
    """A pipeline gives the denoiser the same text tensor at every step, so the text site steers it once per step
    bucket (and window mask, CFG branch), and the removal's device tensors are made once per bucket: on a GPU a
    step's end waits for the device, so work at the start of each denoiser call is not hidden (the take-away cost
    2.5 % at SD1.5 size before, docs/benchmarks.md). The images are those of steering at every call, and a step
    callback that changes the text tokens in place is seen."""
    from steer.engine import steering

    tokens = tiny_pipe.tokenizer.model_max_length
    add = vec(tiny_pipe, [CONTEXT_SITE], seed=3, buckets=2)
    away = vec(tiny_pipe, [CONTEXT_SITE], seed=4, buckets=2, reference_level={CONTEXT_SITE: [0.0] * tokens})
    take_away = dict(steering=[add, away], steering_scale=[0.5, -1.0], steering_negative="remove", steering_window=(0, 1))
    removed, made = [], []
    real_remove, real_active = steering.remove_excess, steering.removal_active
    monkeypatch.setattr(steering, "remove_excess", lambda *a: removed.append(1) or real_remove(*a))
    monkeypatch.setattr(steering, "removal_active", lambda *a: made.append(1) or real_active(*a))

    def halve(_pipe, _i, _t, kwargs):  # changes the tokens the denoiser is given, in place
        kwargs["prompt_embeds"].mul_(0.5)
        return {}

    changed = dict(callback_on_step_end=halve, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    reused = call(tiny_pipe, gen, **take_away)
    assert len(removed) == 2 and len(made) == 2  # 6 steps with CFG in one batch: 6 denoiser calls, 2 step buckets
    reused_changed = call(tiny_pipe, gen, **take_away, **changed)
    with torch.inference_mode():  # inference tensors keep no version counter: steered at every call
        in_inference_mode = call(tiny_pipe, gen, **take_away)
    routed = call(tiny_pipe, gen, **take_away, steering_readers="detail")

    monkeypatch.setattr(steering.SteeringSession, "_text_reuse_key", lambda *a: None)  # steered at every call
    real_inputs = steering.SteeringSession._removal_inputs

    def every_call(self, plan, h):
        plan.cache.clear()
        return real_inputs(self, plan, h)

    monkeypatch.setattr(steering.SteeringSession, "_removal_inputs", every_call)
    removed.clear(), made.clear()
    np.testing.assert_array_equal(call(tiny_pipe, gen, **take_away), reused)
    assert len(removed) == STEPS and len(made) == STEPS
    np.testing.assert_array_equal(call(tiny_pipe, gen, **take_away, **changed), reused_changed)
    np.testing.assert_array_equal(in_inference_mode, reused)
    np.testing.assert_array_equal(call(tiny_pipe, gen, **take_away, steering_readers="detail"), routed)
    assert not np.array_equal(reused_changed, reused) and not np.array_equal(routed, reused)
    assert not np.array_equal(reused, call(tiny_pipe, gen, steering=add, steering_scale=0.5, steering_window=(0, 1)))


def test_learned_text_directions_record_their_level_and_negative_remove_acts_only_on_what_the_prompt_carries(tiny_pipe, gen):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        red = tiny_pipe.learn_direction(["a red sneaker", "a red bag"], ["a sneaker", "a bag"], num_inference_steps=2, calibration_samples=2, progress=False)
    level = red.metadata["reference_level"][CONTEXT_SITE]
    assert len(level) == tiny_pipe.tokenizer.model_max_length and all(np.isfinite(level))
    plain = call(tiny_pipe, gen, steering=red, steering_scale=0.0)
    removed = call(tiny_pipe, gen, steering=red, steering_scale=-1.0, steering_negative="remove", steering_window=(0, 1))
    subtracted = call(tiny_pipe, gen, steering=red, steering_scale=-1.0, steering_window=(0, 1))
    assert not np.array_equal(removed, plain) and not np.array_equal(removed, subtracted)
    # the cond half's red tokens come back to the level; the unconditional half is not touched
    seen = capture(tiny_pipe, gen, CONTEXT_SITE, steering=red, steering_scale=-1.0, steering_negative="remove", steering_window=(0, 1))
    base = capture(tiny_pipe, gen, CONTEXT_SITE)
    assert torch.equal(seen[0][:1], base[0][:1]) and not torch.equal(seen[0][1:], base[0][1:])
    assert torch.equal(seen[0][:, 0], base[0][:, 0])  # the shared start token is left alone by removal too
    u = red.directions[CONTEXT_SITE] / red.directions[CONTEXT_SITE].norm()
    proj = torch.nn.functional.normalize(seen[0][1], dim=-1) @ u
    assert bool((proj <= torch.tensor(level) + 1e-5).all()) and bool((proj < (torch.nn.functional.normalize(base[0][1], dim=-1) @ u) - 1e-3).any())
    # a vector without a recorded level cannot be removed: one-line error naming the option
    with pytest.raises(ValueError, match="reference level"):
        call(tiny_pipe, gen, steering=vec(tiny_pipe, [CONTEXT_SITE]), steering_scale=-1.0, steering_negative="remove")
    with pytest.raises(ValueError, match="steering_negative must be one of"):
        call(tiny_pipe, gen, steering=red, steering_negative="erase")


def test_removal_goes_on_to_the_end_of_the_run_while_the_addition_keeps_its_window(tiny_pipe, gen):
    """Text directions recommend removing until the end of the run (the prompt's own value would come back in the
    unsteered steps after the window); the additive part keeps the window; a call can say otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        red = tiny_pipe.learn_direction(["a red sneaker", "a red bag"], ["a sneaker", "a bag"], num_inference_steps=2, calibration_samples=2, progress=False)
        blue = tiny_pipe.learn_direction(["a blue sneaker", "a blue bag"], ["a sneaker", "a bag"], num_inference_steps=2, calibration_samples=2, progress=False)
    assert red.metadata["recommended"]["window"] == [0.0, 0.5] and red.metadata["recommended"]["removal_window"] == [0.0, 1.0]
    remove = dict(steering_negative="remove", steering_window=(0, 0.5))
    base = capture(tiny_pipe, gen, CONTEXT_SITE)
    both = capture(tiny_pipe, gen, CONTEXT_SITE, steering=[blue, red], steering_scale=[1.0, -1.0], **remove)
    removed = capture(tiny_pipe, gen, CONTEXT_SITE, steering=red, steering_scale=-1.0, **remove)
    added = capture(tiny_pipe, gen, CONTEXT_SITE, steering=blue, steering_scale=1.0, **remove)
    stopped = capture(tiny_pipe, gen, CONTEXT_SITE, steering=red, steering_scale=-1.0, steering_removal_window=(0, 0.5), **remove)
    older = SteeringVector(dict(red.directions), {**red.metadata, "recommended": {k: v for k, v in red.metadata["recommended"].items() if k != "removal_window"}})
    old_file = capture(tiny_pipe, gen, CONTEXT_SITE, steering=older, steering_scale=-1.0, **remove)  # files from before: the window
    assert torch.equal(old_file[0], removed[0]) and torch.equal(old_file[3], base[3])
    # calls 1, 2 are inside the window (steps 0-2 of 6), calls 3-5 after it
    for i in (0, 1):
        assert not torch.equal(both[i], removed[i]) and not torch.equal(added[i], base[i])
    for i in (2, 3, 4):
        assert torch.equal(both[i], removed[i])  # the addition has stopped, the removal goes on
        assert not torch.equal(removed[i][1:], base[i][1:]) and torch.equal(removed[i][:1], base[i][:1])
        assert torch.equal(added[i], base[i]) and torch.equal(stopped[i], base[i])
    with pytest.raises(ValueError, match="steering_removal_window must satisfy"):
        call(tiny_pipe, gen, steering=red, steering_scale=-1.0, steering_removal_window=(0.8, 0.2), **remove)
    # under 'subtract' a removal window removes nothing (it ran as without it): one line, except the direction's own
    # one, which callers passing a direction's recorded settings whole (app, batch, replay) carry either way
    with pytest.raises(ValueError, match="steering_removal_window sets where steering_negative='remove' acts: under 'subtract'"):
        call(tiny_pipe, gen, steering=red, steering_scale=-1.0, steering_removal_window=(0, 0.5))
    with pytest.raises(ValueError, match="under 'subtract' nothing is removed"):
        call(tiny_pipe, gen, steering=older, steering_scale=-1.0, steering_removal_window=(0, 1))
    own = capture(tiny_pipe, gen, CONTEXT_SITE, steering=red, steering_scale=-1.0, steering_removal_window=[0, 1])
    assert all(torch.equal(a, b) for a, b in zip(own, capture(tiny_pipe, gen, CONTEXT_SITE, steering=red, steering_scale=-1.0), strict=True))
    # the CLI, batch and replay pass what every listed direction recommends, whole: a list with a direction recording
    # no removal window, one at 0 in every row (dropped before the call is built) and a slider's sides all pass
    from steer.config import STEERING_DEFAULTS, SteeringConfig, recommended_settings
    from steer.testing import random_vector

    plain = random_vector(tiny_pipe, ["up_blocks.0.resnets.0"], seed=4)
    whole = SteeringConfig.from_settings({**STEERING_DEFAULTS, **recommended_settings([blue, plain])}).to_settings()
    assert whole["steering_removal_window"] == ((0.0, 1.0), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor a hint to take away a direction the call lists
        for scales in ([1.0, 1.0], [1.0, 0.0], [0.0, 1.0]):
            call(tiny_pipe, gen, steering=[blue, plain], **{**whole, "steering_scale": scales})


def test_shared_lead_counts_the_leading_positions_every_prompt_shares():
    from steer.learn import shared_lead

    a = torch.randn(3, 5, 4)
    a[:, :2] = a[0, :2]
    assert shared_lead([a[:2], a[2:]]) == 2
    assert shared_lead([torch.randn(2, 5, 4)]) == 0
    assert shared_lead([a[:1], a[:1]]) == 0  # nothing varies at all: nothing to tell apart, nothing skipped


def test_learned_text_directions_leave_the_shared_start_token_alone(tiny_pipe, gen, tmp_path):
    """CLIP's start token is the same for every prompt (the denoiser never saw it vary): learned text directions
    record it and steering leaves it bit-identical; a file without the record (older ones) steers every position."""
    red = tiny_pipe.learn_direction(["a red sneaker", "a red bag"], ["a sneaker", "a bag"], calibrate=False, progress=False)
    assert red.metadata["fixed_tokens"] == {CONTEXT_SITE: 1}
    old = SteeringVector(red.directions, {k: v for k, v in red.metadata.items() if k != "fixed_tokens"})
    base = capture(tiny_pipe, gen, CONTEXT_SITE)[0]
    kw = dict(steering_scale=1.0, steering_window=(0, 1))
    new = capture(tiny_pipe, gen, CONTEXT_SITE, steering=red, **kw)[0]
    assert torch.equal(new[:, 0], base[:, 0]) and not torch.equal(new[:, 1:], base[:, 1:])
    assert not torch.equal(capture(tiny_pipe, gen, CONTEXT_SITE, steering=old, **kw)[0][:, 0], base[:, 0])
    # combined, a position is left alone only when every vector there leaves it alone
    assert torch.equal(capture(tiny_pipe, gen, CONTEXT_SITE, steering=[red, red], steering_scale=[1.0, 0.5])[0][:, 0], base[:, 0])
    assert not torch.equal(capture(tiny_pipe, gen, CONTEXT_SITE, steering=[red, old], steering_scale=[1.0, 0.5])[0][:, 0], base[:, 0])
    assert (red + 2 * red).metadata["fixed_tokens"] == {CONTEXT_SITE: 1} and "fixed_tokens" not in (red - old).metadata
    assert SteeringVector.load(red.save(tmp_path / "red.safetensors")).metadata["fixed_tokens"] == {CONTEXT_SITE: 1}
    # provenance tells them apart (the same tensors steer differently); a file claiming every position is an error
    assert red.digest() != old.digest() and old.digest() == SteeringVector(red.directions, {}).digest()
    length = tiny_pipe.tokenizer.model_max_length
    greedy = SteeringVector(red.directions, {**red.metadata, "fixed_tokens": {CONTEXT_SITE: length}})
    with pytest.raises(ValueError, match=f"first {length} token positions alone, but this call has only {length} tokens"):
        call(tiny_pipe, gen, steering=greedy, steering_scale=1.0)


def test_batch_size_bounds_every_learning_and_calibration_call_and_leaves_the_result(tiny_pipe):
    """``batch_size`` caps the images per call in the calibration too (its sweeps batch up to 16 images at these
    settings), so a large model that runs out of memory can learn with a smaller one; each image keeps its seed."""
    widest, learned = {}, {}
    for size in (None, 2):
        rows: list[int] = []
        handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, a, rows=rows: rows.append(a[0].shape[0]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random weights: calibration may not converge
                learned[size] = tiny_pipe.learn_direction(["a blue sneaker", "a blue bag"], ["a sneaker", "a bag"], num_inference_steps=2,
                                                          calibration_samples=2, batch_size=size or 64, progress=False)
        finally:
            handle.remove()
        widest[size] = max(rows)
    assert widest == {None: 16 * 2, 2: 2 * 2}, "2 images per call: 4 UNet rows with CFG"
    a, b = learned[None].metadata["calibration"], learned[2].metadata["calibration"]
    assert b["distances"] == pytest.approx(a["distances"], rel=1e-5) and b["strength"] == pytest.approx(a["strength"], rel=1e-5)
    assert b["unet_rows"] == a["unet_rows"]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"batch_size": 0}, "^batch_size must be between 1 and 4096, got 0$"),
        ({"calibration_samples": 1.5}, "^calibration_samples must be an integer, got a number$"),
        ({"num_inference_steps": -2}, "^num_inference_steps must be between 1 and 10000, got -2$"),
        ({"steering_window": (0.0, 1.0)}, r"^learn_direction does not take steering_window: it steers its own calibration runs"),
        ({"steering": None, "steering_scale": 2.0}, r"^learn_direction does not take steering, steering_scale: "),
    ],
)
def test_learning_options_are_checked_before_any_sampling(tiny_pipe, option, message):
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            tiny_pipe.learn_direction("a blue sneaker", "a sneaker", progress=False, **option)
    finally:
        handle.remove()
    assert calls == []


@pytest.mark.parametrize("options", [{}, {"preset": "casteer", "num_samples": 2, "num_inference_steps": 4},
                                     {"preset": "paper", "method": "mean_diff", "mode": "fast", "num_samples": 2}])
def test_prompts_that_differ_only_past_what_the_text_encoder_reads_are_one_line_before_any_sampling(tiny_pipe, options):
    """CLIP reads 77 tokens: "<long prompt> blue" and "<long prompt>" are the same prompt to the model, so there is no
    direction (before: a zero vector with a calibration warning; with different seeds per set, pure sampling noise)."""
    long = " ".join(["a photo of a sneaker on a table"] * 15)
    calls = []
    handle = tiny_pipe.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"^the positive and negative sets give the same representation at encoder_hidden_states "
                                             r"\(difference 0.0e\+00 of its typical norm\): there is no direction to learn"):
            tiny_pipe.learn_direction([long + " blue"], [long], progress=False, **options)
    finally:
        handle.remove()
    assert calls == []
    # a word inside what the encoder reads still learns
    v = tiny_pipe.learn_direction(["blue " + long], [long], calibrate=False, progress=False)
    assert float(v.directions[CONTEXT_SITE].norm()) > 0
