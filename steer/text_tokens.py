"""The text tokens the denoiser reads (its ``encoder_hidden_states``): encoding prompts the way the denoiser sees
them, and what the text site records about them (the positions every prompt shares, a prompt set's level along a
direction)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

# Transformers 5's CLIP and T5 tokenizers are backed by one Rust tokenizer object whose padding and truncation are set
# on the object at every call: two threads tokenizing at once on one tokenizer (one pipeline, or pipelines sharing it
# through ``from_pipe``) get each other's padding. Every tokenization of a steered pipeline (its ``encode_prompt``,
# `steer.pipelines.text`; the take-away's word swap, `token_ids`) holds this one process-wide lock.
TEXT_LOCK = threading.RLock()


def token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """``prompt``'s token ids by ``tokenizer`` (no padding, no truncation), under `TEXT_LOCK`."""
    with TEXT_LOCK:
        return list(tokenizer(prompt).input_ids)


@torch.no_grad()
def encode_text(pipe, prompts: Sequence[str], max_sequence_length: int | None = None) -> torch.Tensor:
    """Conditional text tokens as the denoiser reads them (its ``encoder_hidden_states``), one row per prompt; at the
    calls' ``max_sequence_length`` where the family's T5 takes one (Flux, SD3, PixArt; None: the call's default)."""
    family_encoder = getattr(pipe, "steering_text_embeddings", None)
    if family_encoder is not None:
        if max_sequence_length is not None:
            return family_encoder(list(prompts), max_sequence_length=max_sequence_length)
        return family_encoder(list(prompts))
    embeds, _ = pipe.encode_prompt(list(prompts), pipe._execution_device, 1, False)
    return embeds


def reference_level(tokens: torch.Tensor, direction: torch.Tensor) -> list[float]:
    """Per token position, the mean projection of the (unit-normalised) tokens of a prompt set onto the unit
    ``direction``: (N, L, C) tokens -> L floats. Recorded from the negative prompts, it is the level
    ``steering_negative="remove"`` brings a token back to (position 0, the start token, is the same for every prompt)."""
    unit_tokens = tokens / tokens.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    u = direction.float() / direction.float().norm().clamp_min(1e-12)
    return [round(float(x), 6) for x in (unit_tokens @ u).mean(0)]


def shared_lead(token_sets: Sequence[torch.Tensor], rtol: float = 1e-5) -> int:
    """How many leading token positions the text encoder gives every prompt alike, from (N, L, C) token sets that
    include the empty prompt: 1 for CLIP (its start token's causal attention sees nothing else), 0 for T5. Steering
    leaves them alone: the denoiser never saw them vary (0 when no position varies at all)."""
    length = min(t.shape[1] for t in token_sets)
    tokens = torch.cat([t[:, :length].float() for t in token_sets])
    scale = tokens[0].abs().amax(dim=-1).clamp_min(1e-12)  # (L,)
    spread = (tokens - tokens[:1]).abs().amax(dim=(0, 2)) / scale
    varying = (spread > rtol).nonzero()
    return int(varying[0]) if len(varying) else 0
