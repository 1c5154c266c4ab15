"""Input images, read safely, and the inputs of an image edit (image-to-image, inpainting) prepared the same way
wherever an edit is made or made again (`steer generate --image`, `steer reproduce`).

`open_image` bounds what a user file can cost before decoding it (bytes on disk, decoded pixels, PIL's decompression
bomb check) and names the file in a one-line `ValueError`. `EditInputs.read` opens an edit's image and optional mask
and checks they fit together; `EditInputs.prepared` resizes both to the size the edit runs at (`edit_size`: the
image's own, rounded down to a multiple of 8, or what the user asked for), so an edit and its reproduction feed the
pipeline the same pixels.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from steer.validation import MAX_SIZE, short

MAX_IMAGE_BYTES = 64 * 2**20  # an input image file (a 48 MP PNG is ~40 MiB)
MAX_IMAGE_PIXELS = 50_000_000  # decoded
SIZE_MULTIPLE = 8  # the latent grid of every SD-family VAE


def open_image(
    path: str | os.PathLike,
    what: str = "image",
    *,
    label: str | None = None,
    mode: str = "RGB",
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_side: int | None = None,
) -> Image.Image:
    """The image at ``path`` decoded in ``mode``; one-line `ValueError` naming it when it is missing, too large on
    disk or decoded, or not an image; turned upright by its EXIF orientation. ``max_side``: shrink larger images on
    load (JPEG decodes at a reduced scale).

    Args:
        path: the file.
        what: how the message names it ("the mask", "positive image"), before the path; label: the whole name
            instead (the app names an upload by its file name).
        mode: PIL mode of the result ("RGB", "L").
        max_bytes, max_pixels: limits on the file and on the decoded image.
        max_side: None keeps the size; else the longer side is at most this.
    """
    path = Path(path).expanduser()
    label = label or f"{what} {short(str(path), 120)}"
    if not path.is_file():
        raise ValueError(f"{label} is not a file")
    if path.stat().st_size > max_bytes:
        raise ValueError(f"{label} is over {max_bytes // 2**20} MiB")
    try:
        with warnings.catch_warnings():  # PIL's own two-line DecompressionBombWarning: the pixel check below is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            if im.width * im.height > max_pixels:
                raise ValueError(f"{label} is {im.width}x{im.height} pixels; at most {max_pixels / 1e6:.0f} megapixels are allowed")
            full = im.size if im.getexif().get(_ORIENTATION, 1) < 5 else im.size[::-1]  # as shown, before any draft
            if max_side is not None:
                im.draft(mode, (max_side, max_side))
            im.load()
            out = _eight_bit(ImageOps.exif_transpose(im) or im).convert(mode)  # a phone photo the way it is shown
    except ValueError as err:
        if str(err).startswith(label):
            raise
        raise ValueError(f"{label} is not a readable image") from None
    except Image.DecompressionBombError:  # over twice PIL's own limit: refused at open, before our size check
        raise ValueError(f"{label} has more pixels than PIL opens; at most {max_pixels / 1e6:.0f} megapixels are allowed") from None
    except (OSError, SyntaxError):
        raise ValueError(f"{label} is not a readable image") from None
    if max_side is not None and max(full) > max_side:  # the size from the full image's: a JPEG decoded at half
        scale = max_side / max(full)                      # scale would round otherwise than its same-size PNG mask
        target = (max(1, round(full[0] * scale)), max(1, round(full[1] * scale)))
        if out.size != target:
            out = out.resize(target, Image.Resampling.LANCZOS)
    return out


_ORIENTATION = 0x0112  # the EXIF tag: 5-8 turn the picture a quarter


def _eight_bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale (and float) images scaled to 8 bits: Pillow's own conversion clips them, so a
    mid-grey 16-bit PNG became pure white and a 0-1 float TIFF black."""
    if im.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return im
    import numpy as np

    values = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        values = values * (255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0)
    else:
        values = values / 257.0  # 0-65535 onto 0-255
    return Image.fromarray(np.nan_to_num(values).clip(0, 255).round().astype(np.uint8), "L")


def pipeline_picture(image: Any, mode: str, what: str) -> Any:
    """A PIL picture given to a pipeline call (``image=``, ``mask_image=``) in ``mode`` ("RGB", masks "L") as
    `open_image` decodes files: diffusers took a 4-channel RGBA or CMYK picture for ready-made latents (a 128 x 128 noise
    texture from a 32 x 32 photo, no error) and failed 17 frames deep in torch on greyscale. Lists element-wise;
    anything else (tensors, arrays, latents) as it is. One-line `ValueError` for a picture under 8 pixels a side."""
    if isinstance(image, list | tuple):
        return type(image)(pipeline_picture(i, mode, what) for i in image)
    if not isinstance(image, Image.Image):
        return image
    if min(image.size) < SIZE_MULTIPLE:
        raise ValueError(f"{what} is {image.width}x{image.height} pixels: at least {SIZE_MULTIPLE} a side")
    return image if image.mode == mode else _eight_bit(image).convert(mode)


def pixel_digest(image: Image.Image | None) -> str | None:
    """sha256 of a decoded picture (mode, size and pixels): the same picture in another file (the app's PNG copy of a
    JPEG upload, a renamed or re-saved input) has the same digest."""
    if image is None:
        return None
    return hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()


def open_mask(path: str | os.PathLike, label: str | None = None, **limits: Any) -> Image.Image:
    """The mask at ``path`` as greyscale (white = repaint), read as `open_image` reads (``label``, ``limits``: its
    ``max_bytes``, ``max_pixels``, ``max_side``); one-line `ValueError` for one that repaints nothing (no pixel at 128
    or above: diffusers binarises there, so the steering changed nothing, silently) or marks its area with
    transparency (its alpha was dropped, reading as all black)."""
    drawn = open_image(path, "the mask", label=label, mode="LA", **limits)
    label = label or f"the mask {short(str(Path(path).expanduser()), 120)}"
    if drawn.getchannel("A").getextrema()[0] < 255:
        raise ValueError(f"{label} has transparent pixels: masks are read as white = repaint, black = keep (no "
                         "transparency); paint the area to repaint white")
    grey = drawn.getchannel("L")
    if grey.getextrema()[1] < 128:
        raise ValueError(f"{label} repaints nothing: it has no white (>= 128) pixel, and white marks where to repaint")
    return grey


def edit_steps(strength: float, steps: int) -> int:
    """The denoising steps an edit at ``strength`` of ``steps`` runs, as diffusers counts them (``int(steps *
    strength)``); 0 means it runs none."""
    return min(int(steps * strength), int(steps))


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


EDIT_SIDE_FACTOR = 2  # an edit sized from its image runs at most this many times the model's native side


def capped_edit_size(image_size: tuple[int, int], native: int) -> tuple[int, int] | None:
    """The size an edit of an image of ``image_size`` runs at when no size is given and the image is larger than
    `EDIT_SIDE_FACTOR` times the model's ``native`` side: its aspect ratio, the longer side that many times native (a
    phone photo edited at its own 2048 x 1536 on a 32-pixel model had not run one step in 5 minutes; the model draws no
    detail beyond its own scale). None where the image's own size is within it."""
    cap = EDIT_SIDE_FACTOR * native
    w0, h0 = image_size
    if max(w0, h0) <= cap:
        return None
    return edit_size(image_size, *((cap, None) if h0 >= w0 else (None, cap)))


def edit_size(image_size: tuple[int, int], height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """``(height, width)`` an edit of an image of ``image_size`` (width, height) runs at: both given, as given; one
    given, the other from the image's aspect ratio (to the nearest multiple of `SIZE_MULTIPLE`); none, the image's
    own size; given and own sides rounded down to a multiple of `SIZE_MULTIPLE` (at least one). One-line `ValueError` beyond `steer.validation.MAX_SIZE`."""
    w0, h0 = image_size

    def down(n: float) -> int:
        return max(SIZE_MULTIPLE, int(n) // SIZE_MULTIPLE * SIZE_MULTIPLE)

    def nearest(n: float) -> int:  # a side derived from the aspect ratio: the closest multiple keeps it best
        return max(SIZE_MULTIPLE, round(n / SIZE_MULTIPLE) * SIZE_MULTIPLE)

    if height is None and width is None:
        height, width = down(h0), down(w0)
    elif height is None:
        height, width = nearest(width * h0 / w0), down(width)
    elif width is None:
        height, width = down(height), nearest(height * w0 / h0)
    else:
        height, width = down(height), down(width)
    if max(height, width) > MAX_SIZE:
        raise ValueError(f"the image is {w0}x{h0}: an edit at {width}x{height} is over {MAX_SIZE} pixels a side; "
                         "give --height / --width")
    return height, width


@dataclass(frozen=True)
class EditInputs:
    """What an edit starts from: the image, the mask (inpainting; white is repainted) and the strength (None: the
    pipeline's default), with the files they came from."""

    image: Image.Image
    image_path: Path
    mask: Image.Image | None = None
    mask_path: Path | None = None
    strength: float | None = None

    @classmethod
    def read(cls, image: str | os.PathLike, mask: str | os.PathLike | None = None, strength: float | None = None) -> EditInputs:
        """Open ``image`` (RGB) and ``mask`` (greyscale); one-line `ValueError` for an unreadable one, or a mask whose
        size is not the image's."""
        picture = open_image(image, "the image")
        drawn = open_mask(mask) if mask is not None else None
        if drawn is not None and drawn.size != picture.size:
            raise ValueError(f"the mask is {drawn.width}x{drawn.height} and the image {picture.width}x{picture.height}: "
                             "they must be the same size")
        if strength is not None and not 0 < strength <= 1:
            raise ValueError(f"the strength must be in (0, 1], got {short(strength)}")
        return cls(picture, Path(image).expanduser(), drawn, Path(mask).expanduser() if mask is not None else None, strength)

    @property
    def task(self) -> str:
        """``"inpaint"`` with a mask, else ``"img2img"``."""
        return "inpaint" if self.mask is not None else "img2img"

    def prepared(self, height: int, width: int) -> dict[str, Any]:
        """The pipeline arguments: ``image`` (and ``mask_image``) resized to ``width`` x ``height`` (Lanczos for the
        image, nearest for the mask, whose edge stays sharp), and ``strength`` when one was given."""
        size = (width, height)
        kwargs: dict[str, Any] = {"image": self.image if self.image.size == size else self.image.resize(size, Image.LANCZOS)}
        if self.mask is not None:
            kwargs["mask_image"] = self.mask if self.mask.size == size else self.mask.resize(size, Image.NEAREST)
        if self.strength is not None:
            kwargs["strength"] = self.strength
        return kwargs

    def record(self, strength: float) -> dict[str, Any]:
        """The recipe's ``edit`` block: each file's absolute path, sha256 and `pixel_digest` (of the picture as the
        edit used it: a re-encoded copy of the same picture is found by it), and the strength the edit ran at."""
        files = {"image": (self.image_path, self.image), **({"mask": (self.mask_path, self.mask)} if self.mask_path is not None else {})}
        return {
            **{k: {"path": str(p.resolve()), "sha256": file_sha256(p), "pixels": pixel_digest(im)} for k, (p, im) in files.items()},
            "strength": strength,
        }
