"""`SteeringStableDiffusionXLPipeline`: `StableDiffusionXLPipeline` plus steering vectors applied by forward hooks.

SDXL's UNet is the same `UNet2DConditionModel` as SD 1.x (`steer.denoisers.unet.UNetAdapter`); its text tokens are
the two CLIP encoders' penultimate hidden states concatenated (2048 channels on SDXL base), and the pooled text and
size / crop ids enter through ``added_cond_kwargs`` (never steered). SDXL has no safety-checker step, so NaN images
are refused where the pipeline post-processes them (`steer.pipelines.finite.FiniteImageMixin`). Prompt encoding is
serialized across threads (`steer.pipelines.text`).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from steer.dtypes import AutoDtypeMixin
from steer.pipelines.finite import FiniteImageMixin
from steer.pipelines.mixin import SteeringMixin
from steer.pipelines.text import SerializedPromptMixin


class SDXLTextMixin:
    """SDXL's text tokens for learning: ``encode_prompt`` returns (prompt_embeds, negative, pooled, negative pooled);
    the UNet's ``encoder_hidden_states`` is the first."""

    @torch.no_grad()
    def steering_text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """The conditional text tokens of ``prompts`` as the UNet reads them, (N, 77, C) with C the two encoders'
        widths together (``prompt_2`` is the same prompt, as in a call that leaves it unset).

        Args:
            prompts: the prompts, one row each.
        """
        embeds, _, _, _ = self.encode_prompt(  # type: ignore[attr-defined]
            list(prompts), device=self._execution_device, num_images_per_prompt=1, do_classifier_free_guidance=False  # type: ignore[attr-defined]
        )
        return embeds

    @torch.no_grad()
    def steering_denoiser_kwargs(self, prompts: list[str], latents: torch.Tensor) -> dict[str, Any]:
        """What one conditional UNet pass outside a pipeline call needs besides the text tokens (learning from
        images, `steer.extract.extract_from_latents`): SDXL's pooled text and its size / crop ids, as a call at the
        latents' resolution with no crop sets them (five ids with an aesthetic score of 6 for a refiner).

        Args:
            prompts: one prompt per latent.
            latents: the (N, 4, h, w) latents of the pass.
        """
        _, _, pooled, _ = self.encode_prompt(  # type: ignore[attr-defined]
            list(prompts), device=self._execution_device, num_images_per_prompt=1, do_classifier_free_guidance=False  # type: ignore[attr-defined]
        )
        h, w = (int(n) * self.vae_scale_factor for n in latents.shape[-2:])  # type: ignore[attr-defined]
        aesthetic = bool(getattr(self.config, "requires_aesthetics_score", False))  # type: ignore[attr-defined]
        ids = [h, w, 0, 0, 6.0] if aesthetic else [h, w, 0, 0, h, w]
        time_ids = torch.tensor([ids] * len(prompts), device=latents.device, dtype=latents.dtype)
        return {"added_cond_kwargs": {"text_embeds": pooled.to(latents), "time_ids": time_ids}}


class SteeringStableDiffusionXLPipeline(
    SDXLTextMixin, SteeringMixin, AutoDtypeMixin, FiniteImageMixin, SerializedPromptMixin, StableDiffusionXLPipeline
):
    """Stable Diffusion XL with training-free representation steering.

    A drop-in `StableDiffusionXLPipeline`: load it with `from_pretrained` or `from_pipe`; ``__call__`` takes every
    parent argument plus the ``steering_*`` options (see `steer.pipelines.mixin.STEERING_DOC`). NaN images raise
    (`steer.pipelines.finite`); loading without a dtype: `steer.dtypes.AutoDtypeMixin`.
    """

    denoiser_name = "unet"
    casts_vae_in_place = True  # force_upcast VAEs: float32 and back, in place
