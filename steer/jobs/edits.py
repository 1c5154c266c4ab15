"""A batch job that edits a given image, as ``steer generate --image [--mask] [--strength] [--invert]``: ``image`` (and
``mask``, inpainting: white is repainted) name files next to the jobs file (or absolute paths), ``strength`` how much
of the run the edit performs (default: the pipeline's own, SD image-to-image 0.8); ``invert: true`` edits from the
image's inversion instead (`steer.inversion`; each row inverts its own picture with its seed).

While planning, each file is read once (bounded, `steer.images.open_image`) for its size and sha256; the images are
decoded again only when their batch runs, so a run of many edits never holds more than a batch of pictures. A file
that changed since it was planned fails its image in one line instead of being edited under a recipe that names
other bytes. The recipe records the ``edit`` block `steer generate` writes (each file's path and sha256, the
strength), so `steer reproduce` makes a batch's edit again; the resume key leaves the paths out (a moved input with
the same bytes is the same image).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steer.jobs.checks import check_bool, check_float
from steer.jobs.read import JobError, show
from steer.validation import clip

MAX_PATH_CHARS = 4096
EDIT_FIELDS = ("image", "mask", "strength", "invert")


@dataclass(frozen=True)
class JobEdit:
    """The image a job edits: its file and sha256, the mask's (None: image-to-image), the strength, the image's size
    (width, height, upright) and the task (``"img2img"`` or ``"inpaint"``)."""

    image: Path
    image_sha256: str
    mask: Path | None
    mask_sha256: str | None
    strength: float
    size: tuple[int, int]
    invert: bool = False  # edited from its inversion (`steer.inversion`), not re-drawn

    @property
    def task(self) -> str:
        return "invert" if self.invert else "inpaint" if self.mask is not None else "img2img"

    def record(self) -> dict[str, Any]:
        """The recipe's ``edit`` block (the shape `steer generate --image` writes)."""
        files = {"image": (self.image, self.image_sha256), **({"mask": (self.mask, self.mask_sha256)} if self.mask else {})}
        return {**{k: {"path": str(p), "sha256": h} for k, (p, h) in files.items()}, "strength": self.strength,
                **({"invert": True} if self.invert else {})}

    def inputs(self, height: int, width: int) -> dict[str, Any]:
        """The pipeline's ``image`` (and ``mask_image``) at ``width`` x ``height``, read again and checked against the
        sha256 recorded while planning (one-line `ValueError` when a file changed since)."""
        from steer.images import EditInputs, file_sha256

        for path, digest in ((self.image, self.image_sha256), (self.mask, self.mask_sha256)):
            if path is not None and (not path.is_file() or file_sha256(path) != digest):
                raise ValueError(f"{path.name} changed or went away since the run was planned; rerun to plan it again")
        return EditInputs.read(self.image, self.mask).prepared(height, width)


_EDITING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipeline -> {task: its editing pipeline}


def editing_pipeline_of(pipe: Any, task: str) -> Any:
    """``pipe``'s steered ``task`` pipeline (`steer.pipelines.factory.editing_pipeline`), made once per pipeline and
    task (it shares ``pipe``'s modules; the batches of a run reuse it)."""
    from steer.pipelines.factory import editing_pipeline

    made = _EDITING.setdefault(pipe, {})
    if task not in made:
        made[task] = editing_pipeline(pipe, task)
    return made[task]


class EditChecker:
    """Checks the edit fields of jobs against one pipeline: each file read once per run, each editing pipeline made
    once (`editing_pipeline_of`)."""

    def __init__(self, pipe: Any, base_dir: Path | None):
        self.pipe = pipe
        self.base_dir = base_dir
        self._files: dict[tuple[Path, str], tuple[tuple[int, int], str] | ValueError] = {}
        self._pipes: dict[str, Any] = {}

    def check(self, line: int, job: dict[str, Any], steps: int) -> JobEdit | None:
        """The job's `JobEdit`, or None when it edits no image; `JobError` for a bad field, an unreadable file, a mask
        of another size, a model with no such editing pipeline, or a strength that runs no step of ``steps``."""
        from steer.images import edit_steps

        if job.get("image") is None:
            given = [k for k in ("mask", "strength", "invert") if job.get(k) not in (None, False)]
            if given:
                raise JobError(line, f"{' and '.join(given)} {'go' if len(given) > 1 else 'goes'} with an image to edit: give image too")
            return None
        if job.get("take_away_fit"):
            raise JobError(line, "take_away_fit fits text-to-image generation; an edit takes the take-away at its direction's scale")
        invert = check_bool(line, "invert", job.get("invert", False))
        if invert:
            given = [k for k in ("mask", "strength", "sampler") if job.get(k) is not None]
            if given:
                raise JobError(line, f"invert replays the image's inversion over the whole run: it takes no {' or '.join(given)}")
            from steer.inversion import check_invertible

            try:
                check_invertible(self.pipe)
            except ValueError as err:
                raise JobError(line, str(err)) from None
        image = self._path(line, "image", job["image"])
        mask = self._path(line, "mask", job["mask"]) if job.get("mask") is not None else None
        size, image_sha = self._read(line, image, "RGB")
        mask_sha = None
        if mask is not None:
            mask_size, mask_sha = self._read(line, mask, "L")
            if mask_size != size:
                raise JobError(line, f"the mask is {mask_size[0]}x{mask_size[1]} and the image {size[0]}x{size[1]}: they must be the same size")
        if invert:
            return JobEdit(image, image_sha, None, None, 1.0, size, invert=True)
        edit_pipe = self.pipeline(line, "inpaint" if mask is not None else "img2img")
        if job.get("strength") is None:
            from steer.pipelines.factory import default_strength

            strength = default_strength(edit_pipe)
        else:
            strength = check_float(line, "strength", job["strength"], 0.0, 1.0)
            if strength == 0:
                raise JobError(line, "strength must be in (0, 1], got 0")
        if edit_steps(strength, steps) < 1:
            raise JobError(line, f"strength {strength:g} of {steps} steps runs no denoising step: raise strength or num_inference_steps")
        return JobEdit(image, image_sha, mask, mask_sha, strength, size)

    def pipeline(self, line: int, task: str) -> Any:
        """The model's steered ``task`` pipeline (made once), or `JobError` naming why there is none."""
        if task not in self._pipes:
            try:
                self._pipes[task] = editing_pipeline_of(self.pipe, task)
            except ValueError as err:  # UnsupportedPipelineError
                self._pipes[task] = err
        made = self._pipes[task]
        if isinstance(made, Exception):
            raise JobError(line, str(made))
        return made

    def _path(self, line: int, what: str, value: Any) -> Path:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_PATH_CHARS or "\0" in value:
            raise JobError(line, f"{what} must be a file path (a string of at most {MAX_PATH_CHARS} characters), got {show(value)}")
        given = Path(value).expanduser()
        beside = self.base_dir / given if not given.is_absolute() and self.base_dir is not None else None
        if beside is not None and beside.is_file():
            given = beside
        elif beside is not None and not os.path.lexists(given):  # say both places looked (the jobs file's folder first)
            raise JobError(line, f"the {what} {show(value)} is not a file (looked for {clip(str(beside))} and {clip(str(given))})")
        return given.resolve() if given.is_file() else given

    def _read(self, line: int, path: Path, mode: str) -> tuple[tuple[int, int], str]:
        """The upright size and sha256 of the image at ``path`` (read once per run and mode)."""
        from steer.images import file_sha256, open_image, open_mask

        key = (path, mode)
        if key not in self._files:
            what = "the image" if mode == "RGB" else "the mask"
            try:
                picture = open_image(path, what, mode=mode) if mode == "RGB" else open_mask(path)  # one that repaints nothing: refused
                self._files[key] = (picture.size, file_sha256(path))
            except ValueError as err:
                self._files[key] = err
            except OSError as err:  # unreadable (permissions): one line all the same
                self._files[key] = ValueError(f"{what} {os.fspath(path)} cannot be read ({err.strerror or type(err).__name__})")
        found = self._files[key]
        if isinstance(found, ValueError):
            raise JobError(line, str(found))
        return found
