"""Images that carry their own recipe: a JSON text chunk in the PNG, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from steer.files import atomic_write

RECIPE_KEY = "steer:recipe"


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Stable short hash of a recipe (sorted JSON)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def png_bytes_hash(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_png(image: Image.Image, path: str | os.PathLike, recipe: dict[str, Any]) -> Path:
    """Write ``image`` to ``path`` with ``recipe`` as a PNG text chunk (`steer.files.atomic_write`: never half
    written, never through a symlink)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True, default=str))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """The recipe stored in a PNG written by `save_png`."""
    with Image.open(path) as im:
        text = im.text.get(RECIPE_KEY) if hasattr(im, "text") else None
    if text is None:
        raise ValueError(f"{path} carries no steer recipe")
    return json.loads(text)
