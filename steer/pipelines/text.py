"""Prompt encoding one thread at a time (`SerializedPromptMixin`).

Transformers 5's CLIP (and T5) tokenizers are backed by one Rust tokenizer object whose padding and truncation are
set on the object at every call. Stable Diffusion's ``encode_prompt`` tokenizes twice per prompt (padded to 77, then
``padding="longest"`` to detect truncation), so two threads encoding at once on one tokenizer (one pipeline, or
pipelines sharing it through ``from_pipe``) get each other's padding: shape errors or, worse, silently different text
tokens. Steered pipelines serialize ``encode_prompt`` on one process-wide lock (`steer.text_tokens.TEXT_LOCK`, which
the take-away's word swap tokenizes under too); encoding is a small part of a call.
"""

from __future__ import annotations

from typing import Any

from steer.text_tokens import TEXT_LOCK


class SerializedPromptMixin:
    """Pipeline mixin: ``encode_prompt`` runs under `TEXT_LOCK` (list it before the diffusers class)."""

    def encode_prompt(self, *args: Any, **kwargs: Any):
        """The diffusers pipeline's ``encode_prompt``, one thread at a time (see `steer.pipelines.text`)."""
        with TEXT_LOCK:
            return super().encode_prompt(*args, **kwargs)  # type: ignore[misc]
