"""The outputs of a ``steer batch`` run: resume keys, output names, and which images are finished already.

An image's resume key is its recipe's hash without provenance-only fields (`image_key`); an image is finished when
the manifest records its key and the PNG there still has the recorded sha256 (`assign_paths`), or when a PNG at its
name carries its recipe (an earlier run that died before its manifest line: adopted). Names are sanitized
(`sanitize_name`) and never lead outside the output folder or through a symlink.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steer.jobs.files import manifest_lines, read_under, safe_parts
from steer.jobs.read import JobError
from steer.recipe import recipe_hash, recipe_in

if TYPE_CHECKING:
    from steer.jobs.plan import ImageJob, Plan

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")


def sanitize_name(name: str) -> str:
    """A safe relative output name: ``/``-separated parts of ``[A-Za-z0-9._+=-]``, no ``..``, no leading dots.

    ``"../../etc/x"`` becomes ``"etc/x"``, ``"/abs/p"`` becomes ``"abs/p"``, odd characters become ``_``; an empty
    result means "use the default name". A trailing ``.png`` is dropped (it is added back).
    """
    name = re.sub(r"\.png$", "", name.strip(), flags=re.IGNORECASE)
    parts = []
    for part in name.replace("\\", "/").split("/"):
        part = _SAFE_CHARS.sub("_", part).lstrip(".").strip("_")
        if part:
            parts.append(part[:100])
    return "/".join(parts[:8])


def image_key(recipe: dict[str, Any]) -> str:
    """The resume key of an image: the recipe hash without provenance-only fields (version, direction paths, a
    take-away's path and the fit its scale and window came from: they are in the recipe themselves; an edit's file
    paths: its files count by their sha256). A local model folder counts by where it is, however the recipe names it
    (recipes recorded it as given, relative to where the command ran, before they recorded it absolute); an inversion
    counts without a sampler (recipes recorded steer batch's --sampler there, which inversions do not use)."""
    core = {k: v for k, v in recipe.items() if k != "steer_version"}
    if isinstance(model := recipe.get("model"), str):
        try:
            if (local := Path(model).expanduser()).exists():
                core["model"] = str(local.resolve())
        except (RuntimeError, OSError, ValueError):  # ~nosuchuser/..., a NUL: the text as recorded
            pass
    if isinstance(recipe.get("edit"), dict) and recipe["edit"].get("invert"):  # inversions sample with DDIM whatever
        core.pop("sampler", None)  # --sampler said (recipes before recorded it and its scheduler): the same image
        core.pop("scheduler", None)
    core["directions"] = [{k: v for k, v in d.items() if k != "path"} for d in recipe.get("directions") or []]
    if isinstance(recipe.get("take_away"), dict):
        core["take_away"] = {k: v for k, v in recipe["take_away"].items() if k not in ("path", "fit")}
    if isinstance(recipe.get("loras"), list):
        core["loras"] = [{k: v for k, v in e.items() if k != "path"} if isinstance(e, dict) else e for e in recipe["loras"]]
    if isinstance(recipe.get("edit"), dict):  # an edited image's files by their bytes: moved inputs are the same image
        core["edit"] = {k: ({"sha256": v.get("sha256")} if isinstance(v, dict) else v) for k, v in recipe["edit"].items()}
    return recipe_hash(core)


def mark_duplicates(plan: Plan) -> None:
    """Images whose recipe an earlier one has are made once: marked ``duplicate``, with ``same_as`` that image."""
    first: dict[str, ImageJob] = {}
    for im in plan.images:
        if im.key in first:
            im.status = "duplicate"
            im.path = None
            im.same_as = (first[im.key].line, first[im.key].index)
        else:
            first[im.key] = im


def duplicate_notes(plan: Plan) -> list[str]:
    """One note per job line whose images repeat an earlier image's recipe (they are made once, under the earlier
    image's name: a second ``name`` for the same image would otherwise vanish without a word)."""
    path_of = {(im.line, im.index): im.path for im in plan.images if im.status != "duplicate"}
    by_line: dict[int, list[ImageJob]] = {}
    for im in plan.images:
        if im.status == "duplicate" and im.same_as is not None:
            by_line.setdefault(im.line, []).append(im)
    notes = []
    for line, images in by_line.items():
        firsts = sorted({im.same_as[0] for im in images if im.same_as is not None})
        where = [path_of.get(im.same_as) for im in images if im.same_as is not None]
        shown = ", ".join(sorted({p for p in where if p})[:3])
        more = " ..." if len({p for p in where if p}) > 3 else ""
        what = "the same image as" if len(images) == 1 else f"{len(images)} images the same as those of"
        notes.append(f"note: line {line}: {what} line {', '.join(map(str, firsts[:5]))} (the same recipe): made once, "
                     f"as {shown}{more}")
    return notes




def read_manifest_entries(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Entries of ``manifest.jsonl`` and any ``manifest.rank*.jsonl`` shards with a safe relative path, each keyed by
    its recipe (`image_key`); unreadable (torn) lines, symlinked manifests and paths leaving the folder are ignored."""
    entries = []
    for e in manifest_lines(out):
        try:
            safe_parts(e["path"])
        except ValueError:
            continue
        if isinstance(e.get("recipe"), dict):  # the key as this version computes it (its rules may have changed)
            try:
                e["key"] = image_key(e["recipe"])
            except (AttributeError, TypeError):  # a recipe of another shape: the key it was written with
                pass
        entries.append(e)
    return entries


def assign_paths(plan: Plan, out: Path) -> None:
    """Finished images keep their recorded paths; the others get their preferred name or a ``-N`` suffix."""
    manifest = {e["key"]: e for e in read_manifest_entries(out)}
    by_path = {e["path"]: e["key"] for e in manifest.values()}
    claimed: dict[str, str] = {}
    sha_cache: dict[str, str | None] = {}
    for im in plan.images:
        entry = manifest.get(im.key)
        if im.status == "new" and entry is not None and sha_of(out, entry["path"], sha_cache) == entry.get("sha256"):
            im.status, im.path, im.sha256 = "done", entry["path"], entry["sha256"]
            claimed[im.path] = im.key
    failed_lines: dict[int, str] = {}
    for im in plan.images:
        if im.status != "new" or im.line in failed_lines:
            continue
        try:
            im.path, im.status = _free_path(out, im, claimed, by_path)
            claimed[im.path] = im.key
        except JobError as err:
            failed_lines[im.line] = err.reason
    if failed_lines:
        plan.failures += [{"line": line, "reason": reason} for line, reason in failed_lines.items()]
        plan.images = [im for im in plan.images if im.line not in failed_lines]


def _free_path(out: Path, im: ImageJob, claimed: dict[str, str], by_path: dict[str, str]) -> tuple[str, str]:
    """The first candidate name not taken by another image or an unrelated file; 'adopt' if it already holds ours."""
    root = out.resolve()
    for n in range(100):
        rel = f"{im.stem}.png" if n == 0 else f"{im.stem}-{n}.png"
        if claimed.get(rel, im.key) != im.key or by_path.get(rel, im.key) != im.key:
            continue
        target = out / rel
        if not target.resolve().is_relative_to(root):
            raise JobError(im.line, f"output name {rel!r} leads outside the output directory (a symlink?)")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if out.joinpath(*parts[:i]).is_symlink():
                raise JobError(im.line, f"output name {rel!r} goes through the symlink {'/'.join(parts[:i])!r}; not followed")
        if target.exists() or target.is_symlink():
            if target.is_file() and not target.is_symlink() and holds_recipe(read_under(out, rel), im.key):
                return rel, "adopt"  # written by an earlier run that died before its manifest line
            continue
        return rel, "new"
    raise JobError(im.line, f"output name {im.stem!r} collides with 100 existing files; give the job another name")


def holds_recipe(data: bytes | None, key: str) -> bool:
    """Whether ``data`` is a PNG carrying a recipe with this resume key."""
    recipe = recipe_in(io.BytesIO(data)) if data is not None else None
    try:
        return recipe is not None and image_key(recipe) == key
    except (AttributeError, TypeError):  # a recipe of another shape (written by hand): not ours
        return False


def sha_of(out: Path, rel: str, cache: dict[str, str | None]) -> str | None:
    """sha256 of the regular file ``out/rel`` (never through a symlink); None if there is none."""
    if rel not in cache:
        data = read_under(out, rel)
        cache[rel] = hashlib.sha256(data).hexdigest() if data is not None else None
    return cache[rel]
