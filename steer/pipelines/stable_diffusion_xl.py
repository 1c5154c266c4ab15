"""`SteeringStableDiffusionXLPipeline`: `StableDiffusionXLPipeline` plus steering vectors applied by forward hooks.

SDXL's UNet is the same `UNet2DConditionModel` as SD 1.x (`steer.denoisers.unet.UNetAdapter`); its text tokens are
the two CLIP encoders' penultimate hidden states concatenated (2048 channels on SDXL base), and the pooled text and
size / crop ids enter through ``added_cond_kwargs`` (never steered). SDXL has no safety-checker step, so NaN images
are refused where the pipeline post-processes them (`steer.pipelines.finite.FiniteImageMixin`).
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline

from steer.dtypes import AutoDtypeMixin
from steer.pipelines.finite import FiniteImageMixin
from steer.pipelines.mixin import SteeringMixin


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


class SteeringStableDiffusionXLPipeline(SDXLTextMixin, SteeringMixin, AutoDtypeMixin, FiniteImageMixin, StableDiffusionXLPipeline):
    """Stable Diffusion XL with training-free representation steering.

    A drop-in `StableDiffusionXLPipeline`: load it with `from_pretrained` or `from_pipe`; ``__call__`` takes every
    parent argument plus the ``steering_*`` options (see `steer.pipelines.mixin.STEERING_DOC`). NaN images raise
    (`steer.pipelines.finite`); loading without a dtype: `steer.dtypes.AutoDtypeMixin`.
    """

    denoiser_name = "unet"
