"""steer: training-free representation steering and memorization detection for Stable Diffusion (diffusers)."""

from steer.detect import DetectorFileError, MemorizationDetector
from steer.hooks import ActivationRecorder, SteeringConfig, SteeringSession, default_layers, list_layers, resolve_layers
from steer.pipeline import SteeringStableDiffusionPipeline
from steer.validation import NonFiniteOutputError
from steer.vectors import ModelMismatchError, SteeringFileError, SteeringVector

__version__ = "0.1.0"

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
