"""Inpainting with steering: `SteeringStableDiffusionInpaintPipeline`, `SteeringStableDiffusionXLInpaintPipeline` and
`SteeringStableDiffusion3InpaintPipeline`.

The mask's white pixels are repainted, the black ones kept (diffusers' convention). With a regular 4-channel UNet the
pipeline blends the kept region back from the input image at every step, so a steered edit acts inside the mask only;
a 9-channel inpainting UNet (``sd-v1-5-inpainting``) sees the masked image and the mask as input channels and is
steered at the same sites. As for image-to-image (`steer.pipelines.img2img`), the steering window is a fraction of the
steps the run performs at its ``strength``.
"""

from __future__ import annotations

from diffusers import StableDiffusion3InpaintPipeline, StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

from steer.dtypes import AutoDtypeMixin
from steer.pipelines.finite import FiniteImageMixin
from steer.pipelines.mixin import SteeringMixin
from steer.pipelines.stable_diffusion_3 import SD3TextMixin
from steer.pipelines.stable_diffusion_xl import SDXLTextMixin
from steer.pipelines.text import SerializedPromptMixin
from steer.validation import FiniteOutputMixin


class SteeringStableDiffusionInpaintPipeline(
    SteeringMixin, AutoDtypeMixin, FiniteOutputMixin, SerializedPromptMixin, StableDiffusionInpaintPipeline
):
    """Stable Diffusion (1.x / 2.x) inpainting with training-free representation steering.

    A drop-in `StableDiffusionInpaintPipeline` (``from_pretrained``, ``from_pipe``): every parent argument (``image``,
    ``mask_image``, ``strength``...) plus the ``steering_*`` options; the window is a fraction of the steps the run
    performs.
    """

    denoiser_name = "unet"


class SteeringStableDiffusionXLInpaintPipeline(
    SDXLTextMixin, SteeringMixin, AutoDtypeMixin, FiniteImageMixin, SerializedPromptMixin, StableDiffusionXLInpaintPipeline
):
    """Stable Diffusion XL inpainting with training-free representation steering.

    A drop-in `StableDiffusionXLInpaintPipeline` (``from_pretrained``, ``from_pipe``): every parent argument plus the
    ``steering_*`` options; the window is a fraction of the steps the run performs (``strength``,
    ``denoising_start``). NaN images raise (`steer.pipelines.finite`).
    """

    denoiser_name = "unet"
    casts_vae_in_place = True  # force_upcast VAEs: float32 and back, in place


class SteeringStableDiffusion3InpaintPipeline(
    SD3TextMixin, SteeringMixin, AutoDtypeMixin, FiniteImageMixin, StableDiffusion3InpaintPipeline
):
    """Stable Diffusion 3 / 3.5 inpainting with training-free representation steering (its transformer's sites); a
    16-channel transformer keeps the unmasked latents from the image at every step, as SD's 4-channel UNet does."""

    denoiser_name = "transformer"
