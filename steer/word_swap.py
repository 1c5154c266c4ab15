"""Planning the take-away's word swap from a call's prompts (`steer.engine.word_swap` applies it).

A call that adds one direction and takes away another under ``steering_negative="replace"`` (the take-away's default)
whose phrase a row's prompt states ("a blue sandal" with ``[to_orange, to_blue]``) also turns that phrase's own token
states into the ones the text encoder gives the prompt with the added direction's phrase in its place ("a orange
sandal"), by the row's removal amount, while the added direction acts; every other token position is the prompt's
own, steered as before. The take-away's directions are
means over every token, most of them padding, and cannot turn the word itself: on the demo model "blue" and "orange"
are at cosine -0.24, and at the fitted strength the word reached only 0.66 while the padding overshot
(docs/steering.md "Session 41").

Which phrases: those a direction's recorded prompts state (`phrases_of`: a slider side's flip words, else the
positives' attribute words against their open forms, as the take-away's suggestion reads them). Which positions: the
tokens where the prompt and its rewrite differ, read with the pipeline's `steering_word_tokenizers` (the tokenizers
whose ids line up with the text tokens the denoiser reads, each from its first position: CLIP on SD and SDXL, CLIP and
then T5 on SD3, T5 on PixArt and Flux; none: the family swaps nothing), under `steer.text_tokens.TEXT_LOCK`. A row
swaps only where its prompt states the phrase word for word as `steer.wording.states` reads it (case aside, a plural
as its singular: "two red dresses" states "dress" and is rewritten "two red bags"; "blueish" does not state "blue")
and the phrase fits in the encoder's length.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from steer.engine.word_swap import WordSwap
from steer.sliders import FLIP_KEY
from steer.text_tokens import encode_text, token_ids
from steer.wording import WORD_PATTERN, is_plural, open_prompts, plural, prompt_words, stated_phrases


def phrases_of(vector: Any) -> tuple[str, ...]:
    """The phrases that state ``vector``'s attribute: a slider side's recorded flip words, else those of the prompts it
    was learned from (`phrases_of_prompts`); () when it records neither."""
    meta = getattr(vector, "metadata", None) or {}
    flip = meta.get(FLIP_KEY)
    if isinstance(flip, dict) and isinstance(flip.get("words"), list):
        return tuple(str(w) for w in flip["words"] if isinstance(w, str))
    prompts = [(meta.get(k) or {}).get("prompts") if isinstance(meta.get(k), dict) else None for k in ("positive", "negative")]
    if not all(isinstance(p, list) and p and all(isinstance(x, str) for x in p) for p in prompts):
        return ()
    found = phrases_of_prompts(tuple(prompts[0]), tuple(prompts[1]))
    return found[0] if found is not None else ()


@functools.lru_cache(maxsize=256)
def phrases_of_prompts(positive: tuple[str, ...], negative: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[tuple[str, ...]]] | None:
    """A direction's stated phrases and its open prompts (as word tuples) from the prompts it records; None where they
    do not tell (no attribute words). Word matching is the costly part: read once per prompt set; immutable, as every
    caller shares the cached answer."""
    try:
        opened = open_prompts(positive, negative)
        return tuple(stated_phrases(positive, opened)), frozenset(tuple(prompt_words(o)) for o in opened)
    except (ValueError, AttributeError, TypeError):
        return None


def rewritten(prompt: str, phrases: Sequence[str], replacement: str) -> str | None:
    """``prompt`` with the first of ``phrases`` it states replaced by ``replacement``; None where it states none.
    Words are read as `steer.wording.states` reads them (case aside, "an" as "a", a plural as its singular), so "two
    red dresses" states "dress" and becomes "two red bags": where the prompt's last matched word is a plural and the
    replacement's last word is not, the replacement's is made plural (`steer.wording.plural`)."""
    spans = [(m.start(), m.end()) for m in re.finditer(WORD_PATTERN, prompt)]
    have = prompt_words(prompt)
    for phrase in phrases:
        want = prompt_words(phrase)
        if not want:
            continue
        at = next((i for i in range(len(have) - len(want) + 1) if have[i:i + len(want)] == want), None)
        if at is None:
            continue
        last = at + len(want) - 1
        words = replacement.split()
        if words and is_plural(prompt[slice(*spans[last])]) and not is_plural(words[-1]):
            words[-1] = plural(words[-1])
        return prompt[:spans[at][0]] + " ".join(words) + prompt[spans[last][1]:]
    return None


ENCODER_PROMPTS = ("prompt_2", "prompt_3")  # the prompts SDXL, SD3 and Flux can give their other text encoders


def plan_word_swap(pipe: Any, prompts: Sequence[str] | None, vectors: Sequence[Any], scales: torch.Tensor,
                   negative: str, max_sequence_length: int | None = None,
                   call_arguments: Mapping[str, Any] | None = None) -> WordSwap | None:
    """The word swap of a call: for each image row (``prompts``, one per image), the take-away (a negative column of
    ``scales`` under ``negative="replace"``) whose phrase its prompt states, turned into the phrase of the direction the
    row adds most, at the steps where that one is added (its window) and the take-away removes; None where no row
    swaps, the call gives no prompts (embeddings) or the family has no `steering_word_tokenizers`. One text-encoder pass
    over the rewritten prompts. ``call_arguments``: the call's own; where they give another text encoder a prompt
    of its own (`ENCODER_PROMPTS` unlike ``prompt``), whose positions the swap does not read, nothing is swapped (a
    warning says so: the stated word is taken away, not turned)."""
    if negative != "replace" or prompts is None or not bool((scales < 0).any()):
        return None
    tokenizers = getattr(pipe, "steering_word_tokenizers", lambda: [])()
    if not tokenizers:
        return None
    phrases = [phrases_of(v) for v in vectors]
    plans: list[tuple[int, int, int, str, str]] = []  # (row, column taken away, column added, prompt, rewrite)
    for row, prompt in enumerate(prompts):
        s = scales[row if scales.shape[0] > 1 else 0]
        added = [k for k in sorted(range(len(vectors)), key=lambda k: -float(s[k])) if s[k] > 0 and phrases[k]]
        if not added:
            continue
        for k in range(len(vectors)):
            new = rewritten(prompt, phrases[k], phrases[added[0]][0]) if s[k] < 0 and phrases[k] else None
            if new is not None and new != prompt:
                plans.append((row, k, added[0], prompt, new))
                break
    if not plans:
        return None
    arguments = call_arguments or {}
    own = [k for k in ENCODER_PROMPTS if arguments.get(k) is not None and arguments.get(k) != arguments.get("prompt")]
    if own:
        warnings.warn(f"steering_negative='replace': this call gives {' and '.join(own)} a prompt of its own, whose tokens the "
                      "word swap does not read; the stated word is taken away but not turned (as under 'remove')",
                      UserWarning, stacklevel=3)
        return None
    encoded = encode_text(pipe, [new for *_, new in plans], max_sequence_length).detach().float().cpu()
    n, (length, channels) = len(prompts), encoded.shape[1:]
    columns, targets = torch.full((n,), -1), torch.full((n,), -1)
    mask, states = torch.zeros(n, length, dtype=torch.bool), torch.zeros(n, length, channels)
    # each text stream the denoiser reads, from its own first position up to the next stream's (SD3: CLIP's 77, then T5's)
    offsets = sorted(offset for _, offset in tokenizers)
    streams = [(tokenizer, offset, min([o for o in offsets if o > offset], default=length)) for tokenizer, offset in tokenizers]
    as_tokenized = getattr(pipe, "steering_word_text", lambda text: text)
    for (row, k, t, prompt, new), target in zip(plans, encoded, strict=True):
        for tokenizer, offset, stream_end in streams:
            span = _changed_span(tokenizer, as_tokenized(prompt), as_tokenized(new))
            if span is None:
                continue
            (start, end), last = span
            start, end, last = start + offset, end + offset, last + offset
            if end > stream_end or last > stream_end:
                continue  # the phrase lies past what this stream's encoder reads (truncated)
            for pos in range(start, end):  # aligned where the two phrases have as many tokens, else the target's last
                states[row, pos] = target[pos if end == last else last - 1]
            mask[row, start:end] = True
            columns[row], targets[row] = k, t
    return WordSwap(columns, targets, mask, states) if bool((columns >= 0).any()) else None


def _changed_span(tokenizer: Any, prompt: str, new: str) -> tuple[tuple[int, int], int] | None:
    """Where ``prompt``'s token ids differ from ``new``'s: ``((start, end), new_end)``, the changed tokens
    ``[start, end)`` of the prompt and ``[start, new_end)`` of the rewrite (their common start and end left out);
    None where they do not differ."""
    a, b = token_ids(tokenizer, prompt), token_ids(tokenizer, new)
    start = 0
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    tail = 0
    while tail < min(len(a), len(b)) - start and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    end, new_end = len(a) - tail, len(b) - tail
    if end <= start or new_end <= start:
        return None
    return (start, end), new_end
