"""Editing a given image from its inversion: the slider's 0 is the picture itself, not a re-drawing of it.

Image-to-image re-draws the picture from a noised copy, so at steering scale 0 it already differs from it (a red
sneaker edited with the open prompt "a sneaker" comes back orange on the demo model), and the edit and the re-draw
cannot be told apart. An *edit-friendly* inversion (Huberman-Spiegelglas et al., CVPR 2024, the inversion LEDITS++
builds on) records, for one prompt and guidance, the noise each DDPM step needs so that sampling again lands exactly on
the picture's latents; steering the sampling that replays those noises moves only what the direction changes.

How it runs, with the pipeline's own loop (SD and SDXL stepping DDIM; SD3 stepping flow-matching Euler):

- `invert_image`: the picture's latents ``x0`` are noised independently to every timestep of the run (DDPM:
  ``sqrt(a) x0 + sqrt(1 - a) eps``; flow matching: ``(1 - sigma) x0 + sigma eps``); one pipeline call starts from the
  noisiest, and a scheduler that knows those noised latents (`_Inverting`) returns the next one at each step instead of
  sampling, recording ``x_{t-1} - mean(x_t, eps)`` (the residual the step's noise must supply; DDPM means with eta 1,
  or the Euler step of the flow). Cost: one sampling run (``num_inference_steps`` denoiser calls, CFG rows included).
- `ImageInversion.edit` (or ``pipe(**inversion.call_kwargs(rows))``): a call from the same start whose scheduler
  (`_Replaying`) adds the recorded residuals to its means. Unsteered, every step sees the inputs the inversion
  saw, so the result is the picture's latents (decoded: the VAE's reconstruction); steered, the means move and the
  residuals keep the rest.

The residuals are shared by the per-call scheduler copies steer's pipelines make (a holder that deep copies as
itself), so two calls at once replay the same inversion; each copy keeps its own step index.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import PIL.Image
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from steer.config import outside_steering_blocks
from steer.samplers import with_scheduler
from steer.vae_codec import encode_pixels
from steer.validation import MAX_SIZE, MAX_STEPS, check_int


class _Shared:
    """Tensors every per-call copy of a scheduler must see as one object (deep copies return it)."""

    def __init__(self, targets: list[torch.Tensor] | None = None, x0: torch.Tensor | None = None, noise: list[torch.Tensor] | None = None):
        self.targets = targets or []  # DDPM inversion: the noised latents each step returns
        self.x0, self.noise = x0, noise or []  # flow inversion: each step's target from the scheduler's own sigmas
        self.residuals: list[torch.Tensor] = []

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class _Recorded:
    """A scheduler whose ``step`` the inverting and replaying kinds complete: ``_mean`` (the step without noise) and
    ``_target`` (the noised picture latents after step ``_index``) come from the scheduler family below."""

    _shared: _Shared
    _index: int = 0

    def _after_set_timesteps(self) -> None:
        self._index = 0

    def _output(self, prev: torch.Tensor, return_dict: bool):
        self._index += 1
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)


def _resetting(base: type) -> Any:
    """``base.set_timesteps`` followed by ``_after_set_timesteps``, with ``base``'s signature (the pipelines look in it
    for ``sigmas`` and ``timesteps``)."""

    def set_timesteps(self, *args: Any, **kwargs: Any) -> None:
        base.set_timesteps(self, *args, **kwargs)
        self._after_set_timesteps()

    set_timesteps.__signature__ = inspect.signature(base.set_timesteps)
    return set_timesteps


class _DDIM(_Recorded, DDIMScheduler):
    """DDPM means (a DDIM step with eta 1 and no noise drawn)."""

    set_timesteps = _resetting(DDIMScheduler)

    def _mean(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
        return DDIMScheduler.step(self, model_output, timestep, sample, eta=1.0, variance_noise=torch.zeros_like(sample)).prev_sample

    def _target(self, sample: torch.Tensor) -> torch.Tensor:
        return self._shared.targets[self._index]


class _Flow(_Recorded, FlowMatchEulerDiscreteScheduler):
    """The flow's Euler step; the target at the next sigma (0 after the last step: the picture)."""

    set_timesteps = _resetting(FlowMatchEulerDiscreteScheduler)

    def _mean(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor) -> torch.Tensor:
        return FlowMatchEulerDiscreteScheduler.step(self, model_output, timestep, sample, return_dict=False)[0]

    def _target(self, sample: torch.Tensor) -> torch.Tensor:
        sigma = float(self.sigmas[self._index + 1])
        noise = self._shared.noise[self._index] if self._index < len(self._shared.noise) else torch.zeros_like(self._shared.x0)
        return (1 - sigma) * self._shared.x0 + sigma * noise


class _Inverting:
    def step(self, model_output, timestep, sample, *args: Any, return_dict: bool = True, **kwargs: Any):
        target = self._target(sample).to(sample.device, sample.dtype)
        self._shared.residuals.append((target - self._mean(model_output, timestep, sample)).detach())
        return self._output(target.expand_as(sample), return_dict)


class _Replaying:
    def _after_set_timesteps(self) -> None:
        super()._after_set_timesteps()
        if len(self.timesteps) != len(self._shared.residuals):  # a call that overrides the recorded step count
            raise ValueError(f"this inversion was recorded over {len(self._shared.residuals)} steps; replay it with "
                             f"num_inference_steps={len(self._shared.residuals)} (ImageInversion.call_kwargs)")

    def step(self, model_output, timestep, sample, *args: Any, return_dict: bool = True, **kwargs: Any):
        residual = self._shared.residuals[self._index].to(sample.device, sample.dtype)
        return self._output(self._mean(model_output, timestep, sample) + residual, return_dict)


class _DDIMInverting(_Inverting, _DDIM):
    pass


class _DDIMReplaying(_Replaying, _DDIM):
    pass


class _FlowInverting(_Inverting, _Flow):
    pass


class _FlowReplaying(_Replaying, _Flow):
    pass


def _is_flow(pipe: Any) -> bool:
    return isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)


def _scheduler(pipe: Any, inverting: bool, shared: _Shared) -> Any:
    kind = {(False, True): _DDIMInverting, (False, False): _DDIMReplaying, (True, True): _FlowInverting, (True, False): _FlowReplaying}
    made = kind[_is_flow(pipe), inverting].from_config(pipe.scheduler.config)
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
        return with_scheduler(pipe, _scheduler(pipe, False, self._shared))

    def edit(self, pipe: Any, rows: int = 1, **kwargs: Any) -> Any:
        """``pipe``'s output for ``rows`` rows replayed from the inversion, with ``kwargs`` (``steering=``,
        ``steering_scale=``, ``output_type=``...): unsteered rows are the picture (its VAE reconstruction)."""
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ValueError(f"rows must be a positive integer, got {rows!r}")
        fixed = sorted(set(kwargs) & set(self.call_kwargs(1)))
        if fixed:
            raise TypeError(f"the inversion fixes {', '.join(fixed)} (the edit replays the run it recorded): invert "
                            "the picture again to change them")
        if "num_images_per_prompt" in kwargs:  # failed 20 frames deep in attention: one start latent per row
            raise TypeError("an inversion's edit makes one image per row: pass rows= instead of num_images_per_prompt")
        if "image" in inspect.signature(type(pipe).__call__).parameters:  # diffusers: "Input is in incorrect format"
            raise TypeError(f"an inversion replays on the text-to-image pipeline it was made with, not a "
                            f"{type(pipe).__name__}: its recorded noise replaces the image input")
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
    return with_scheduler(pipe, _scheduler(pipe, False, shared))(**call, **kwargs)


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
    in for (SD, SDXL) or flow-matching Euler's, deterministic (SD3, Flux)."""
    if not hasattr(pipe, "vae") or not hasattr(pipe, "image_processor"):
        raise ValueError(f"a {type(pipe).__name__} has no VAE image processor to invert an image with")
    if isinstance(pipe, PixArtAlphaPipeline | PixArtSigmaPipeline):  # its DPM-Solver lists DDIM, its prompt encoder takes no None
        raise ValueError(f"inverting is not supported for {type(pipe).__name__} (SD, SDXL, SD3 and Flux invert); "
                         "edit a PixArt image with a steered generation from its prompt instead")
    scheduler = pipe.scheduler
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        if getattr(scheduler.config, "stochastic_sampling", False):
            raise ValueError("inverting needs the flow's deterministic Euler step; this scheduler samples stochastically")
        return
    if not isinstance(scheduler, DDIMScheduler) and DDIMScheduler not in getattr(scheduler, "compatibles", []):
        raise ValueError(f"inverting needs a pipeline that can step a DDIM scheduler (SD, SDXL) or flow-matching Euler (SD3, Flux); "
                         f"a {type(pipe).__name__} samples with {type(scheduler).__name__}")


@outside_steering_blocks  # a `pipe.steering(...)` block must not steer the inversion (its replay at 0 then missed the picture)
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
        pipe: a steered text-to-image pipeline stepping a DDIM-compatible scheduler (SD, SDXL) or flow-matching Euler
            (SD3, Flux); it is not changed.
        image: a PIL image (or what the pipeline's image processor takes), resized to ``height`` x ``width``
            (default: its own size, rounded down to a multiple of 8; of 16 on Flux).
        prompt: what the picture shows, leaving open what the edits change ("a sneaker").
        negative_prompt, num_inference_steps, guidance_scale: as in the pipeline call; the edits replay them.
        generator: draws the independent noise of each timestep (the inversion is deterministic given it).
    """
    from steer.images import edit_size, pipeline_picture

    check_invertible(pipe)
    image = pipeline_picture(image, "RGB", "image")  # an RGBA or greyscale photo failed deep in the VAE
    for name, side in (("height", height), ("width", width)):  # unchecked, 10**6 got the process killed for memory
        check_int(side, name, 8, MAX_SIZE)
    if not isinstance(prompt, str):
        raise TypeError(f"invert_image takes one prompt (what the picture shows), got {type(prompt).__name__}")
    check_int(num_inference_steps, "num_inference_steps", 1, MAX_STEPS, optional=False)
    if height is None or width is None:
        if not isinstance(image, PIL.Image.Image):  # arrays and tensors have a .size too, but not (width, height)
            raise ValueError(f"give height and width for an image that is not a PIL image (got {type(image).__name__})")
        height, width = edit_size(image.size, height, width)
    device = pipe._execution_device
    packed = hasattr(pipe, "_pack_latents")  # Flux: 2 x 2 latent patches as tokens, so a multiple of 16 pixels
    if packed:
        multiple = 2 * getattr(pipe, "vae_scale_factor", 8)
        height, width = height - height % multiple, width - width % multiple
        if not height or not width:
            raise ValueError(f"{type(pipe).__name__} edits images of at least {multiple} x {multiple} pixels")
    # SD3's and Flux's latents are shifted, then scaled; SDXL's fp16 VAE encodes with a float32 copy (steer.vae_codec)
    latents = encode_pixels(pipe, pipe.image_processor.preprocess(image, height=height, width=width)).to(device)
    noise = [torch.randn(latents.shape, generator=generator, device=generator.device if generator else "cpu").to(device, latents.dtype)
             for _ in range(num_inference_steps)]
    if packed:  # the pipeline's own latent layout
        latents, *noise = (pipe._pack_latents(x, 1, *x.shape[1:]) for x in (latents, *noise))
    if _is_flow(pipe):  # the run starts at sigma 1 (pure noise); each step's target comes from the scheduler's sigmas
        shared, start = _Shared(x0=latents, noise=noise[1:]), noise[0]
    else:
        probe = _scheduler(pipe, True, _Shared())
        probe.set_timesteps(num_inference_steps, device=device)
        alphas = probe.alphas_cumprod.to(device)
        noised = [alphas[t].sqrt() * latents + (1 - alphas[t]).sqrt() * n for t, n in zip(probe.timesteps, noise, strict=True)]
        shared, start = _Shared(targets=[*noised[1:], latents]), noised[0]  # each step returns the next, then the picture
    inverting = with_scheduler(pipe, _scheduler(pipe, True, shared))
    inverting(prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
              height=height, width=width, latents=start.clone(), output_type="latent")
    if len(shared.residuals) != num_inference_steps:
        raise RuntimeError(f"the inversion recorded {len(shared.residuals)} steps of {num_inference_steps}: the pipeline "
                           "does not step its scheduler once per timestep")
    shared.targets, shared.x0, shared.noise = [], None, []  # not needed to replay
    return ImageInversion(prompt, negative_prompt, num_inference_steps, float(guidance_scale), height, width, start, shared)
