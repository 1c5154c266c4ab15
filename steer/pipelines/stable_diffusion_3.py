"""`SteeringStableDiffusion3Pipeline`: `StableDiffusion3Pipeline` (SD3 / SD3.5) plus steering vectors applied by
forward hooks on its `SD3Transformer2DModel` (sites: `steer.denoisers.sd3`)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers import StableDiffusion3Pipeline

from steer.config import STEERING_DEFAULTS
from steer.dtypes import AutoDtypeMixin
from steer.pipelines.finite import FiniteImageMixin
from steer.pipelines.mixin import SteeringMixin
from steer.text_tokens import TEXT_LOCK


class SD3TextMixin:
    """SD3's prompt encoding, one thread at a time, and its text tokens for learning (every SD3 pipeline task)."""

    def encode_prompt(self, *args: Any, **kwargs: Any):
        """`StableDiffusion3Pipeline.encode_prompt`, one thread at a time (the tokenizers are not thread-safe:
        `steer.text_tokens.TEXT_LOCK`, the lock every steered pipeline encodes under)."""
        with TEXT_LOCK:
            return super().encode_prompt(*args, **kwargs)  # type: ignore[misc]

    @torch.no_grad()
    def steering_text_embeddings(self, prompts: list[str], max_sequence_length: int | None = None) -> torch.Tensor:
        """The conditional ``prompt_embeds`` of ``prompts`` (CLIP-L/G tokens zero-padded to the T5 width, then the T5
        tokens: ``(N, 77 + max_sequence_length, joint_attention_dim)``, 256 T5 tokens by default), as the
        transformer's ``encoder_hidden_states`` reads them."""
        embeds, _, _, _ = self.encode_prompt(  # type: ignore[attr-defined]
            list(prompts), None, None, device=self._execution_device, num_images_per_prompt=1,  # type: ignore[attr-defined]
            do_classifier_free_guidance=False, **({"max_sequence_length": max_sequence_length} if max_sequence_length else {}),
        )
        return embeds

    def steering_word_tokenizers(self) -> list[tuple[Any, int]]:
        """The take-away's word swap reads both of SD3's text streams: CLIP's ids at the first positions (CLIP-L and
        -G tokenize alike), T5's from position ``tokenizer_max_length`` (77) on, when the pipeline has its T5 encoder
        (without it those positions are zeros for every prompt)."""
        found = [(self.tokenizer, 0)] if getattr(self, "tokenizer", None) is not None else []
        if getattr(self, "text_encoder_3", None) is not None and getattr(self, "tokenizer_3", None) is not None:
            found.append((self.tokenizer_3, int(self.tokenizer_max_length)))  # type: ignore[attr-defined]
        return found


class SteeringStableDiffusion3Pipeline(SD3TextMixin, SteeringMixin, AutoDtypeMixin, FiniteImageMixin, StableDiffusion3Pipeline):
    """Stable Diffusion 3 / 3.5 with training-free representation steering.

    A drop-in `StableDiffusion3Pipeline`: load it with `from_pretrained` or `from_pipe`; ``__call__`` takes every
    parent argument plus the ``steering_*`` options (see `steer.pipelines.mixin.STEERING_DOC`). The default learned
    direction (``preset="text"``) steers the transformer's ``encoder_hidden_states`` (CLIP + T5 tokens before
    ``context_embedder``); block sites are ``transformer_blocks.{i}`` (image stream). CFG is one batched
    ``[uncond, cond]`` call. Decoded images holding NaN / inf raise `NonFiniteOutputError` (SD3 has no safety checker:
    `steer.pipelines.finite.FiniteImageMixin` checks before ``image_processor.postprocess``). Steering together with
    skip-layer guidance (``skip_guidance_layers``) is refused: its extra conditional-only transformer call per step
    would shift the step count and the CFG halves the hooks rely on.
    """

    denoiser_name = "transformer"

    def _steered_call(self, parent: type, *args: Any, **kwargs: Any):
        plain = {k: v for k, v in kwargs.items() if k not in STEERING_DEFAULTS and k not in self._extra_call_params()}
        try:
            bound = inspect.signature(parent.__call__).bind(self, *args, **plain)
        except TypeError:
            bound = None  # the parent call raises its own error
        if bound is not None and bound.arguments.get("skip_guidance_layers") is not None:
            _, vectors, scales = self._resolve_steering({k: v for k, v in kwargs.items() if k in STEERING_DEFAULTS},
                                                        self._num_images(bound))
            if vectors and bool(scales.abs().sum() > 0):
                raise ValueError(
                    "steering with skip_guidance_layers is not supported (skip-layer guidance adds a conditional-only "
                    "transformer call per step); pass skip_guidance_layers=None or steering=None"
                )
        return super()._steered_call(parent, *args, **kwargs)
