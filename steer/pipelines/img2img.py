"""Image-to-image with steering: `SteeringStableDiffusionImg2ImgPipeline`, `SteeringStableDiffusionXLImg2ImgPipeline`
and `SteeringStableDiffusion3Img2ImgPipeline`.

An image-to-image run with ``strength < 1`` performs only the last part of the scheduler's timesteps. The steering
window is measured over the steps the run actually performs (`SteeringMixin.steering_num_steps` reads the call's
``_num_timesteps``): ``steering_window=(0.5, 1.0)`` at ``strength=0.5`` and 10 steps steers run steps 3 and 4
(0-indexed) of the 5 it performs, as a text-to-image run of 5 steps would (`steer.engine.window_bounds`); measured
over the scheduler's 10 timesteps it would steer none.
"""

from __future__ import annotations

from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

from steer.dtypes import AutoDtypeMixin
from steer.pipelines.finite import FiniteImageMixin
from steer.pipelines.mixin import SteeringMixin
from steer.pipelines.stable_diffusion_3 import SD3TextMixin
from steer.pipelines.stable_diffusion_xl import SDXLTextMixin
from steer.pipelines.text import SerializedPromptMixin
from steer.validation import FiniteOutputMixin


class SteeringStableDiffusionImg2ImgPipeline(
    SteeringMixin, AutoDtypeMixin, FiniteOutputMixin, SerializedPromptMixin, StableDiffusionImg2ImgPipeline
):
    """Stable Diffusion (1.x / 2.x) image-to-image with training-free representation steering.

    A drop-in `StableDiffusionImg2ImgPipeline` (``from_pretrained``, ``from_pipe``): every parent argument plus the
    ``steering_*`` options; the window is a fraction of the steps the run performs at its ``strength``.
    """

    denoiser_name = "unet"


class SteeringStableDiffusionXLImg2ImgPipeline(
    SDXLTextMixin, SteeringMixin, AutoDtypeMixin, FiniteImageMixin, SerializedPromptMixin, StableDiffusionXLImg2ImgPipeline
):
    """Stable Diffusion XL image-to-image (and refiner) with training-free representation steering.

    A drop-in `StableDiffusionXLImg2ImgPipeline` (``from_pretrained``, ``from_pipe``): every parent argument plus the
    ``steering_*`` options; the window is a fraction of the steps the run performs (``strength``,
    ``denoising_start``). NaN images raise (`steer.pipelines.finite`).
    """

    denoiser_name = "unet"
    casts_vae_in_place = True  # force_upcast VAEs: float32 and back, in place


class SteeringStableDiffusion3Img2ImgPipeline(
    SD3TextMixin, SteeringMixin, AutoDtypeMixin, FiniteImageMixin, StableDiffusion3Img2ImgPipeline
):
    """Stable Diffusion 3 / 3.5 image-to-image with training-free representation steering (its transformer's sites,
    `steer.denoisers.sd3`); the window is a fraction of the steps the run performs at its ``strength``."""

    denoiser_name = "transformer"
