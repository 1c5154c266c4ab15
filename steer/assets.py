"""What ships in ``assets/``: the embedded demo models and their bundled directions (paths only; nothing is loaded),
and what a direction's name means (`find_direction`: the user's file before a bundled name, for every caller)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

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


class FoundDirection(NamedTuple):
    """What `find_direction` found: the file (None: neither a local file nor a bundled name), the paths looked at for
    a local file, and a one-line note when a local file shadows a bundled direction of the same name."""

    path: Path | None
    tried: tuple[Path, ...]
    note: str | None


def find_direction(name: str | os.PathLike, model: str | os.PathLike | None = None, under: str | os.PathLike | None = None) -> FoundDirection:
    """The direction file ``name`` means, by one rule for ``steer generate``, ``steer inspect``, ``steer batch`` and
    ``pipe(steering=...)``: the user's local file first, ``name`` itself or ``name.safetensors`` as `SteeringVector.save`
    writes it (`steer.hub.local_direction`, a file before a folder of the name as `SteeringVector.load` takes it; a
    relative name first under ``under``, a jobs file's folder), then the direction of that name shipped for ``model``
    (`bundled_directions`). A folder, or a Hub repo spec, is left to the caller (path None). A local file named like a
    bundled direction (``steer learn --out to_red`` wrote ./to_red.safetensors) comes with a note saying so."""
    from steer.hub import local_direction, local_kind

    try:
        given = Path(name).expanduser()
    except RuntimeError:  # ~user of no user: the name as given
        given = Path(name)
    tried = (*([Path(under) / given] if under is not None and not given.is_absolute() else []), given)
    for candidate in tried:
        found = local_direction(candidate, files_first=True)
        if found is not None and local_kind(found) == "file":
            break
    else:
        found = None
    bundled = bundled_directions(model)
    key = os.fspath(name)
    if found is None:
        return FoundDirection(bundled.get(key), tried, None)
    note = None
    if key in bundled and found.resolve() != bundled[key].resolve():
        note = (f"{key!r} is the local file {found}, not the bundled direction {key} (a local file comes first; "
                f"pass {bundled[key]} for the bundled one)")
    return FoundDirection(found, tried, note)


def out_shadow_note(out: str | os.PathLike, model: str | os.PathLike | None = None) -> str | None:
    """One line when a direction saved as ``out`` (``steer learn --out``) is named like a direction shipped for
    ``model``: that bare name, given in the file's folder, then means the file (`find_direction`), not the bundled one."""
    from steer.validation import safetensors_path

    file = safetensors_path(Path(out).expanduser())
    if file.stem not in bundled_directions(model):
        return None
    return (f"{file.name} is named like the bundled direction {file.stem}: --direction {file.stem} (steering={file.stem!r}) "
            f"given in {'this folder' if file.parent == Path('.') else file.parent} will take this file, not the bundled one")
