"""`SteeringPixArtSigmaPipeline`: `PixArtSigmaPipeline` plus steering vectors applied by forward hooks.

What differs from Stable Diffusion:

- CFG: the parent has no ``do_classifier_free_guidance`` property; its ``__call__`` decides ``guidance_scale > 1``
  locally and hands the decision to ``encode_prompt``. `encode_prompt` here notes it for the run in progress (in a
  context variable keyed by the pipeline object, so threads and per-call copies never share it, and nothing is left
  on the pipeline), and `steering_cfg` reads it.
- Text tokens: T5 tokens padded to ``max_sequence_length`` (300) and masked in the transformer's cross-attentions.
  `steering_text_embeddings` returns them with the masked (padding) positions filled by the mean of the prompt's real
  tokens, so a mean over positions (learn's ``text`` preset) is the mean over the tokens the transformer reads.
- Prompt encoding holds `steer.text_tokens.TEXT_LOCK`, as every steered pipeline's does: its T5 tokenizer keeps
  padding settings on one shared backend.
- No safety checker: `steer.pipelines.finite.FiniteImageMixin` gives the pipeline an image processor whose
  ``postprocess`` (between VAE decode and pixels) refuses NaN / infinite images, as SDXL, SD3 and Flux do.
"""

from __future__ import annotations

import contextvars
from typing import Any

import torch
from diffusers import PixArtSigmaPipeline
from diffusers.utils import is_bs4_available, is_ftfy_available

from steer.dtypes import AutoDtypeMixin
from steer.pipelines.finite import FiniteImageMixin
from steer.pipelines.mixin import SteeringMixin
from steer.text_tokens import TEXT_LOCK

# (id of the pipeline object whose encode_prompt ran last in this context, its do_classifier_free_guidance)
_LAST_CFG: contextvars.ContextVar[tuple[int, bool] | None] = contextvars.ContextVar("steer_pixart_cfg", default=None)


class SteeringPixArtSigmaPipeline(SteeringMixin, AutoDtypeMixin, FiniteImageMixin, PixArtSigmaPipeline):
    """PixArt-Sigma with training-free representation steering.

    A drop-in `PixArtSigmaPipeline`: load it with `from_pretrained` or `from_pipe`; ``__call__`` takes every parent
    argument plus the ``steering_*`` options (see `steer.pipelines.mixin.STEERING_DOC`). Sites: `steer.denoisers.
    pixart.PixArtAdapter`. NaN images raise `NonFiniteOutputError`; loading without a dtype: `steer.dtypes.
    AutoDtypeMixin`.

    Args:
        tokenizer, text_encoder, vae, transformer, scheduler: as `PixArtSigmaPipeline`.
    """

    denoiser_name = "transformer"

    def encode_prompt(self, prompt: Any, do_classifier_free_guidance: bool = True, *args: Any, **kwargs: Any):
        """The parent's ``encode_prompt``, one thread at a time (its T5 tokenizer is not thread-safe:
        `steer.text_tokens.TEXT_LOCK`); also notes ``do_classifier_free_guidance`` for `steering_cfg` (the parent's
        ``__call__`` decides it, ``guidance_scale > 1``, and keeps it in a local variable)."""
        _LAST_CFG.set((id(self), bool(do_classifier_free_guidance)))
        with TEXT_LOCK:
            return super().encode_prompt(prompt, do_classifier_free_guidance, *args, **kwargs)

    def steering_cfg(self) -> bool:
        """Whether the transformer's batch is ``[uncond, cond]`` in this pipeline's call in progress."""
        last = _LAST_CFG.get()
        return last is not None and last[0] == id(self) and last[1]

    def steering_word_text(self, prompt: str) -> str:
        """``prompt`` as PixArt tokenizes it: lower-cased and stripped, or cleaned where ``clean_caption`` can apply (as
        `steering_text_embeddings` encodes; a call that passes ``clean_caption=False`` where it could apply tokenizes
        the lower-cased prompt instead)."""
        return self._text_preprocessing(prompt, clean_caption=is_bs4_available() and is_ftfy_available())[0]

    @torch.no_grad()
    def steering_text_embeddings(self, prompts: list[str], max_sequence_length: int = 300) -> torch.Tensor:
        """The conditional T5 tokens of ``prompts`` as the transformer receives them (``encoder_hidden_states``,
        before its caption projection), padding positions filled with the mean of each prompt's real tokens.

        Args:
            prompts: the prompts, one row each.
            max_sequence_length: as the call's (PixArt-Sigma's default 300).
        """
        with TEXT_LOCK:  # the parent's, not this class's: the call's CFG note is left as the call set it
            embeds, mask, _, _ = PixArtSigmaPipeline.encode_prompt(
                self, list(prompts), do_classifier_free_guidance=False, device=self._execution_device,
                clean_caption=is_bs4_available() and is_ftfy_available(),  # the call's default (True) where it can apply
                max_sequence_length=max_sequence_length,
            )
        keep = mask.to(embeds.dtype).unsqueeze(-1)
        mean = (embeds * keep).sum(1, keepdim=True) / keep.sum(1, keepdim=True).clamp_min(1)
        return torch.where(keep.bool(), embeds, mean)
