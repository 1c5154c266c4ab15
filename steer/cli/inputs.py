"""Reading and checking command-line inputs before a command loads its model: prompt files, image folders, output
paths, direction names. Each problem is one line (`CLIError`, or the ValueError / OSError the ``steer`` entry point
prints as one line), found in a few file-system calls rather than after the model has loaded. And the library's
advice (warnings) as one line each.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from steer.validation import did_you_mean, safetensors_path, short

MAX_PROMPT_FILE_BYTES = 16 * 2**20  # a prompt file (one prompt a line), the size limit of a .jsonl jobs file
HUB_SPEC = "owner/name[@revision][:file]"


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file, one per non-blank line (stripped); one line naming the file when it is missing,
    a folder, too large, not UTF-8 or holds no prompt."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{path} is a folder, not a prompt file (one prompt a line)")
    if not p.is_file():
        raise CLIError(f"prompt file not found: {path}")
    with open(p, "rb") as f:
        data = f.read(MAX_PROMPT_FILE_BYTES + 1)
    if len(data) > MAX_PROMPT_FILE_BYTES:
        raise CLIError(f"{path} is larger than {MAX_PROMPT_FILE_BYTES // 2**20} MiB, the limit for a prompt file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CLIError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CLIError(f"{path} holds no prompts")
    return prompts


def list_images(directory: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``directory``, sorted; one line when it is missing or holds none."""
    from steer.extract import IMAGE_SUFFIXES

    d = Path(directory)
    if not d.is_dir():
        raise CLIError(f"image directory not found: {directory}")
    files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CLIError(f"directory {directory} holds no images")
    return files


def expand_items(values: Sequence[str] | None, flag: str = "--positive") -> list[str]:
    """``steer learn --positive / --negative``: a folder expands to the images inside it, a ``.txt`` file to its
    prompts (one per non-blank line); image files and prompts stay as they are. A blank value is refused (``''``
    used to read as the current folder)."""
    out: list[str] = []
    for v in values or []:
        if not v.strip():
            raise CLIError(f"{flag} got a blank value: give prompts, .txt files of prompts, image files or a folder of images")
        p = Path(v)
        if p.is_dir():
            out += [str(f) for f in list_images(v)]
        elif p.suffix.lower() == ".txt":  # a missing one is refused, as a missing image file is
            out += read_prompts(v)
        else:
            out.append(v)
    return out


def _not_a_folder(paths: Sequence[Path]) -> tuple[Path, str] | None:
    """The first of ``paths`` (a path and its parents, nearest first) that exists but is no folder, and what it is;
    None when the nearest existing one is a folder."""
    for part in paths:
        if part.is_dir():
            return None
        if part.exists() or part.is_symlink():
            return part, "a file" if part.exists() else "a broken symbolic link"
    return None


def check_out_dir(path: str | os.PathLike | None, flag: str = "--out") -> None:
    """An output folder (created later, parents included) must not be, or lie under, an existing file."""
    if path is None:
        return
    p = Path(path).expanduser()
    if (found := _not_a_folder([p, *p.parents])) is not None:
        part, what = found
        raise CLIError(f"{flag} {path} is {what}, not a folder" if part == p else f"{flag} {path}: {part} is {what}, not a folder")


def check_out_file(path: str | os.PathLike | None, flag: str = "--out", safetensors: bool = False) -> None:
    """An output file (its folder created later) must not be an existing folder, nor lie under an existing file;
    ``safetensors``: where the file lands, ``NAME.safetensors`` for a ``NAME`` (`steer.files.safetensors_path`), too."""
    if path is None:
        return
    if safetensors and safetensors_path(Path(path).expanduser()) != Path(path).expanduser():
        check_out_file(path, flag)
        path = safetensors_path(Path(path).expanduser())
    p = Path(path).expanduser()
    if p.is_dir():
        raise CLIError(f"{flag} {path} is a folder, not a file")
    if p.is_symlink():  # refused by the write anyway: say so before any work, not after it
        raise CLIError(f"refusing to write {path}: it is a symbolic link ({flag})")
    if (found := _not_a_folder(list(p.parents))) is not None:
        raise CLIError(f"{flag} {path}: {found[0]} is {found[1]}, not a folder")


def window_fractions(values: Sequence[float | str], flag: str) -> tuple[float, float]:
    """Two fractions of the run with ``0 <= start < end <= 1``, given as one ``start,end`` or as two values; a
    one-line ValueError naming ``flag`` otherwise. Every command's window option is read by it."""
    parts = [x for v in values for x in (v.split(",") if isinstance(v, str) else [v]) if not (isinstance(x, str) and not x.strip())]
    try:
        start, end = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} needs START,END: two fractions of the run, got {short(' '.join(map(str, values)))}") from None
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"{flag} needs finite fractions of the run, got {start:g},{end:g}")
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"{flag} needs 0 <= START < END <= 1, got {start:g},{end:g}")
    return start, end


def check_window(values: Sequence[float | str], flag: str) -> tuple[float, float]:
    """`window_fractions` for an option read with ``nargs`` (``START,END`` or ``START END``), as a `CLIError`."""
    try:
        return window_fractions(values, flag)
    except ValueError as err:
        raise CLIError(str(err)) from None


def unknown_direction(name: str, bundled: Mapping[str, object], hub: bool = True) -> CLIError:
    """The error for a direction that is no local path (nor a Hub spec): the closest bundled name (difflib, as for
    layer names and batch fields) and the list of the model's bundled directions."""
    spec = f", no Hub repo spec {HUB_SPEC}," if hub else ""
    shipped = ", ".join(sorted(bundled)) or "none"
    return CLIError(f"direction file not found: {short(name)}{did_you_mean(name, bundled)} (no local path{spec} and none of the directions "
                    f"shipped for this model: {shipped})")


def print_warnings(caught: list[warnings.WarningMessage], others: bool = False) -> None:
    """The advice the library gave (`UserWarning`s) as one ``warning:`` line each on stderr, duplicates dropped;
    ``others``: the rest (a library's deprecation notices) raised again as they would have been without the capture."""
    for w in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
        print(f"warning: {w}", file=sys.stderr)
    for w in caught if others else ():
        if not issubclass(w.category, UserWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def add_compile_argument(p) -> None:
    """``--compile [BACKEND]`` (generate, batch): `pipe.compile_unet` once, before the first image."""
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the denoiser once, with persistent steering sites (pipe.compile_unet): every later "
                        "image, whatever its directions, scales, windows, routes or take-away, runs on the same graphs "
                        "(a new batch size compiles again). Pays off over many images on a GPU; compiling takes minutes on "
                        "a CPU. BACKEND: a torch.compile backend (default inductor)")


def check_compile_backend(backend: str | None) -> None:
    """A ``--compile`` backend torch knows, before the model loads."""
    if backend is None:
        return
    import torch

    known = torch.compiler.list_backends(exclude_tags=())
    if backend not in known:
        raise CLIError(f"--compile: unknown torch.compile backend {short(backend)}{did_you_mean(backend, known)} (known: {', '.join(sorted(known))})")


def add_sampler_argument(p, what: str = "sample", instead_of: str = "the model's own scheduler") -> None:
    """``--sampler NAME`` (learn, generate, batch, detect): `steer.samplers.with_sampler` on the loaded pipeline."""
    from steer.samplers import SAMPLERS

    p.add_argument("--sampler", type=sampler_name_arg, default=None, metavar="NAME",
                   help=f"{what} with this sampler instead of {instead_of}: {', '.join(SAMPLERS)} (those "
                        "that fit the model's family: SD-family models all but flow-euler, flow-matching models "
                        "flow-euler), or a compatible diffusers scheduler class name")


def sampler_name_arg(text: str) -> str:
    """An argparse type: a sampler name or scheduler class name (whether it fits the model is checked once it loads)."""
    import argparse

    from steer.samplers import known_sampler

    try:
        return known_sampler(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_edit_arguments(p) -> None:
    """``--image``, ``--mask``, ``--strength``: edit a given image (image-to-image; inpainting with a mask)."""
    from steer.validation import bounded_float

    p.add_argument("--image", default=None, metavar="PATH",
                   help="edit this image instead of starting from noise (the model's image-to-image pipeline; size: the "
                        "image's, rounded down to a multiple of 8, unless --height / --width say otherwise)")
    p.add_argument("--mask", default=None, metavar="PATH",
                   help="with --image: repaint only the mask's white pixels (the model's inpainting pipeline); the same "
                        "size as the image")
    p.add_argument("--strength", type=bounded_float(0.0, 1.0, low_open=True), default=None,
                   help="with --image: how much of the run re-draws it, in (0, 1] (default: the pipeline's, 0.8 for "
                        "image-to-image, 1.0 for inpainting); the steering window is measured over the steps it runs")
    p.add_argument("--invert", action="store_true",
                   help="with --image: edit from the image's inversion for --prompt (SD, SDXL, SD3, Flux; steer.inversion) instead of "
                        "re-drawing it: scale 0 gives the image back, so the direction changes only what it edits; each "
                        "seed draws its own inversion noise")


def read_edit_arguments(args):
    """The `steer.images.EditInputs` of ``--image`` / ``--mask`` / ``--strength`` (None without ``--image``), read
    before any model loads; `CLIError` for a mask or strength without an image."""
    from steer.images import EditInputs

    invert = getattr(args, "invert", False)
    if args.image is None:
        for flag, value in (("--mask", args.mask), ("--strength", args.strength), ("--invert", invert or None)):
            if value is not None:
                raise CLIError(f"{flag} goes with --image (the image to edit)")
        return None
    if invert:
        for flag, value in (("--mask", args.mask), ("--strength", args.strength), ("--fit", getattr(args, "fit", False) or None),
                            ("--sampler", getattr(args, "sampler", None))):
            if value is not None:
                raise CLIError(f"--invert replays the image's inversion over the whole run: it takes no {flag}")
    check_edit_steps(args.strength, args.steps)
    return EditInputs.read(args.image, args.mask, args.strength)


def check_edit_steps(strength: float | None, steps: int) -> None:
    """`CLIError` when an edit at ``strength`` runs no denoising step of ``steps`` (diffusers runs
    ``int(steps * strength)``: `steer.images.edit_steps`)."""
    from steer.images import edit_steps

    if strength is not None and edit_steps(strength, steps) < 1:
        raise CLIError(f"--strength {strength:g} of --steps {steps} runs no step: raise either")
