"""Uploaded images in the app: read within its limits (`steer.images.open_image`), and an edit's input (and mask) kept
beside the outputs so a recipe can find them after the upload is gone."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from steer.app.base import LIMITS, UserError, shown
from steer.images import EditInputs, open_image, open_mask, pixel_digest
from steer.recipe import save_png


def load_images(files: Sequence[Any] | None, what: str) -> list[Image.Image]:
    """Open uploaded image files as RGB; raise `UserError` naming an unreadable or oversized one. Images larger
    than `Limits.max_image_side` are shrunk on load (they are resized to the model's size anyway)."""
    files = [f for f in (files or []) if f]
    if len(files) > LIMITS.max_learn_images:
        raise UserError(f"{len(files)} {what} images uploaded; at most {LIMITS.max_learn_images} are allowed")
    return [open_upload(Path(getattr(item, "name", None) or item), f"({what})") for item in files]


def open_upload(path: Path, what: str, mode: str = "RGB") -> Image.Image:
    """An uploaded image in ``mode`` within the app's limits (`steer.images.open_image`), or `UserError` naming it."""
    try:
        return open_image(path, label=f"{shown(path.name)} {what}", mode=mode, max_bytes=LIMITS.max_upload_bytes,
                          max_pixels=LIMITS.max_image_pixels, max_side=LIMITS.max_image_side)
    except ValueError as err:
        raise UserError(str(err)) from None


def open_edit_image(path: str | os.PathLike) -> Image.Image:
    """The Generate tab's image to edit (`open_upload`)."""
    return open_upload(Path(path), "(the image to edit)")


def open_edit_mask(path: str | os.PathLike, picture: Image.Image) -> Image.Image:
    """The Generate tab's inpainting mask (greyscale, white repainted) for ``picture`` (`open_edit_image`'s), or
    `UserError` when it is unreadable or of another size."""
    path = Path(path)
    try:  # refused: a mask that repaints nothing, or marks its area with transparency (`steer.images.open_mask`)
        mask = open_mask(path, label=f"{shown(path.name)} (the mask)", max_bytes=LIMITS.max_upload_bytes,
                         max_pixels=LIMITS.max_image_pixels, max_side=LIMITS.max_image_side)
    except ValueError as err:
        raise UserError(str(err)) from None
    if mask.size != picture.size:
        raise UserError(f"the mask is {mask.width}x{mask.height} and the image to edit {picture.width}x{picture.height}: "
                        "they must be the same size")
    return mask


def kept_edit_input(picture: Image.Image, folder: str | os.PathLike, mask: Image.Image | None = None) -> EditInputs:
    """The image to edit as the app used it (``picture``, decoded by `open_edit_image`, and its ``mask``), kept in
    ``folder`` as PNG under its content's name, so the PNG's recipe finds it when the upload is gone (`steer reproduce`)."""

    def keep(image: Image.Image, kind: str) -> Path:
        digest = pixel_digest(image)[:16]
        kept = Path(folder) / f"edit-{kind}-{digest}.png"
        if not kept.exists():
            save_png(image, kept, {})
        elif not kept.is_symlink():
            os.utime(kept)  # used again: kept as long as a new run's (the work folder's sweep goes by age)
        return kept

    return EditInputs(picture, keep(picture, "input"), mask, keep(mask, "mask") if mask is not None else None)
