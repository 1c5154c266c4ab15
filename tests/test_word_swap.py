"""The take-away's word swap (`steer.word_swap`, `steer.engine.word_swap`): the phrase a prompt states for what is
taken away turned into the added direction's phrase at its own token positions, nothing else touched."""

import warnings

import pytest
import torch

from steer import SteeringVector
from steer.denoisers import CONTEXT_SITE
from steer.engine.word_swap import WordSwap, swap_words
from steer.text_tokens import encode_text
from steer.word_swap import phrases_of, plan_word_swap, rewritten
from steer.wording import is_plural, plural, singular


def learned(pipe, colour: str) -> SteeringVector:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        return pipe.learn_direction([f"a {colour} sneaker", f"a {colour} bag"], ["a sneaker", "a bag"], num_inference_steps=2,
                                    calibration_samples=2, progress=False)


@pytest.fixture(scope="module")
def colours(tiny_pipe):
    return {c: learned(tiny_pipe, c) for c in ("blue", "red", "cyan")}


def test_rewritten_replaces_whole_words_only():
    assert rewritten("a Blue sneaker, studio light", ["blue"], "red") == "a red sneaker, studio light"
    assert rewritten("an ankle  boot", ["ankle boot"], "bag") == "an bag"
    assert rewritten("a blueish bag", ["blue"], "red") is None  # a word containing the phrase does not state it
    assert rewritten("a blue-green bag", ["blue"], "red") is None
    assert rewritten("a bag", ["blue", "navy"], "red") is None
    assert rewritten("a navy bag", ["blue", "navy"], "red") == "a red bag"


def test_rewritten_reads_plurals_as_the_take_away_states_them():
    # a plural states its singular (as `steer.wording.states` reads it) and gets the replacement in plural
    assert rewritten("two red dresses, studio light", ["dress"], "bag") == "two red bags, studio light"
    assert rewritten("Three Sneakers", ["sneaker"], "ankle boot") == "Three ankle boots"
    assert rewritten("two old men", ["man"], "woman") == "two old women"  # irregular both ways
    assert rewritten("two red boxes", ["box"], "party") == "two red parties"
    # a singular stays singular; a replacement already plural is not pluralised again
    assert rewritten("a red dress", ["dress"], "bag") == "a red bag"
    assert rewritten("two red bags", ["bag"], "trousers") == "two red trousers"
    assert rewritten("a dressmaker", ["dress"], "bag") is None
    assert rewritten("two old men on a bench", ["old man"], "young woman") == "two young women on a bench"
    words = ["bag", "dress", "watch", "box", "pony", "day", "man", "wolf", "child", "t-shirt", "sneaker"]
    assert [plural(w) for w in words] == ["bags", "dresses", "watches", "boxes", "ponies", "days", "men", "wolves",
                                          "children", "t-shirts", "sneakers"]
    assert [singular(plural(w)) for w in words] == words and not any(is_plural(w) for w in words)
    assert (plural("Bag"), plural("BAG")) == ("Bags", "BAGS")


def test_phrases_come_from_the_recorded_prompts_or_a_sides_flip(colours):
    assert phrases_of(colours["blue"]) == ("blue",)
    side = SteeringVector(dict(colours["blue"].directions), {"flip": {"words": ["navy", "blue"], "strength": 1.0, "window": [0, 1]}})
    assert phrases_of(side) == ("navy", "blue")
    assert phrases_of(SteeringVector(dict(colours["blue"].directions), {})) == ()


def test_swap_words_blends_only_the_masked_positions():
    g = torch.Generator().manual_seed(0)
    h, states = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 2] = mask[1, 2:4] = True
    swap = WordSwap(torch.tensor([1, -1]), torch.tensor([0, -1]), mask, states)
    removal, added = torch.tensor([[0.0, 0.7], [0.0, 0.9]]), torch.tensor([[1.5, 0.0], [1.5, 0.0]])
    assert swap.row_amounts(removal, added).tolist() == pytest.approx([0.7, 0.0])
    assert swap.row_amounts(removal, added * 0).tolist() == [0.0, 0.0]  # the target not added now (its window, its readers)
    out = swap_words(h, swap, torch.tensor([1.0, 1.0]))
    assert torch.equal(out[0, 2], states[0, 2]) and torch.equal(out[1, 2:4], states[1, 2:4])
    unmasked = ~mask
    assert torch.equal(out[unmasked], h[unmasked])
    half = swap_words(h, swap, torch.tensor([0.5, 0.0]))
    assert torch.equal(half[1], h[1])  # amount 0: the row bit for bit
    assert half[0, 2].norm() == pytest.approx(float((h[0, 2].norm() + states[0, 2].norm()) / 2), rel=1e-5)
    assert not torch.allclose(half[0, 2], h[0, 2]) and not torch.allclose(half[0, 2], states[0, 2])
    # a CFG batch [uncond, cond]: the states repeat, the unconditional half's zero amounts leave it as it was
    doubled = swap_words(torch.cat([h, h]), swap, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(doubled[:2], h) and torch.equal(doubled[2:], out)
    assert swap_words(h[:, :4], swap, torch.tensor([1.0, 1.0])) is not None  # another length: unchanged
    assert torch.equal(swap_words(h[:, :4], swap, torch.tensor([1.0, 1.0])), h[:, :4])
    with pytest.raises(ValueError, match="disagree"):
        WordSwap(torch.tensor([0]), torch.tensor([0]), mask, states)


def test_plan_finds_the_stated_phrase_and_its_rewrite(tiny_pipe, colours):
    blue, red, cyan = colours["blue"], colours["red"], colours["cyan"]
    prompts = ["a red sneaker", "a blue bag", "a Red coat", "a cyan bag"]
    swap = plan_word_swap(tiny_pipe, prompts, [blue, red, cyan], torch.tensor([[1.5, -1.0, -1.0]]), "replace")
    assert swap.columns.tolist() == [1, -1, 1, 2]  # "a blue bag" states nothing taken away
    assert swap.targets.tolist() == [0, -1, 0, 0]
    tokens = tiny_pipe.tokenizer
    assert len(tokens("a cyan bag").input_ids) == len(tokens("a blue bag").input_ids) + 1  # "cyan" is two tokens here
    assert swap.mask[0].nonzero().flatten().tolist() == [2] and swap.mask[3].nonzero().flatten().tolist() == [2, 3]
    target = encode_text(tiny_pipe, ["a blue sneaker", "a blue bag"]).float()
    assert torch.equal(swap.states[0, 2], target[0, 2])
    # a two-token source: both its positions take the one-token target word's state
    assert torch.equal(swap.states[3, 2], target[1, 2]) and torch.equal(swap.states[3, 3], target[1, 2])
    # nothing to plan: subtracting, removing without the swap, no prompts (embeddings), nothing taken away
    assert plan_word_swap(tiny_pipe, prompts, [blue, red, cyan], torch.tensor([[1.5, -1.0, -1.0]]), "subtract") is None
    assert plan_word_swap(tiny_pipe, prompts, [blue, red, cyan], torch.tensor([[1.5, -1.0, -1.0]]), "remove") is None
    assert plan_word_swap(tiny_pipe, None, [blue, red], torch.tensor([[1.5, -1.0]]), "replace") is None
    assert plan_word_swap(tiny_pipe, prompts, [blue, red], torch.tensor([[1.5, 0.0]]), "replace") is None
    assert plan_word_swap(tiny_pipe, prompts, [blue, red], torch.tensor([[0.0, -1.0]]), "replace") is None  # nothing added


def test_a_plural_prompt_swaps_its_word_into_the_targets_plural(tiny_pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: calibration may not converge
        to_bag = tiny_pipe.learn_direction(["a red bag", "a blue bag"], ["a red item", "a blue item"], num_inference_steps=2,
                                           calibration_samples=2, progress=False)
        to_sneaker = tiny_pipe.learn_direction(["a red sneaker", "a blue sneaker"], ["a red item", "a blue item"],
                                               num_inference_steps=2, calibration_samples=2, progress=False)
    assert phrases_of(to_bag) == ("bag",) and phrases_of(to_sneaker) == ("sneaker",)
    swap = plan_word_swap(tiny_pipe, ["two red sneakers", "a red sneaker"], [to_bag, to_sneaker], torch.tensor([[1.0, -1.0]]), "replace")
    assert swap.columns.tolist() == [1, 1]
    plural_tokens, singular_tokens = (tiny_pipe.tokenizer(p).input_ids for p in ("two red bags", "a red bag"))
    assert plural_tokens[-2] != singular_tokens[-2]  # "bags" is its own token: the plural's state, not the singular's
    target = encode_text(tiny_pipe, ["two red bags", "a red bag"]).float()
    for row in (0, 1):
        (pos,) = swap.mask[row].nonzero().flatten().tolist()
        assert torch.equal(swap.states[row, pos], target[row, pos])


def _text_seen(pipe, step: int = -1, **call) -> torch.Tensor:
    """The conditional text tokens the first cross-attention reads at ``step`` of a two-step call."""
    seen = []
    attn = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2"))
    handle = attn.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    try:
        pipe(num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="latent", **call)
    finally:
        handle.remove()
    return seen[step][1:]  # the conditional half


def test_a_take_away_call_swaps_the_word_as_the_rewritten_prompt_states_it(tiny_pipe, colours):
    blue, red = colours["blue"], colours["red"]
    steer = dict(steering=[blue, red], steering_scale=[1.5, -1.0], steering_negative="replace", steering_window=(0.0, 1.0))
    embeds = encode_text(tiny_pipe, ["a red sneaker"])
    negative = encode_text(tiny_pipe, [""])
    swapped = _text_seen(tiny_pipe, prompt="a red sneaker", **steer)
    plain = _text_seen(tiny_pipe, prompt_embeds=embeds, negative_prompt_embeds=negative, **steer)  # no prompt: no swap
    assert torch.equal(swapped[:, :2], plain[:, :2]) and torch.equal(swapped[:, 3:], plain[:, 3:])
    assert not torch.allclose(swapped[:, 2], plain[:, 2])
    # the word's position steered as if the prompt had said "blue" there, everything else as "a red sneaker"
    edited = embeds.clone()
    edited[:, 2] = encode_text(tiny_pipe, ["a blue sneaker"])[:, 2]
    by_hand = _text_seen(tiny_pipe, prompt_embeds=edited, negative_prompt_embeds=negative, **steer)
    torch.testing.assert_close(swapped, by_hand, rtol=1e-5, atol=1e-6)
    # at scale 0 the call is the unsteered one, bit for bit
    zero = _text_seen(tiny_pipe, prompt="a red sneaker", **{**steer, "steering_scale": [0.0, 0.0]})
    assert torch.equal(zero, _text_seen(tiny_pipe, prompt="a red sneaker"))
    assert CONTEXT_SITE in blue.directions


def test_the_swap_acts_while_its_target_is_added(tiny_pipe, colours):
    """Outside the added direction's window the take-away still removes, but the word stays the prompt's own."""
    blue, red = colours["blue"], colours["red"]
    steer = dict(steering=[blue, red], steering_scale=[1.5, -1.0], steering_negative="replace", steering_window=(0.5, 1.0),
                 steering_removal_window=(0.0, 1.0))
    embeds, negative = encode_text(tiny_pipe, ["a red sneaker"]), encode_text(tiny_pipe, [""])
    for step, differs in ((0, False), (-1, True)):
        swapped = _text_seen(tiny_pipe, step, prompt="a red sneaker", **steer)
        plain = _text_seen(tiny_pipe, step, prompt_embeds=embeds, negative_prompt_embeds=negative, **steer)
        assert torch.equal(swapped[:, 3:], plain[:, 3:])
        assert torch.equal(swapped[:, 2], plain[:, 2]) is not differs
        if step == 0:  # the take-away does act there: the tokens are not the prompt's own
            assert not torch.equal(swapped, _text_seen(tiny_pipe, step, prompt="a red sneaker"))


def test_a_routed_target_swaps_the_word_for_its_own_readers_only(tiny_pipe):
    """The take-away of an unrouted source is removed for every reader; the word turns only where the target is read."""
    from test_readers import tokens_read

    from steer.denoisers import text_readers

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="calibration:")  # random weights render no attribute
        blue = tiny_pipe.learn_direction(["a blue sneaker"], ["a sneaker"], readers="detail", num_inference_steps=3, calibration_samples=2, progress=False)
        red = tiny_pipe.learn_direction(["a red sneaker"], ["a sneaker"], num_inference_steps=3, calibration_samples=2, progress=False)
    steer = dict(steering=[blue, red], steering_scale=[1.0, -0.5], steering_negative="replace", steering_window=(0.0, 1.0),
                 steering_removal_window=(0.0, 1.0))
    swapped = tokens_read(tiny_pipe, "a red sneaker", **steer)
    embeds = dict(prompt_embeds=encode_text(tiny_pipe, ["a red sneaker"]), negative_prompt_embeds=encode_text(tiny_pipe, [""]))
    plain = tokens_read(tiny_pipe, None, **embeds, **steer)  # from embeddings: nothing to swap
    detail = set(text_readers(tiny_pipe.unet, ["detail"]))
    for name, calls in swapped.items():
        for a, b in zip(calls, plain[name], strict=True):
            cond_a, cond_b = a[a.shape[0] // 2:], b[b.shape[0] // 2:]
            assert torch.equal(cond_a[:, 3:], cond_b[:, 3:]), name
            assert torch.equal(cond_a[:, 2], cond_b[:, 2]) is (name not in detail), name
