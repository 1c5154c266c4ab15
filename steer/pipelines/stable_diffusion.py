"""`SteeringStableDiffusionPipeline`: `StableDiffusionPipeline` plus steering vectors applied by forward hooks."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline

from steer.dtypes import AutoDtypeMixin
from steer.pipelines.mixin import SteeringMixin
from steer.pipelines.text import SerializedPromptMixin
from steer.validation import FiniteOutputMixin


class SteeringStableDiffusionPipeline(
    SteeringMixin, AutoDtypeMixin, FiniteOutputMixin, SerializedPromptMixin, StableDiffusionPipeline
):
    """Stable Diffusion (1.x / 2.x) with training-free representation steering.

    A drop-in `StableDiffusionPipeline`: load it with `from_pretrained` or `from_pipe`; ``__call__`` takes every
    parent argument plus the ``steering_*`` options (see `steer.pipelines.mixin.STEERING_DOC`). Out-of-range inputs
    and NaN images raise (`steer.validation`); loading without a dtype: `steer.dtypes.AutoDtypeMixin`.
    """

    denoiser_name = "unet"
