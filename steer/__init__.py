"""steer: training-free representation steering and memorization detection for Stable Diffusion (diffusers).

The names below load on first use (PEP 562), so ``import steer.cli`` or ``steer.validation`` does not import diffusers
and transformers before the command line has configured them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ActivationRecorder": "steer.hooks",
    "DetectorFileError": "steer.detect",
    "MemorizationDetector": "steer.detect",
    "ModelMismatchError": "steer.vectors",
    "NonFiniteOutputError": "steer.validation",
    "SteeringConfig": "steer.hooks",
    "SteeringFileError": "steer.vectors",
    "SteeringSession": "steer.hooks",
    "SteeringStableDiffusionPipeline": "steer.pipeline",
    "SteeringVector": "steer.vectors",
    "default_layers": "steer.hooks",
    "list_layers": "steer.hooks",
    "resolve_layers": "steer.hooks",
}

__all__ = [
    "ActivationRecorder",
    "DetectorFileError",
    "MemorizationDetector",
    "ModelMismatchError",
    "NonFiniteOutputError",
    "SteeringConfig",
    "SteeringFileError",
    "SteeringSession",
    "SteeringStableDiffusionPipeline",
    "SteeringVector",
    "default_layers",
    "list_layers",
    "resolve_layers",
]

if TYPE_CHECKING:
    from steer.detect import DetectorFileError, MemorizationDetector
    from steer.hooks import (
        ActivationRecorder,
        SteeringConfig,
        SteeringSession,
        default_layers,
        list_layers,
        resolve_layers,
    )
    from steer.pipeline import SteeringStableDiffusionPipeline
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
