"""Fitting and applying a take-away (`pipe.fit_take_away`, ``steering_negative="remove"``) on every denoiser family,
on tiny random-weight components (CPU, fp32): the fit runs, counts its cost, and its settings steer a prompt that
states the taken-away value; unsteered rows stay bit-identical. The word swap of ``"replace"`` finds the stated word
in every text stream the family's denoiser reads."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from steer.calibrate import LAYOUT_EDIT_BELOW, WINDOW_CHOICE_GRID
from steer.sliders import without_flips
from steer.take_away import APPEARANCE_WINDOWS, WINDOWS
from steer.testing import tiny_pipeline
from steer.testing.flux import tiny_flux_pipeline
from steer.testing.pixart import TINY_CALL, tiny_pixart_pipeline
from steer.testing.sd3 import tiny_sd3_pipeline
from steer.testing.sdxl import tiny_sdxl_pipeline

FAMILIES = {"sd": tiny_pipeline, "sdxl": tiny_sdxl_pipeline, "sd3": tiny_sd3_pipeline, "pixart": tiny_pixart_pipeline, "flux": tiny_flux_pipeline}
CALL = {"pixart": TINY_CALL}  # the tiny PixArt's size is off its resolution bins: every call (and the fit) passes it


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_fitted_take_away_runs_and_steers_on_every_family(family):
    pipe, call = FAMILIES[family](seed=0), CALL.get(family, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration and the fit may not converge
        blue, red = (pipe.learn_direction([f"a {c} sneaker", f"a {c} bag"], ["a sneaker", "a bag"], num_inference_steps=2,
                                          calibration_samples=2, progress=False, **call) for c in ("blue", "red"))
        fit = pipe.fit_take_away(blue, red, num_samples=2, grid=(0.5, 1.0), num_inference_steps=2, **call)
    assert red.metadata["reference_level"], "text directions record the level a removal needs"
    assert fit.prompts == [("a red sneaker", "a blue sneaker"), ("a red bag", "a blue bag")]
    # an edit that keeps the layout (a colour replaced) is fitted over its own windows, Flux's packed latents as before
    windows = APPEARANCE_WINDOWS if fit.structure is not None and fit.structure >= LAYOUT_EDIT_BELOW else WINDOWS
    assert fit.window in windows and set(fit.distances) == {f"{a:g},{b:g}" for a, b in windows}
    assert 0.0 < fit.strength <= 1.0 and np.isfinite(fit.distance)

    def generate(on=pipe, **steer):
        return on(["a red sneaker", "a red sneaker"], generator=[torch.Generator().manual_seed(0) for _ in range(2)],
                  num_inference_steps=2, output_type="np", **call, **steer).images

    plain = generate()
    take_away = dict(steering=[blue, red], steering_scale=[[0.0, 0.0], fit.scales], steering_negative="remove", steering_window=fit.window)
    rows = generate(**take_away)
    assert np.array_equal(rows[0], plain[0]), "a row at scale 0 is the unsteered image"
    assert np.isfinite(rows[1]).all() and np.abs(rows[1] - plain[1]).max() > 1e-3, "the fitted take-away changes the image"
    compiled = FAMILIES[family](seed=0)  # the same weights, compiled: the take-away steers it as the eager one
    compiled.compile_unet(backend="eager")
    try:
        np.testing.assert_allclose(generate(compiled, **take_away), rows, rtol=0, atol=1e-6)
    finally:
        torch._dynamo.reset()


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "sd"])  # SD: tests/test_steering_methods.py
def test_the_auto_window_is_chosen_on_every_family(family):
    """``window="auto"`` on each denoiser family: both candidate windows calibrated on shared samples, the choice
    recorded and recommended (random weights: which window wins does not matter here)."""
    pipe, call = FAMILIES[family](seed=0), CALL.get(family, {})
    rows = [0]
    denoiser = getattr(pipe, "unet", None) or pipe.transformer
    handle = denoiser.register_forward_pre_hook(lambda m, a, k: rows.__setitem__(0, rows[0] + len(k.get("hidden_states", a[0] if a else None))), with_kwargs=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: calibration may not converge
            v = pipe.learn_direction(["a blue sneaker"], ["a sneaker"], window="auto", num_inference_steps=2, calibration_samples=2, progress=False, **call)
    finally:
        handle.remove()
    choice = v.metadata["window_choice"]
    assert choice["windows"] == [[0.0, 0.5], [0.0, 1.0]] and choice["chosen"] in choice["windows"]
    assert v.metadata["recommended"]["window"] == choice["chosen"] == v.metadata["calibration"]["window"]
    branches = 1 if family == "flux" else 2  # Flux's guidance is distilled: one transformer row per sample and step
    grid = len(WINDOW_CHOICE_GRID)
    # every family's scheduler resumes exactly (flow-matching Euler, Euler discrete, DPM-Solver with its history handed
    # on): both windows share the first step
    sets = 2 * 2 + grid * 1 + 2 * grid * 1
    assert v.metadata["calibration"].get("branched_at") == 1
    assert rows[0] == v.metadata["calibration"]["unet_rows"] == sets * 2 * branches


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_slider_flips_a_prompt_stating_its_other_side_on_every_family(family):
    """`learn_direction(..., two_sided=True)` fits each side's flip on every family (`steer.sliders`); a row whose
    prompt states the other side is flipped, an open row is the plain slider's, bit for bit."""
    pipe, call = FAMILIES[family](seed=0), CALL.get(family, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration and the fit may not converge
        slider = pipe.learn_direction(["a red sneaker", "a red bag"], ["a blue sneaker", "a blue bag"], two_sided=True,
                                      num_inference_steps=2, calibration_samples=2, progress=False, **call)
    assert slider.metadata["flip"]["words"] == ["red"] and slider.opposite.metadata["flip"]["words"] == ["blue"]
    plain = without_flips(slider)

    def generate(vector):
        return pipe(["a red sneaker", "a sneaker"], generator=[torch.Generator().manual_seed(0) for _ in range(2)],
                    num_inference_steps=2, output_type="np", steering=vector, steering_scale=-1.0, **call).images

    flipped, sides = generate(slider), generate(plain)
    assert np.isfinite(flipped).all() and not np.array_equal(flipped[0], sides[0]), "the stated row is flipped"
    np.testing.assert_allclose(flipped[1], sides[1], rtol=0, atol=1e-6)  # the open row: the plain slider's


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_word_swap_finds_the_stated_word_in_every_text_stream_the_denoiser_reads(family, monkeypatch):
    """`steer.word_swap.plan_word_swap` on every family: the positions where the prompt's and its rewrite's token ids
    differ, in each stream of the family's text tokens (CLIP on SD / SDXL, CLIP then T5 from position 77 on SD3, T5 on
    PixArt and Flux), take the rewritten prompt's states there; every tokenization holds the text lock."""
    from steer.text_tokens import TEXT_LOCK, encode_text
    from steer.word_swap import plan_word_swap

    pipe, call = FAMILIES[family](seed=0), CALL.get(family, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        blue, red = (pipe.learn_direction([f"a {c} sneaker", f"a {c} bag"], ["a sneaker", "a bag"], num_inference_steps=2,
                                          calibration_samples=2, progress=False, **call) for c in ("blue", "red"))
    streams = pipe.steering_word_tokenizers()
    assert [offset for _, offset in streams] == ([0, 77] if family == "sd3" else [0])
    locked = []
    for cls in {type(tokenizer) for tokenizer, _ in streams}:
        def watched(self, *args, _call=cls.__call__, **kwargs):
            locked.append(TEXT_LOCK._is_owned())
            return _call(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", watched)
    prompt = "  A Red sneaker"  # PixArt lower-cases and strips a prompt before its T5 reads it: so do its positions
    swap = plan_word_swap(pipe, [prompt, "a sneaker"], [blue, red], torch.tensor([[1.0, -1.0]]), "replace")
    monkeypatch.undo()
    assert locked and all(locked), "the swap tokenizes under the text lock"
    assert swap.columns.tolist() == [1, -1] and not swap.mask[1].any()
    rewrite = encode_text(pipe, ["  A blue sneaker"]).float()[0]
    torch.testing.assert_close(encode_text(pipe, [prompt]), encode_text(pipe, [pipe.steering_word_text(prompt)]))
    if family == "pixart":
        assert pipe.steering_word_text(prompt) == "a red sneaker"
    expected = []
    for tokenizer, offset in streams:
        a, b = (tokenizer(pipe.steering_word_text(p)).input_ids for p in (prompt, "  A blue sneaker"))
        start = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
        tail = next(i for i, (x, y) in enumerate(zip(a[::-1], b[::-1], strict=False)) if x != y)
        positions = range(offset + start, offset + len(a) - tail)
        expected += positions
        for pos in positions:  # "red" and "blue" may tokenize to different lengths: then the target's last token
            source = pos if len(a) == len(b) else offset + len(b) - tail - 1
            assert torch.equal(swap.states[0, pos], rewrite[source]), (family, pos)
    assert swap.mask[0].nonzero().flatten().tolist() == expected


def test_a_word_past_clips_77_tokens_is_swapped_in_sd3s_t5_stream_only():
    """SD3 truncates CLIP at 77 tokens while T5 reads on: a stated word past CLIP's end is turned in T5's positions,
    and nothing is written over T5's first positions in CLIP's name."""
    from steer.text_tokens import encode_text
    from steer.word_swap import plan_word_swap

    pipe = tiny_sd3_pipeline(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        blue, red = (pipe.learn_direction([f"a {c} sneaker", f"a {c} bag"], ["a sneaker", "a bag"], num_inference_steps=2,
                                          calibration_samples=2, progress=False) for c in ("blue", "red"))
    prompt = "and " * 90 + "a red sneaker"
    (clip, _), (t5, t5_offset) = pipe.steering_word_tokenizers()
    assert len(clip(prompt).input_ids) > 77 + 5 and t5_offset == 77
    swap = plan_word_swap(pipe, [prompt], [blue, red], torch.tensor([[1.0, -1.0]]), "replace")
    a, b = t5(prompt).input_ids, t5(prompt.replace("red", "blue")).input_ids
    start = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    tail = next(i for i, (x, y) in enumerate(zip(a[::-1], b[::-1], strict=False)) if x != y)
    assert len(a) - tail <= 256, "the word lies within T5's 256 tokens"
    assert swap.mask[0].nonzero().flatten().tolist() == list(range(77 + start, 77 + len(a) - tail))
    rewrite = encode_text(pipe, [prompt.replace("red", "blue")]).float()[0]
    last = 77 + len(b) - tail - 1
    for pos in range(77 + start, 77 + len(a) - tail):
        assert torch.equal(swap.states[0, pos], rewrite[pos if len(a) == len(b) else last])


def test_a_call_giving_another_encoder_its_own_prompt_takes_the_word_away_without_turning_it():
    """SDXL's ``prompt_2`` goes to its second CLIP: the swap reads ``prompt``'s positions only, so where ``prompt_2``
    differs it swaps nothing (the call is the "remove" one, bit for bit) and says so; the same prompt twice swaps."""
    pipe = tiny_sdxl_pipeline(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        blue, red = (pipe.learn_direction([f"a {c} sneaker", f"a {c} bag"], ["a sneaker", "a bag"], num_inference_steps=2,
                                          calibration_samples=2, progress=False) for c in ("blue", "red"))

    def generate(negative, **call):
        return pipe("a red sneaker", generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np",
                    steering=[blue, red], steering_scale=[1.0, -1.0], steering_window=(0.0, 1.0), steering_negative=negative,
                    **call).images

    with pytest.warns(UserWarning, match="gives prompt_2 a prompt of its own"):
        own = generate("replace", prompt_2="a red sneaker on a table")
    np.testing.assert_array_equal(own, generate("remove", prompt_2="a red sneaker on a table"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the same prompt for both encoders: no warning, the word turned
        same = generate("replace", prompt_2="a red sneaker")
    assert not np.array_equal(same, generate("remove", prompt_2="a red sneaker"))
