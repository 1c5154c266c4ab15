"""What ships in ``assets/``: the embedded demo models and their bundled directions (paths only; nothing is loaded)."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "models" / "demo"
DIRECTIONS_DIR = ASSETS / "directions"  # the embedded demo model's directions
MODEL_DIRECTIONS = "directions"  # a model folder's own directions live in this subfolder


def default_model() -> str:
    """``$STEER_MODEL`` if set, else the embedded demo model."""
    return os.environ.get("STEER_MODEL", str(DEFAULT_MODEL))


def directions_dir(model: str | os.PathLike | None = None) -> Path:
    """Where the directions shipped for ``model`` live: the model folder's own ``directions/`` when it has one (the
    4x demo model's ``assets/models/demo-4x/directions``), else ``assets/directions`` (the embedded demo model's;
    other models' checks then say they were learned on another UNet)."""
    if model is not None:
        own = Path(model).expanduser() / MODEL_DIRECTIONS
        try:
            if own.is_dir():
                return own
        except OSError:  # a hub id or an unreadable path: no folder of its own
            pass
    return DIRECTIONS_DIR


def bundled_directions(model: str | os.PathLike | None = None) -> dict[str, Path]:
    """Name -> path of the directions shipped for ``model`` (default: the embedded demo model), see `directions_dir`."""
    folder = directions_dir(model)
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.safetensors"))}
