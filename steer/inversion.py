"""Editing a given image from its inversion: the slider's 0 is the picture itself, not a re-drawing of it.

Image-to-image re-draws the picture from a noised copy, so at steering scale 0 it already differs from it (a red
sneaker edited with the open prompt "a sneaker" comes back orange on the demo model), and the edit and the re-draw
cannot be told apart. An *edit-friendly* inversion (Huberman-Spiegelglas et al., CVPR 2024, the inversion LEDITS++
builds on) records, for one prompt and guidance, the noise each DDPM step needs so that sampling again lands exactly on
the picture's latents; steering the sampling that replays those noises moves only what the direction changes.

How it runs, with the pipeline's own loop (any family whose pipeline steps a DDIM scheduler: SD, SDXL):

- `invert_image`: the picture's latents ``x0`` are noised independently to every timestep of the run; one pipeline call
  starts from the noisiest, and a scheduler that knows those noised latents (`_InvertingScheduler`) returns the next
  one at each step instead of sampling, recording ``x_{t-1} - mean(x_t, eps)`` (the residual the step's noise must
  supply; DDPM means, eta 1). Cost: one sampling run (``num_inference_steps`` UNet calls, CFG rows included).
- `ImageInversion.edit` (or ``pipe(**inversion.call_kwargs(rows))``): a call from the same start whose scheduler
  (`_ReplayingScheduler`) adds the recorded residuals to its means. Unsteered, every step sees the inputs the inversion
  saw, so the result is the picture's latents (decoded: the VAE's reconstruction); steered, the means move and the
  residuals keep the rest.

The residuals are shared by the per-call scheduler copies steer's pipelines make (a holder that deep copies as
itself), so two calls at once replay the same inversion; each copy keeps its own step index.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import DDIMScheduler

from steer.samplers import with_scheduler


class _Shared:
    """Tensors every per-call copy of a scheduler must see as one object (deep copies return it)."""

    def __init__(self, targets: list[torch.Tensor] | None = None):
        self.targets = targets or []  # inversion: the noised latents each step returns
        self.residuals: list[torch.Tensor] = []

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class _RecordedScheduler(DDIMScheduler):
    """A DDIM scheduler stepping with DDPM means (eta 1, no noise drawn) whose ``step`` the subclasses complete."""

    _shared: _Shared
    _index: int = 0

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        self._index = 0

    def _mean(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
        return super().step(model_output, timestep, sample, eta=1.0, variance_noise=torch.zeros_like(sample)).prev_sample

    def _output(self, prev: torch.Tensor, return_dict: bool):
        from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

        self._index += 1
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=None) if return_dict else (prev,)


class _InvertingScheduler(_RecordedScheduler):
    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True):
        target = self._shared.targets[self._index].to(sample.device, sample.dtype)
        self._shared.residuals.append((target - self._mean(model_output, timestep, sample)).detach())
        return self._output(target.expand_as(sample), return_dict)


class _ReplayingScheduler(_RecordedScheduler):
    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        super().set_timesteps(*args, **kwargs)
        if len(self.timesteps) != len(self._shared.residuals):  # a call that overrides the recorded step count
            raise ValueError(f"this inversion was recorded over {len(self._shared.residuals)} steps; replay it with "
                             f"num_inference_steps={len(self._shared.residuals)} (ImageInversion.call_kwargs)")

    def step(self, model_output, timestep, sample, eta=0.0, use_clipped_model_output=False, generator=None,
             variance_noise=None, return_dict=True):
        residual = self._shared.residuals[self._index].to(sample.device, sample.dtype)
        return self._output(self._mean(model_output, timestep, sample) + residual, return_dict)


def _scheduler(pipe: Any, kind: type, shared: _Shared) -> DDIMScheduler:
    made = kind.from_config(pipe.scheduler.config)
    made._shared = shared
    return made


@dataclass
class ImageInversion:
    """A picture inverted for one prompt, guidance and step count: the start latents and each step's residual."""

    prompt: str
    negative_prompt: str | None
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    start: torch.Tensor  # (1, C, h, w): the picture's latents noised to the first timestep
    _shared: _Shared = field(repr=False, default_factory=_Shared)

    def call_kwargs(self, rows: int = 1) -> dict[str, Any]:
        """The arguments of a call that replays the inversion on ``rows`` rows (add ``steering=...``): prompt,
        negative prompt, steps, guidance, size and the start latents."""
        return {
            "prompt": [self.prompt] * rows,
            "negative_prompt": [self.negative_prompt] * rows if self.negative_prompt else None,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "latents": self.start.expand(rows, *self.start.shape[1:]).clone(),
        }

    def pipeline(self, pipe: Any) -> Any:
        """``pipe`` replaying this inversion: a copy whose scheduler adds the recorded residuals (modules shared)."""
        return with_scheduler(pipe, _scheduler(pipe, _ReplayingScheduler, self._shared))

    def edit(self, pipe: Any, rows: int = 1, **kwargs: Any) -> Any:
        """``pipe``'s output for ``rows`` rows replayed from the inversion, with ``kwargs`` (``steering=``,
        ``steering_scale=``, ``output_type=``...): unsteered rows are the picture (its VAE reconstruction)."""
        return self.pipeline(pipe)(**self.call_kwargs(rows), **kwargs)


def replay_rows(pipe: Any, inversions: list[ImageInversion], **kwargs: Any) -> Any:
    """One call of ``pipe`` replaying several inversions, one row each (the same steps, guidance and size; each its
    own prompt): ``steer batch`` edits rows of different pictures this way. ``kwargs`` as in `ImageInversion.edit`."""
    first = inversions[0]
    shape = (first.num_inference_steps, first.guidance_scale, first.height, first.width)
    if any((i.num_inference_steps, i.guidance_scale, i.height, i.width) != shape for i in inversions):
        raise ValueError("inversions replayed in one call need the same steps, guidance and size")
    shared = _Shared()
    shared.residuals = [torch.cat([i._shared.residuals[k] for i in inversions]) for k in range(len(first._shared.residuals))]
    negatives = [i.negative_prompt or "" for i in inversions]
    call = {"prompt": [i.prompt for i in inversions], "negative_prompt": negatives if any(negatives) else None,
            "num_inference_steps": shape[0], "guidance_scale": shape[1], "height": shape[2], "width": shape[3],
            "latents": torch.cat([i.start for i in inversions])}
    return with_scheduler(pipe, _scheduler(pipe, _ReplayingScheduler, shared))(**call, **kwargs)


def replay_inverted(pipe: Any, replay: Any, vectors: list[Any], edit: Any) -> Any:
    """The image a recipe of an inverted edit describes (`steer reproduce`): ``edit`` (`steer.replay.find_edit_inputs`)
    inverted again as recorded (prompt, steps, guidance, size, the seed's noise) and replayed in the recorded call's
    layout with ``vectors``; a PIL image."""
    from steer.replay import replay_steering

    if replay.height is None or replay.width is None:
        raise ValueError("the recipe of an edit records no size")
    rows, steering = replay_steering(replay, vectors)
    device = pipe._execution_device
    inversion = invert_image(pipe, edit.prepared(replay.height, replay.width)["image"], replay.prompt,
                             negative_prompt=replay.negative_prompt, num_inference_steps=replay.steps, guidance_scale=replay.guidance,
                             generator=torch.Generator("cpu" if device.type == "mps" else device).manual_seed(replay.seed))
    return inversion.edit(pipe, rows=rows, **steering).images[replay.row]


def check_invertible(pipe: Any) -> None:
    """One-line `ValueError` unless ``pipe`` can invert an image: a VAE image processor and a scheduler DDIM can stand
    in for (SD, SDXL; not the flow-matching families)."""
    if not hasattr(pipe, "vae") or not hasattr(pipe, "image_processor"):
        raise ValueError(f"a {type(pipe).__name__} has no VAE image processor to invert an image with")
    scheduler = pipe.scheduler
    if not isinstance(scheduler, DDIMScheduler) and DDIMScheduler not in getattr(scheduler, "compatibles", []):
        raise ValueError(f"inverting needs a pipeline that can step a DDIM scheduler (SD, SDXL); a {type(pipe).__name__} "
                         f"samples with {type(scheduler).__name__}")


@torch.no_grad()
def invert_image(
    pipe: Any,
    image: Any,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float = 5.0,
    generator: torch.Generator | None = None,
    height: int | None = None,
    width: int | None = None,
) -> ImageInversion:
    """Invert ``image`` for ``prompt`` (edit-friendly DDPM inversion): `ImageInversion.edit` then steers it, the
    unsteered rows giving the picture back.

    Args:
        pipe: a steered text-to-image pipeline stepping a DDIM-compatible scheduler (SD, SDXL); it is not changed.
        image: a PIL image (or what the pipeline's image processor takes), resized to ``height`` x ``width``
            (default: its own size, rounded down to a multiple of 8).
        prompt: what the picture shows, leaving open what the edits change ("a sneaker").
        negative_prompt, num_inference_steps, guidance_scale: as in the pipeline call; the edits replay them.
        generator: draws the independent noise of each timestep (the inversion is deterministic given it).
    """
    from steer.images import edit_size

    check_invertible(pipe)
    size = getattr(image, "size", None)
    if height is None or width is None:
        if size is None:
            raise ValueError("give height and width for an image that is not a PIL image")
        height, width = edit_size(size, height, width)
    device, vae = pipe._execution_device, pipe.vae
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):  # SDXL's VAE overflows in fp16: encode
        vae = copy.deepcopy(vae).float()  # with a float32 copy (casting the shared one would race other calls)
    pixels = pipe.image_processor.preprocess(image, height=height, width=width).to(device, vae.dtype)
    latents = (vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor).to(pipe.vae.dtype)
    probe = _scheduler(pipe, _InvertingScheduler, _Shared())
    probe.set_timesteps(num_inference_steps, device=device)
    timesteps = list(probe.timesteps)
    alphas = probe.alphas_cumprod.to(device)
    noise = [torch.randn(latents.shape, generator=generator, device=generator.device if generator else "cpu").to(device, latents.dtype)
             for _ in timesteps]
    noised = [alphas[t].sqrt() * latents + (1 - alphas[t]).sqrt() * n for t, n in zip(timesteps, noise, strict=True)]
    shared = _Shared(targets=[*noised[1:], latents])  # what each step returns: the next timestep's, then the picture's
    inverting = with_scheduler(pipe, _scheduler(pipe, _InvertingScheduler, shared))
    inverting(prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
              height=height, width=width, latents=noised[0].clone(), output_type="latent")
    if len(shared.residuals) != len(timesteps):
        raise RuntimeError(f"the inversion recorded {len(shared.residuals)} steps of {len(timesteps)}: the pipeline "
                           "does not step its scheduler once per timestep")
    shared.targets = []  # not needed to replay
    return ImageInversion(prompt, negative_prompt, num_inference_steps, float(guidance_scale), height, width, noised[0], shared)
