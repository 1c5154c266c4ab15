"""ControlNet with steering: `SteeringStableDiffusionControlNetPipeline` and
`SteeringStableDiffusionXLControlNetPipeline`.

Only the UNet is steered. The ControlNet is a separate module (a copy of the UNet's encoder reading the control image)
whose residuals the UNet adds to its own down and mid blocks: it reads the prompt through cross-attentions of its own,
which steer leaves alone, so the control image keeps fixing the layout while a direction edits what the UNet draws
into it. Each step calls the ControlNet and the UNet once each; the steering window counts the UNet's calls.
"""

from __future__ import annotations

from diffusers import StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline

from steer.dtypes import AutoDtypeMixin
from steer.pipelines.finite import FiniteImageMixin
from steer.pipelines.mixin import SteeringMixin
from steer.pipelines.stable_diffusion_xl import SDXLTextMixin
from steer.pipelines.text import SerializedPromptMixin
from steer.validation import FiniteOutputMixin


class SteeringStableDiffusionControlNetPipeline(
    SteeringMixin, AutoDtypeMixin, FiniteOutputMixin, SerializedPromptMixin, StableDiffusionControlNetPipeline
):
    """Stable Diffusion (1.x / 2.x) with a ControlNet and training-free representation steering.

    A drop-in `StableDiffusionControlNetPipeline` (``from_pretrained``, ``from_pipe(pipe, controlnet=...)``): every
    parent argument (``image`` is the control image) plus the ``steering_*`` options.
    """

    denoiser_name = "unet"


class SteeringStableDiffusionXLControlNetPipeline(
    SDXLTextMixin, SteeringMixin, AutoDtypeMixin, FiniteImageMixin, SerializedPromptMixin, StableDiffusionXLControlNetPipeline
):
    """Stable Diffusion XL with a ControlNet and training-free representation steering.

    A drop-in `StableDiffusionXLControlNetPipeline`: every parent argument plus the ``steering_*`` options. NaN images
    raise (`steer.pipelines.finite`).
    """

    denoiser_name = "unet"
    casts_vae_in_place = True  # force_upcast VAEs: float32 and back, in place

    def steering_num_steps(self) -> int:
        """The steps the run performs: diffusers' SDXL ControlNet pipeline records its step count before it cuts the
        schedule at ``denoising_end`` (the other SDXL pipelines after), so the window was spread over steps that never
        ran (at ``denoising_end`` <= 0.45 the default window steered none). The cut as diffusers makes it."""
        total = super().steering_num_steps()
        end = getattr(self, "_denoising_end", None)
        if isinstance(end, float) and 0 < end < 1:
            n_train = self.scheduler.config.num_train_timesteps
            cutoff = int(round(n_train - end * n_train))
            total = min(total, int((self.scheduler.timesteps >= cutoff).sum()))
        return total
