"""`steering_pipeline(pipe)`: the steered version of any supported diffusers pipeline instance, sharing its
components (diffusers' ``from_pipe``: no weights are copied or reloaded).

`STEERED_PIPELINES` maps a diffusers pipeline class name to the ``"module:Class"`` of its steered version; modules
are imported on first use, so supporting another pipeline is one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from steer.errors import UnsupportedPipelineError

STEERED_PIPELINES: dict[str, str] = {
    "StableDiffusionPipeline": "steer.pipelines.stable_diffusion:SteeringStableDiffusionPipeline",
    "PixArtSigmaPipeline": "steer.pipelines.pixart:SteeringPixArtSigmaPipeline",
    "StableDiffusionImg2ImgPipeline": "steer.pipelines.img2img:SteeringStableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline": "steer.pipelines.stable_diffusion_xl:SteeringStableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline": "steer.pipelines.img2img:SteeringStableDiffusionXLImg2ImgPipeline",
    "StableDiffusionInpaintPipeline": "steer.pipelines.inpaint:SteeringStableDiffusionInpaintPipeline",
    "StableDiffusionXLInpaintPipeline": "steer.pipelines.inpaint:SteeringStableDiffusionXLInpaintPipeline",
    "StableDiffusionControlNetPipeline": "steer.pipelines.controlnet:SteeringStableDiffusionControlNetPipeline",
    "StableDiffusionXLControlNetPipeline": "steer.pipelines.controlnet:SteeringStableDiffusionXLControlNetPipeline",
    "StableDiffusion3Pipeline": "steer.pipelines.stable_diffusion_3:SteeringStableDiffusion3Pipeline",
    "StableDiffusion3Img2ImgPipeline": "steer.pipelines.img2img:SteeringStableDiffusion3Img2ImgPipeline",
    "StableDiffusion3InpaintPipeline": "steer.pipelines.inpaint:SteeringStableDiffusion3InpaintPipeline",
    "FluxPipeline": "steer.pipelines.flux:SteeringFluxPipeline",
}


def _diffusers_name(pipe_or_class: Any) -> str:
    if isinstance(pipe_or_class, str):  # a class name, e.g. a model_index.json's ``_class_name``
        return pipe_or_class
    cls = pipe_or_class if isinstance(pipe_or_class, type) else type(pipe_or_class)
    parent = cls.__dict__.get("_steering_parent") or getattr(cls, "_steering_parent", None)
    return (parent or cls).__name__


def steering_class(pipe_or_class: Any) -> type:
    """The steered class for a diffusers pipeline (instance, class or class name, matched exactly; an already
    steered pipeline maps to its own steered class). Raises `UnsupportedPipelineError` in one line otherwise."""
    name = _diffusers_name(pipe_or_class)
    target = STEERED_PIPELINES.get(name)
    if target is None:  # a steered class's own name (a saved steered pipeline's model_index.json names it)
        target = next((v for v in STEERED_PIPELINES.values() if v.endswith(f":{name}")), None)
    if target is None:
        raise UnsupportedPipelineError(
            f"steer cannot steer a {name}; supported pipelines: {', '.join(sorted(STEERED_PIPELINES))}"
        )
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def steering_pipeline(pipe: Any, **kwargs: Any) -> Any:
    """The steered version of ``pipe``, sharing its components (``SteeringX.from_pipe(pipe, **kwargs)``).

    Args:
        pipe: a diffusers pipeline instance whose class is in `STEERED_PIPELINES` (e.g. a `StableDiffusionXLPipeline`
            from ``from_pretrained`` or ``AutoPipelineForText2Image``), or an already steered one.
        kwargs: passed to ``from_pipe`` (components to replace, config options, ``dtype``). With no dtype the
            shared components keep theirs (`steer.dtypes.AutoDtypeMixin.from_pipe`).

    Returns:
        A new steered pipeline; ``pipe`` keeps working as before.
    """
    from diffusers import DiffusionPipeline

    if not isinstance(pipe, DiffusionPipeline):
        raise UnsupportedPipelineError(f"steering_pipeline expects a diffusers pipeline instance, got {type(pipe).__name__}")
    return steering_class(pipe).from_pipe(pipe, **kwargs)


EDIT_TASKS = ("img2img", "inpaint")


def editing_pipeline(pipe: Any, task: str) -> Any:
    """The steered image-to-image (``task="img2img"``) or inpainting (``"inpaint"``) pipeline of ``pipe``'s model,
    sharing its components (diffusers' AutoPipeline tables say which class that is: a `StableDiffusionPipeline`'s
    inpainting pipeline is `StableDiffusionInpaintPipeline`). ``pipe`` itself when it already is one.

    Args:
        pipe: a steered or diffusers pipeline of any task (text-to-image, image-to-image, inpainting).
        task: ``"img2img"`` or ``"inpaint"``.

    Raises:
        UnsupportedPipelineError: in one line, when diffusers has no such pipeline for the model, or steer does not
            steer it.
    """
    if task not in EDIT_TASKS:
        raise ValueError(f"task must be one of {EDIT_TASKS}, got {task!r}")
    return _task_pipeline(pipe, task)


def default_strength(pipe: Any) -> float:
    """The ``strength`` an editing pipeline's call uses when given none (SD image-to-image 0.8, inpainting 1.0; SDXL
    image-to-image 0.3)."""
    import inspect

    return float(inspect.signature(pipe.__call__).parameters["strength"].default)


def text_pipeline(pipe: Any) -> Any:
    """The steered text-to-image pipeline of ``pipe``'s model (an image-to-image or inpainting one's), sharing its
    components; ``pipe`` itself when it is one. `UnsupportedPipelineError` in one line otherwise."""
    return _task_pipeline(pipe, "text2img")


def _task_pipeline(pipe: Any, task: str) -> Any:
    from diffusers.pipelines.auto_pipeline import (
        AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        AUTO_INPAINT_PIPELINES_MAPPING,
        AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    )

    tables = {"text2img": AUTO_TEXT2IMAGE_PIPELINES_MAPPING, "img2img": AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
              "inpaint": AUTO_INPAINT_PIPELINES_MAPPING}
    name = _diffusers_name(pipe)
    family = next((key for table in tables.values() for key, cls in table.items() if cls.__name__ == name), None)
    if family is None or family not in tables[task]:
        raise UnsupportedPipelineError(f"diffusers has no {task} pipeline for a {name}")
    target = steering_class(tables[task][family].__name__)
    if type(pipe) is target:
        return pipe
    made = target.from_pipe(pipe)
    if hasattr(pipe, "_progress_bar_config"):  # a pipeline loaded quiet stays quiet
        made.set_progress_bar_config(**pipe._progress_bar_config)
    for carried in ("_static_sites", "_steer_loras"):  # a denoiser compiled with `compile_unet` keeps its steering
        if carried in pipe.__dict__:  # sites; the LoRA files loaded into the shared modules stay listed (steer.lora)
            made.__dict__[carried] = pipe.__dict__[carried]
    if callable(getattr(pipe, "steering_key", None)):  # `pipe.steering(...)` blocks apply to it, as to `with_sampler`'s
        made.__dict__["_steering_key"] = pipe.steering_key()
    return made
