"""steer: training-free representation steering and memorization detection for Stable Diffusion (diffusers).

The names below load on first use (PEP 562), so ``import steer.cli.main`` or ``steer.validation`` does not import diffusers
and transformers before the command line has configured them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActivationRecorder": "steer.engine",
    "DetectorFileError": "steer.errors",
    "ImageInversion": "steer.inversion",
    "MemorizationDetector": "steer.detect.detector",
    "ModelMismatchError": "steer.errors",
    "NonFiniteOutputError": "steer.validation",
    "SteeringConfig": "steer.config",
    "SteeringFileError": "steer.errors",
    "SteeringFluxPipeline": "steer.pipelines.flux",
    "SteeringPixArtSigmaPipeline": "steer.pipelines.pixart",
    "SteeringSession": "steer.engine",
    "SteeringStableDiffusion3Pipeline": "steer.pipelines.stable_diffusion_3",
    "SteeringStableDiffusion3Img2ImgPipeline": "steer.pipelines.img2img",
    "SteeringStableDiffusion3InpaintPipeline": "steer.pipelines.inpaint",
    "SteeringStableDiffusionPipeline": "steer.pipelines.stable_diffusion",
    "SteeringStableDiffusionImg2ImgPipeline": "steer.pipelines.img2img",
    "SteeringStableDiffusionInpaintPipeline": "steer.pipelines.inpaint",
    "SteeringStableDiffusionControlNetPipeline": "steer.pipelines.controlnet",
    "SteeringStableDiffusionXLPipeline": "steer.pipelines.stable_diffusion_xl",
    "SteeringStableDiffusionXLImg2ImgPipeline": "steer.pipelines.img2img",
    "SteeringStableDiffusionXLInpaintPipeline": "steer.pipelines.inpaint",
    "SteeringStableDiffusionXLControlNetPipeline": "steer.pipelines.controlnet",
    "UnsupportedPipelineError": "steer.errors",
    "steering_pipeline": "steer.pipelines.factory",
    "SteeringVector": "steer.vectors",
    "default_layers": "steer.denoisers",
    "invert_image": "steer.inversion",
    "list_layers": "steer.denoisers",
    "resolve_layers": "steer.denoisers",
}

__all__ = [
    "ActivationRecorder",
    "DetectorFileError",
    "ImageInversion",
    "MemorizationDetector",
    "ModelMismatchError",
    "NonFiniteOutputError",
    "SteeringConfig",
    "SteeringFileError",
    "SteeringFluxPipeline",
    "SteeringPixArtSigmaPipeline",
    "SteeringSession",
    "SteeringStableDiffusion3Pipeline",
    "SteeringStableDiffusion3Img2ImgPipeline",
    "SteeringStableDiffusion3InpaintPipeline",
    "SteeringStableDiffusionPipeline",
    "SteeringStableDiffusionImg2ImgPipeline",
    "SteeringStableDiffusionInpaintPipeline",
    "SteeringStableDiffusionControlNetPipeline",
    "SteeringStableDiffusionXLPipeline",
    "SteeringStableDiffusionXLImg2ImgPipeline",
    "SteeringStableDiffusionXLInpaintPipeline",
    "SteeringStableDiffusionXLControlNetPipeline",
    "UnsupportedPipelineError",
    "steering_pipeline",
    "SteeringVector",
    "default_layers",
    "invert_image",
    "list_layers",
    "resolve_layers",
]

if TYPE_CHECKING:
    from steer.config import SteeringConfig
    from steer.denoisers import default_layers, list_layers, resolve_layers
    from steer.detect.detector import MemorizationDetector
    from steer.engine import ActivationRecorder, SteeringSession
    from steer.errors import DetectorFileError, UnsupportedPipelineError
    from steer.inversion import ImageInversion, invert_image
    from steer.pipelines.controlnet import (
        SteeringStableDiffusionControlNetPipeline,
        SteeringStableDiffusionXLControlNetPipeline,
    )
    from steer.pipelines.factory import steering_pipeline
    from steer.pipelines.img2img import (
        SteeringStableDiffusion3Img2ImgPipeline,
        SteeringStableDiffusionImg2ImgPipeline,
        SteeringStableDiffusionXLImg2ImgPipeline,
    )
    from steer.pipelines.inpaint import (
        SteeringStableDiffusion3InpaintPipeline,
        SteeringStableDiffusionInpaintPipeline,
        SteeringStableDiffusionXLInpaintPipeline,
    )
    from steer.pipelines.stable_diffusion import SteeringStableDiffusionPipeline
    from steer.pipelines.stable_diffusion_3 import SteeringStableDiffusion3Pipeline
    from steer.pipelines.stable_diffusion_xl import SteeringStableDiffusionXLPipeline
    from steer.validation import NonFiniteOutputError
    from steer.vectors import ModelMismatchError, SteeringFileError, SteeringVector


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'steer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
