"""What ships in ``assets/``: the embedded demo model and the bundled directions (paths only; nothing is loaded)."""

from __future__ import annotations

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "models" / "demo"
DIRECTIONS_DIR = ASSETS / "directions"


def default_model() -> str:
    """``$STEER_MODEL`` if set, else the embedded demo model."""
    return os.environ.get("STEER_MODEL", str(DEFAULT_MODEL))


def bundled_directions() -> dict[str, Path]:
    """Name -> path of the directions shipped under ``assets/directions``."""
    if not DIRECTIONS_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(DIRECTIONS_DIR.glob("*.safetensors"))}
