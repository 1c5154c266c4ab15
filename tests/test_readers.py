"""`steering_readers`: a text-token direction read only by chosen cross-attentions (the rest read the prompt as written).

On the tiny random SD pipeline: which cross-attentions receive steered tokens, equality with the default when every
one reads them, recorded and applied recommendations, one-line errors, hook cleanup, batch jobs and recipes.
"""

import warnings

import numpy as np
import pytest
import torch

from steer.config import SteeringConfig
from steer.denoisers import CONTEXT_SITE, LayerError, cross_attention_sites, text_readers
from steer.errors import SchemaError
from steer.jobs import run as batch
from steer.recipe import read_recipe
from steer.testing import no_hooks_left, random_vector, run_in_threads, step_barrier
from steer.validation import check_recommended
from steer.vectors import SteeringVector

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py
STEPS = 4


def call(pipe, prompt="a red sneaker", seed=0, **kw):
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS, output_type="np", **kw).images


@pytest.fixture(scope="module")
def text_vector(tiny_pipe):
    return random_vector(tiny_pipe, [CONTEXT_SITE], seed=1, fingerprint=True, recommended={"branch": "split", "mode": "token", "preserve_norm": True, "window": [0.0, 1.0]})


def tokens_read(pipe, prompt="a red sneaker", **kw) -> dict[str, list[torch.Tensor]]:
    """The ``encoder_hidden_states`` each cross-attention received, per call, in one steered generation."""
    seen: dict[str, list[torch.Tensor]] = {}
    modules = dict(pipe.unet.named_modules())
    handles = []
    for name in cross_attention_sites(pipe.unet):
        def grab(_m, _args, kwargs, name=name):
            seen.setdefault(name, []).append(kwargs["encoder_hidden_states"].detach().clone())

        # appended after the call's own reader hooks (registered later, at call time) would miss them: tap from the
        # first step's end, as steer.testing.capture_site does
        handles.append((modules[name], grab))
    late = []

    def arm(*_a):
        if not late:
            late.extend(m.register_forward_pre_hook(g, with_kwargs=True) for m, g in handles)
        return {}

    try:
        call(pipe, prompt, callback_on_step_end=arm, **kw)
    finally:
        for h in late:
            h.remove()
    return seen


def test_groups_name_the_down_mid_and_up_cross_attentions(tiny_pipe):
    sites = cross_attention_sites(tiny_pipe.unet)
    layout, detail = text_readers(tiny_pipe.unet, ["layout"]), text_readers(tiny_pipe.unet, ["detail"])
    assert layout and detail and sorted(layout + detail) == sorted(sites)
    assert all(n.startswith(("down_blocks.", "mid_block.")) for n in layout)
    assert all(n.startswith("up_blocks.") for n in detail)
    assert text_readers(tiny_pipe.unet, ["all"]) == sites
    assert text_readers(tiny_pipe.unet, ["mid_block.*"]) == [n for n in sites if n.startswith("mid_block.")]


def test_only_the_chosen_cross_attentions_read_the_steered_tokens(tiny_pipe, text_vector):
    plain = tokens_read(tiny_pipe)
    layout = tokens_read(tiny_pipe, steering=text_vector, steering_scale=0.5, steering_readers="layout")
    routed = set(text_readers(tiny_pipe.unet, ["layout"]))
    for name, calls in layout.items():
        same = all(torch.equal(a, b) for a, b in zip(calls, plain[name], strict=True))
        assert same == (name not in routed), name  # the up blocks read the prompt's own tokens, bit for bit


def test_every_reader_equals_the_default_and_layout_differs(tiny_pipe, text_vector):
    default = call(tiny_pipe, steering=text_vector, steering_scale=0.5)
    assert np.array_equal(call(tiny_pipe, steering=text_vector, steering_scale=0.5, steering_readers="all"), default)
    layout = call(tiny_pipe, steering=text_vector, steering_scale=0.5, steering_readers="layout")
    assert not np.array_equal(layout, default) and not np.array_equal(layout, call(tiny_pipe))
    assert np.array_equal(call(tiny_pipe, steering=text_vector, steering_scale=0.0, steering_readers="layout"), call(tiny_pipe))
    assert no_hooks_left(tiny_pipe.unet)


def test_a_recorded_route_applies_unless_the_call_says_otherwise(tiny_pipe, text_vector, tmp_path):
    routed = SteeringVector(text_vector.directions, {**text_vector.metadata, "recommended": {**text_vector.metadata["recommended"], "readers": ["layout"]}})
    loaded = SteeringVector.load(routed.save(tmp_path / "routed.safetensors"))
    assert loaded.metadata["recommended"]["readers"] == ["layout"]
    explicit = call(tiny_pipe, steering=text_vector, steering_scale=0.5, steering_readers="layout")
    assert np.array_equal(call(tiny_pipe, steering=loaded, steering_scale=0.5), explicit)
    everyone = call(tiny_pipe, steering=loaded, steering_scale=0.5, steering_readers="all")
    assert np.array_equal(everyone, call(tiny_pipe, steering=text_vector, steering_scale=0.5))


def test_learn_direction_records_the_route_and_calibrates_through_it(tiny_pipe):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights render no attribute
        v = tiny_pipe.learn_direction(["a red sneaker"], ["a sneaker"], readers="layout", num_inference_steps=3, calibration_samples=2, progress=False)
        w = tiny_pipe.learn_direction(["a red sneaker"], ["a sneaker"], readers="all", num_inference_steps=3, calibration_samples=2, progress=False)
    assert v.metadata["recommended"]["readers"] == ["layout"] and "readers" not in w.metadata["recommended"]
    unit = lambda x: x.directions[CONTEXT_SITE] / x.directions[CONTEXT_SITE].norm()  # noqa: E731
    assert torch.allclose(unit(v), unit(w))  # the same direction; the route changes where it is read (and its strength)
    with pytest.raises(ValueError, match="readers= routes text-token directions"):
        tiny_pipe.learn_direction(["a red sneaker"], ["a sneaker"], preset="paper", readers="layout", progress=False)


@pytest.mark.parametrize(
    ("readers", "needle"),
    [("nowhere", "steering_readers 'nowhere' names no cross-attention"), (["up_blocks.7.*"], "'up_blocks.7.*'"), ([], "steering_readers must be"), ([3], "steering_readers must be"),
     # written as one route per direction (as windows are), it was their union: every reader, silently
     (["layout", "detail"], "would read through every one of those routes at once, not one route per direction")],
)
def test_bad_readers_are_one_line_errors_before_sampling(tiny_pipe, text_vector, readers, needle):
    with pytest.raises((ValueError, LayerError)) as err:
        call(tiny_pipe, steering=text_vector, steering_readers=readers)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert no_hooks_left(tiny_pipe.unet)


def test_readers_refuse_directions_that_are_not_text_tokens(tiny_pipe):
    v = random_vector(tiny_pipe, ["up_blocks.1.resnets.0"], seed=2)
    with pytest.raises(ValueError, match="steering_readers routes text-token directions"):
        call(tiny_pipe, steering=v, steering_readers="layout")


def test_hooks_are_removed_when_a_routed_call_fails(tiny_pipe, text_vector):
    def boom(*_a):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        call(tiny_pipe, steering=text_vector, steering_readers="layout", callback_on_step_end=boom)
    assert no_hooks_left(tiny_pipe.unet)


def test_transformer_families_refuse_readers_in_one_line():
    from steer.testing.pixart import tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline(seed=0)
    with pytest.raises(LayerError, match="steering_readers needs a UNet denoiser"):
        text_readers(pipe.transformer, ["layout"])


def test_recorded_readers_are_validated_and_kept_in_recipes(tiny_pipe, text_vector, tmp_path):
    check_recommended({"readers": ["layout"]}, "recommended")
    with pytest.raises(SchemaError, match="readers"):
        check_recommended({"readers": [7]}, "recommended")
    assert "readers" not in SteeringConfig().to_dict()  # recipes of calls without a route read as before
    assert SteeringConfig(readers="layout").to_dict()["readers"] == ["layout"]
    path = text_vector.save(tmp_path / "text.safetensors")
    jobs = [
        {"prompt": "a bag", "seed": 5, "num_inference_steps": STEPS, "directions": [{"path": str(path), "scale": 0.5}], "steering_readers": "layout", "name": "routed"},
        {"prompt": "a bag", "seed": 5, "num_inference_steps": STEPS, "directions": [{"path": str(path), "scale": 0.5}], "steering_readers": "nowhere", "name": "bad"},
    ]
    result = batch.run(jobs, tiny_pipe, tmp_path / "out", batch_size=1, model="tiny", progress=False)
    recipe = read_recipe(tmp_path / "out" / "routed.png")
    assert recipe["readers"] == ["layout"]
    assert [f["line"] for f in result["failures"]] == [2] and "'nowhere'" in result["failures"][0]["reason"]
    assert not (tmp_path / "out" / "bad.png").exists()


def test_the_app_applies_and_records_a_directions_readers(tiny_pipe, text_vector):
    from steer.app import helpers as H

    routed = SteeringVector(text_vector.directions, {**text_vector.metadata, "recommended": {**text_vector.metadata["recommended"], "readers": ["layout"]}})
    settings = H.GenerateSettings(prompt="a bag", steps=STEPS).validated(tiny_pipe)
    assert settings.steering_config(tiny_pipe, routed).readers == ("layout",)
    assert settings.steering_config(tiny_pipe, text_vector).readers is None
    assert settings.recipe(tiny_pipe, routed, 0.5)["steering"]["readers"] == ["layout"]
    assert "readers" not in settings.recipe(tiny_pipe, text_vector, 0.5)["steering"]


def test_the_apps_direction_summary_says_who_reads_it(text_vector):
    from steer.app import helpers as H

    routed = SteeringVector(text_vector.directions, {**text_vector.metadata, "recommended": {**text_vector.metadata["recommended"], "readers": ["detail"]}})
    assert "read by `detail` only" in H.direction_summary(routed)
    assert "read by" not in H.direction_summary(text_vector)


def test_a_compiled_denoiser_reads_routed_directions_as_the_eager_one_without_recompiling(tiny_pipe, text_vector, monkeypatch):
    """`compile_unet` with the text site gives every cross-attention a site of its own: a route given in the call, a
    recorded one, and two directions on different routes steer the compiled denoiser exactly as the eager hooks do,
    and moving between them (or the slider) never recompiles. Routes sharing a cross-attention steer it as the eager
    hooks do too (one more graph the first time)."""
    from torch._dynamo.utils import counters

    from steer.testing import tiny_pipeline

    layout, detail = routed(text_vector, "layout"), routed(text_vector, "detail", seed=7)
    cases = {
        "call route": dict(steering=text_vector, steering_scale=0.5, steering_readers="layout"),
        "recorded route": dict(steering=layout, steering_scale=0.75),
        "two routes": dict(steering=[layout, detail], steering_scale=[0.5, 1.0]),
        "route and every reader": dict(steering=[layout, routed(text_vector, None, seed=9)], steering_scale=[1.0, 0.5]),
        "unrouted": dict(steering=text_vector, steering_scale=0.5),
        "off": dict(steering=layout, steering_scale=0.0),
    }
    eager = {k: call(tiny_pipe, **kw) for k, kw in cases.items()}
    assert not np.array_equal(eager["call route"], eager["unrouted"])  # the route changes the image
    torch._dynamo.reset()
    pipe = tiny_pipeline(seed=0)
    pipe.compile_unet(backend="eager")  # the default sites include the text tokens and their readers
    counters.clear()
    graphs = None
    for name in [*cases, "call route", "two routes"]:  # back and forth
        np.testing.assert_array_equal(call(pipe, **cases[name]), eager[name], err_msg=name)
        graphs = graphs or counters["stats"]["unique_graphs"]  # what the first call compiled
    np.testing.assert_array_equal(eager["off"], call(pipe))  # scale 0 through the reader sites: the unsteered image
    # every cross-attention named as the route is the denoiser's text input, as in the eager pipeline
    np.testing.assert_array_equal(call(pipe, steering=text_vector, steering_scale=0.5, steering_readers="all"), eager["unrouted"])
    assert counters["stats"]["unique_graphs"] == graphs  # nothing recompiled
    # routes sharing cross-attentions (the down blocks here): steered before the graph, as a take-away is; one more
    # graph the first time, none after
    shared = dict(steering=[layout, routed(text_vector, "down_blocks.*", seed=3)], steering_scale=[0.75, 0.5])
    np.testing.assert_array_equal(call(pipe, **shared), call(tiny_pipe, **shared))
    graphs = counters["stats"]["unique_graphs"]
    np.testing.assert_array_equal(call(pipe, **cases["two routes"]), eager["two routes"])  # nothing left behind
    call(pipe, **shared)
    assert counters["stats"]["unique_graphs"] == graphs
    # the routes are resolved once per call, not at every denoiser step, and let go of after it
    from steer.engine.steering import SteeringSession

    built, text_groups = [], SteeringSession.text_groups
    monkeypatch.setattr(SteeringSession, "text_groups", lambda self, plan: built.append(1) or text_groups(self, plan))
    call(pipe, **cases["two routes"])
    assert len(built) == 1
    assert pipe._static_sites.session is None and pipe._static_sites.text_groups == []
    torch._dynamo.reset()


def test_a_compiled_denoiser_without_the_text_site_refuses_routes_in_one_line(text_vector):
    from steer.testing import tiny_pipeline

    pipe = tiny_pipeline(seed=0)
    pipe.compile_unet(layers=["up_blocks.1.attentions.0"], backend="eager")
    with pytest.raises(ValueError, match="no steering site in the compiled denoiser"):
        call(pipe, steering=routed(text_vector, "layout"))
    torch._dynamo.reset()


def test_the_routed_tokens_are_computed_once_per_denoiser_call(tiny_pipe):
    """Every reader receives the same text tensor within one UNet call, so the steering runs once per call and its
    answer is shared; the next call (a new step or CFG branch) computes it again."""
    from steer.denoisers import register_site_hook

    unet = tiny_pipe.unet
    readers = text_readers(unet, ("layout",))
    assert len(readers) > 1
    computed: list[torch.Tensor] = []

    def fn(h):
        computed.append(h)
        return h + len(computed)  # a different answer on each computation

    seen: dict[str, list[torch.Tensor]] = {}
    modules = dict(unet.named_modules())
    handle = register_site_hook(unet, CONTEXT_SITE, fn, ("layout",))
    taps = [modules[n].register_forward_pre_hook(lambda _m, _a, kw, n=n: seen.setdefault(n, []).append(kw["encoder_hidden_states"]), with_kwargs=True)
            for n in cross_attention_sites(unet)]
    try:
        cfg = unet.config
        text = torch.randn(2, 77, cfg.cross_attention_dim)
        sample = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        with torch.no_grad():
            for t in (900, 500):
                unet(sample, t, encoder_hidden_states=text)
    finally:
        handle.remove()
        for tap in taps:
            tap.remove()
    assert len(computed) == 2 and all(h is text for h in computed)
    for name, received in seen.items():
        assert len(received) == 2
        for call_index, got in enumerate(received, start=1):
            expected = text + call_index if name in readers else text
            assert torch.equal(got, expected), (name, call_index)
    assert no_hooks_left(unet)


def test_two_routed_calls_at_once_get_their_own_results(tiny_pipe, text_vector):
    """Two threads steering the same pipeline through different readers, step by step interleaved: each gets what it
    gets alone (the readers' shared answer is per thread and per denoiser call)."""
    settings = {"layout": dict(steering_scale=1.0, steering_readers="layout"),
                "detail": dict(steering_scale=-1.5, steering_readers="detail", guidance_scale=3.0)}
    alone = {k: call(tiny_pipe, steering=text_vector, **kw) for k, kw in settings.items()}
    assert not np.array_equal(alone["layout"], alone["detail"])
    sync = step_barrier(2)  # force the two denoising loops to interleave step by step
    together = run_in_threads(lambda k: call(tiny_pipe, steering=text_vector, callback_on_step_end=sync, **settings[k]), settings)
    for k in settings:
        assert np.array_equal(together[k], alone[k]), k
    assert no_hooks_left(tiny_pipe.unet)


def routed(vector: SteeringVector, readers: str | None, seed: int | None = None) -> SteeringVector:
    """``vector`` (or a fresh random text vector of ``seed``) recording ``readers`` as its route (None: none)."""
    rec = {k: v for k, v in vector.metadata["recommended"].items() if k != "readers"}
    directions = vector.directions if seed is None else {CONTEXT_SITE: torch.randn(vector.directions[CONTEXT_SITE].shape, generator=torch.Generator().manual_seed(seed))}
    return SteeringVector(directions, {**vector.metadata, "name": f"{vector.name}-{readers}-{seed}", "recommended": {**rec, **({"readers": [readers]} if readers else {})}})


def test_directions_with_different_routes_are_each_read_where_they_were_calibrated(tiny_pipe, text_vector):
    """Two directions recording different routes, in one call that sets none: the layout blocks read the first one
    only, the up blocks the second only (each exactly as when it steers alone); an unrouted one is read everywhere,
    with a routed one added on top where it is read; ``steering_readers`` in the call still routes them all."""
    layout_one, detail_one, plain_one = routed(text_vector, "layout"), routed(text_vector, "detail", seed=7), routed(text_vector, None, seed=8)
    layout_readers = set(text_readers(tiny_pipe.unet, ["layout"]))
    both = tokens_read(tiny_pipe, steering=[layout_one, detail_one], steering_scale=[0.5, 0.7])
    alone = {"layout": tokens_read(tiny_pipe, steering=layout_one, steering_scale=0.5), "detail": tokens_read(tiny_pipe, steering=detail_one, steering_scale=0.7)}
    for name, calls in both.items():
        want = alone["layout" if name in layout_readers else "detail"][name]
        assert all(torch.equal(a, b) for a, b in zip(calls, want, strict=True)), name

    mixed = tokens_read(tiny_pipe, steering=[plain_one, layout_one], steering_scale=[0.6, 0.5])
    unrouted = tokens_read(tiny_pipe, steering=plain_one, steering_scale=0.6)
    for name, calls in mixed.items():
        same = all(torch.equal(a, b) for a, b in zip(calls, unrouted[name], strict=True))
        assert same == (name not in layout_readers), name  # the up blocks read the unrouted one alone

    everywhere = call(tiny_pipe, steering=[layout_one, detail_one], steering_scale=[0.5, 0.7], steering_readers="all")
    unrouted_pair = [routed(layout_one, None), routed(detail_one, None)]
    assert np.array_equal(everywhere, call(tiny_pipe, steering=unrouted_pair, steering_scale=[0.5, 0.7]))
    assert not np.array_equal(everywhere, call(tiny_pipe, steering=[layout_one, detail_one], steering_scale=[0.5, 0.7]))
    assert no_hooks_left(tiny_pipe.unet)


def test_a_routed_direction_with_an_unrouted_take_away_removes_once(tiny_pipe):
    """The add-and-remove recipe with a routed target and an unrouted source: the source's excess is removed once, for
    every reader (at the denoiser's input); the target is added where it was calibrated. At target scale 0 every
    cross-attention reads the same partly removed tokens (the target's group removes nothing again)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights render no attribute
        blue = tiny_pipe.learn_direction(["a blue sneaker"], ["a sneaker"], readers="detail", num_inference_steps=3, calibration_samples=2, progress=False)
        red = tiny_pipe.learn_direction(["a red sneaker"], ["a sneaker"], num_inference_steps=3, calibration_samples=2, progress=False)
    window = dict(steering_negative="remove", steering_window=(0.0, 1.0), steering_removal_window=(0.0, 1.0))
    removed_only = tokens_read(tiny_pipe, "a red sneaker", steering=[blue, red], steering_scale=[0.0, -0.5], **window)
    removed_alone = tokens_read(tiny_pipe, "a red sneaker", steering=red, steering_scale=-0.5, **window)
    plain = tokens_read(tiny_pipe, "a red sneaker")
    for name, calls in removed_only.items():
        assert all(torch.equal(a, b) for a, b in zip(calls, removed_alone[name], strict=True)), name
        assert not all(torch.equal(a, b) for a, b in zip(calls, plain[name], strict=True)), name
    both = tokens_read(tiny_pipe, "a red sneaker", steering=[blue, red], steering_scale=[1.0, -0.5], **window)
    detail_readers = set(text_readers(tiny_pipe.unet, ["detail"]))
    for name, calls in both.items():
        same = all(torch.equal(a, b) for a, b in zip(calls, removed_alone[name], strict=True))
        assert same == (name not in detail_readers), name
    assert no_hooks_left(tiny_pipe.unet)


def test_a_compiled_denoiser_takes_away_as_the_eager_one(tiny_pipe):
    """``steering_negative="remove"`` on a compiled denoiser: the text tokens are steered before the graph (the
    removal depends on each token), so removing alone, adding and removing on different routes, a removal window of
    its own and a routed removal give the eager images exactly; the first removing call compiles once more, and after
    that moving between additive and removing calls compiles nothing."""
    from torch._dynamo.utils import counters

    from steer.testing import tiny_pipeline

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights render no attribute
        blue = tiny_pipe.learn_direction(["a blue sneaker"], ["a sneaker"], readers="detail", num_inference_steps=3, calibration_samples=2, progress=False)
        red = tiny_pipe.learn_direction(["a red sneaker"], ["a sneaker"], num_inference_steps=3, calibration_samples=2, progress=False)
    whole = dict(steering_negative="remove", steering_window=(0.0, 1.0), steering_removal_window=(0.0, 1.0))
    cases = {
        "remove only": dict(steering=[blue, red], steering_scale=[0.0, -1.0], **whole),
        "add and remove": dict(steering=[blue, red], steering_scale=[1.0, -0.5], **whole),
        "own removal window": dict(steering=[blue, red], steering_scale=[1.0, -1.0], steering_negative="remove",
                                   steering_window=(0.0, 0.5), steering_removal_window=(0.5, 1.0)),
        "routed removal": dict(steering=[blue, routed(red, "layout")], steering_scale=[0.5, -1.0], **whole),
        "per image": dict(prompt=["a red sneaker", "a red bag"], steering=[blue, red], steering_scale=[[1.0, -1.0], [0.5, 0.0]], **whole),
        "add": dict(steering=[blue, red], steering_scale=[1.0, 0.5]),
        # the word swap too ("red" turned into "blue" for the readers that read blue), steered before the graph
        "replace": dict(steering=[blue, red], steering_scale=[1.0, -0.5], **{**whole, "steering_negative": "replace"}),
    }
    eager = {k: call(tiny_pipe, **kw) for k, kw in cases.items()}
    assert not np.array_equal(eager["replace"], eager["add and remove"])  # the swap changes the image
    assert not np.array_equal(eager["remove only"], call(tiny_pipe))  # the removal changes the image
    torch._dynamo.reset()
    pipe = tiny_pipeline(seed=0)
    pipe.compile_unet(backend="eager")
    call(pipe, **cases["add"])
    call(pipe, **cases["remove only"])  # the warm-up calls: additive, and removing (the readers take whole tokens),
    call(pipe, **cases["per image"])  # and a batch of two images
    counters.clear()
    for name in [*cases, "remove only", "add", "routed removal"]:  # back and forth
        np.testing.assert_array_equal(call(pipe, **cases[name]), eager[name], err_msg=name)
    assert counters["stats"]["unique_graphs"] == 0  # nothing recompiled
    assert pipe._static_sites.reader_tokens == {}  # the token buffers are let go of after the call
    np.testing.assert_array_equal(call(pipe), call(tiny_pipe))  # nothing left behind
    torch._dynamo.reset()


def test_recipes_say_where_each_direction_was_read(tiny_pipe, text_vector, tmp_path):
    """Batch, CLI and app recipes record ``routes`` (each direction's route, in call order) when the directions were
    read on different routes, and nothing new otherwise."""
    from steer.app import helpers as H
    from steer.cli.main import main

    layout_one, plain_one = routed(text_vector, "layout"), routed(text_vector, None, seed=8)
    paths = [str(layout_one.save(tmp_path / "layout.safetensors")), str(plain_one.save(tmp_path / "plain.safetensors"))]
    job = {"prompt": "a bag", "seed": 5, "num_inference_steps": STEPS, "directions": [{"path": p, "scale": 0.5} for p in paths]}
    batch.run([{**job, "name": "mixed"}, {**job, "name": "everyone", "steering_readers": "all"}, {**job, "directions": job["directions"][1:], "name": "one"}],
              tiny_pipe, tmp_path / "out", batch_size=1, model="tiny", progress=False)
    recipes = {n: read_recipe(tmp_path / "out" / f"{n}.png") for n in ("mixed", "everyone", "one")}
    assert recipes["mixed"]["routes"] == [["layout"], None] and "readers" not in recipes["mixed"]
    assert "routes" not in recipes["everyone"] and recipes["everyone"]["readers"] == ["all"]
    assert "routes" not in recipes["one"] and "readers" not in recipes["one"]

    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    assert main(["generate", "--model", str(model), "--prompt", "a bag", "--steps", str(STEPS), "--direction", *paths, "--out", str(tmp_path / "cli")]) == 0
    assert read_recipe(next((tmp_path / "cli").glob("*.png")))["routes"] == [["layout"], None]

    settings = H.GenerateSettings(prompt="a red bag", steps=STEPS).validated(tiny_pipe)
    assert settings.recipe(tiny_pipe, layout_one, 1.0, away=plain_one)["steering"]["routes"] == [["layout"], None]
    assert "routes" not in settings.recipe(tiny_pipe, layout_one, 1.0)["steering"]
