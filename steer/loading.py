"""Loading pipelines: the embedded demo model by default, a local directory, or a hub id."""

from __future__ import annotations

import os
from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "models" / "demo"
DIRECTIONS_DIR = ASSETS / "directions"


def default_model() -> str:
    """``$STEER_MODEL`` if set, else the embedded demo model."""
    return os.environ.get("STEER_MODEL", str(DEFAULT_MODEL))


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_pipeline(model: str | os.PathLike | None = None, device: str | torch.device | None = None, dtype: torch.dtype | None = None, progress: bool = False):
    """Load a `SteeringStableDiffusionPipeline` from a local directory or a hub id (safety checker off).

    fp16 on CUDA, fp32 elsewhere unless ``dtype`` is given. Raises FileNotFoundError / OSError with a readable
    message when the model cannot be found (e.g. a hub id while offline).
    """
    from steer.pipeline import SteeringStableDiffusionPipeline

    model = str(model or default_model())
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    local = Path(model)
    if local.exists() and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"{model} is a path but not a diffusers pipeline directory (no model_index.json)")
    if not local.exists() and (model.startswith((".", "/", "~")) or model.count("/") != 1):
        raise FileNotFoundError(f"model {model!r} not found: give a pipeline directory or a hub id like 'org/name'")
    try:
        pipe = SteeringStableDiffusionPipeline.from_pretrained(
            model, dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1 is set: only cached or local models load)" if offline else ""
        raise OSError(f"cannot load model {model!r}{hint}: {err}") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=not progress)
    return pipe


def bundled_directions() -> dict[str, Path]:
    """Name -> path of the directions shipped under ``assets/directions``."""
    if not DIRECTIONS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(DIRECTIONS_DIR.glob("*.safetensors"))}
