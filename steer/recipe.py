"""Images that carry their own recipe: a JSON text chunk in the PNG, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

from PIL import Image, PngImagePlugin

from steer.files import atomic_write

RECIPE_KEY = "steer:recipe"
MAX_RUNS_PER_NAME = 10_000  # `save_new_pngs`: suffixes tried before giving up on an output folder


def recipe_hash(recipe: dict[str, Any]) -> str:
    """Stable short hash of a recipe (sorted JSON)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def png_bytes_hash(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def recorded_path(path: str | os.PathLike) -> str:
    """A local file or folder as a recipe records it: absolute, so that `steer reproduce` finds it from any folder
    (recipes recorded paths relative to where the command ran); a Hub id, or anything not on disk, as given."""
    local = Path(path).expanduser()
    return str(local.absolute()) if local.exists() else str(path)


def save_png(image: Image.Image, path: str | os.PathLike, recipe: dict[str, Any], replace: bool = True) -> Path:
    """Write ``image`` to ``path`` with ``recipe`` as a PNG text chunk (`steer.files.atomic_write`: never half
    written, never through a symlink; ``replace=False``: `FileExistsError` where a file is there by then)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(RECIPE_KEY, json.dumps(recipe, sort_keys=True, default=str))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info), replace=replace)


def read_recipe(path: str | os.PathLike | IO[bytes]) -> dict[str, Any]:
    """The recipe stored in a PNG written by `save_png`."""
    with Image.open(path) as im:
        text = im.text.get(RECIPE_KEY) if hasattr(im, "text") else None
    if text is None:
        raise ValueError(f"{path} carries no steer recipe")
    return json.loads(text)


def recipe_in(source: str | os.PathLike | IO[bytes]) -> dict[str, Any] | None:
    """The recipe a PNG (a path or an open binary file) carries, or None: not a PNG, no recipe, a broken or oversized
    file (someone else's: callers keep it rather than replace it)."""
    try:
        recipe = read_recipe(source)
    except Exception:  # noqa: BLE001 - whatever the file is, it holds no recipe of ours
        return None
    return recipe if isinstance(recipe, dict) else None


def made_by(path: Path, recipe: dict[str, Any], ignore: tuple[str, ...] = ()) -> bool:
    """Whether ``path`` is a PNG written by `save_png` from ``recipe`` (the same call made again; ``ignore``: recipe
    fields not known yet, left out of the comparison). A symlink, a folder or an unreadable file holds none (it is
    never read through or replaced)."""
    if path.is_symlink() or not path.is_file():
        return False
    found = recipe_in(path)
    if ignore and isinstance(found, dict):
        found = {k: v for k, v in found.items() if k not in ignore}
        recipe = {k: v for k, v in recipe.items() if k not in ignore}
    return found == json.loads(json.dumps(recipe, sort_keys=True, default=str))


def _suffixed(paths: list[Path], n: int) -> list[Path]:
    return paths if n == 1 else [p.with_name(f"{p.stem}-{n}{p.suffix}") for p in paths]


def first_unused(paths: list[Path], recipes: list[dict[str, Any]], start: int = 1, ignore: tuple[str, ...] = ()) -> int:
    """The first suffix from ``start`` under which each of a run's files is free or holds the same recipe (a rerun
    overwrites its own images; ``ignore`` as `made_by` takes it): 1 keeps the names, then ``-2``, ``-3``, ... (a run's
    files keep one suffix: ``seed0_scale+1-2.png``, ``seed0_sweep-2.png``)."""
    for n in range(start, MAX_RUNS_PER_NAME + 1):
        if all(not os.path.lexists(p) or made_by(p, r, ignore) for p, r in zip(_suffixed(paths, n), recipes, strict=True)):
            return n
    raise FileExistsError(f"{paths[0].parent} already holds {MAX_RUNS_PER_NAME} runs' files named like {paths[0].name}: "
                          "write to another --out folder")


def save_new_pngs(files: list[tuple[Image.Image, Path, dict[str, Any]]], start: int = 1) -> list[Path]:
    """Write one run's images (image, wanted path, recipe) under the first free names (`first_unused`), never replacing a file another
    process wrote after the names were chosen (two ``steer generate`` runs into one ``--out`` lost images so): a free
    name is taken only while still free; on a clash the run's files move on to the next suffix (those it wrote under
    the clashing one removed again), except where the file there now holds the same recipe (the same call, made at
    the same time). ``start``: the first suffix to try (a run saved in parts keeps the one chosen for all of it, see
    `first_unused`). Returns the paths written."""
    wanted = [path for _, path, _ in files]
    recipes = [recipe for *_, recipe in files]
    n = first_unused(wanted, recipes, start)
    while True:
        paths, created = _suffixed(wanted, n), []
        try:
            for (image, _, recipe), path in zip(files, paths, strict=True):
                if os.path.lexists(path):  # its own earlier image, when it still is (another run's may be there now)
                    if not made_by(path, recipe):
                        raise FileExistsError(path)
                    save_png(image, path, recipe)
                    continue
                try:
                    created.append(save_png(image, path, recipe, replace=False))
                except FileExistsError:
                    if not made_by(path, recipe):
                        raise
            return paths
        except FileExistsError:
            for path in created:
                path.unlink(missing_ok=True)
            n = first_unused(wanted, recipes, n + 1)
