"""Make an image again from the recipe its PNG carries (`steer.recipe`): what `steer reproduce` runs.

Three writers record recipes, each its own way: `steer generate` (directions with a weight, one scale), `steer batch`
(directions with their own scales, the denoiser's weights hash) and the app (one direction under ``"steering"``, found
by name and digest). `read_replay` reads any of them into one `Replay`; `find_direction` finds a recorded direction
by its digest (the recorded path, then folders to search); `replay_call` makes the image with the recorded prompt,
seed, steps, guidance, size, sampler, directions, scales and steering options, the options a recipe leaves out
(norm preservation, routes) coming from the directions themselves, as they did when it was made.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steer.config import STEERING_DEFAULTS, SteeringConfig, check_branches, recommended_settings
from steer.validation import MAX_SEED, MAX_SIZE, MAX_STEPS, short

MAX_SEARCHED_FILES = 2000  # direction files read while looking for a digest


@dataclass(frozen=True)
class RecordedDirection:
    """A direction as a recipe names it, and the strength its image used (negative: a take-away's removal)."""

    name: str
    digest: str
    path: str | None
    scale: float


@dataclass
class Replay:
    """Everything a recipe says about how its image was made."""

    writer: str  # "generate", "batch" or "app"
    model: str | None
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance: float
    height: int | None
    width: int | None
    sampler: str | None
    directions: list[RecordedDirection] = field(default_factory=list)  # the take-away last, if any
    settings: dict[str, Any] = field(default_factory=dict)  # the recorded ``steering_*`` options
    unet_weights: str | None = None
    # the call that made it, when it had several rows from one seed: each row's scales (None: no directions) and this
    # image's row (the app's [original, steered] pair; a `steer generate --sweep`)
    call_scales: list[list[float] | None] | None = None
    row: int = 0
    edit: RecordedEdit | None = None  # an image edit (`steer generate --image`): its input files and strength
    loras: list[dict[str, Any]] = field(default_factory=list)  # LoRA files loaded first (`steer.lora`): path, sha256, scale


@dataclass(frozen=True)
class RecordedEdit:
    """The inputs of an image edit as its recipe records them: each file's path and sha256, and the strength."""

    image: tuple[str, str]
    mask: tuple[str, str] | None
    strength: float
    invert: bool = False  # edited from the image's inversion (`steer.inversion`), not image-to-image
    pixels: dict[str, str] = field(default_factory=dict)  # "image" / "mask": `steer.images.pixel_digest` (newer recipes)


def _need(recipe: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str = "") -> Any:
    """``recipe[key]`` when it is a ``kind`` (a bool is not a number here); one-line `ValueError` otherwise."""
    value = recipe.get(key)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"the recipe's {what or key!r} is {short(value)}, not what steer writes there")
    return value


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"the recipe's {what!r} is {short(value)}, not a number in [{low:g}, {high:g}]")
    return float(value)


def _window(value: Any, what: str, per_direction: bool = True) -> Any:
    """A recorded window: None, ``[start, end]``, or one such (or None) per direction."""
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return (_number(value[0], what, 0, 1), _number(value[1], what, 0, 1))
    if per_direction and isinstance(value, list) and value and all(w is None or isinstance(w, list) for w in value):
        return tuple(_window(w, what, per_direction=False) for w in value)
    raise ValueError(f"the recipe's {what!r} is {short(value)}, not a window")


def _settings(block: dict[str, Any]) -> dict[str, Any]:
    """The ``steering_*`` options a recipe block records (those it leaves out come from the directions)."""
    out: dict[str, Any] = {}
    layers = block.get("layers")
    if layers is not None:
        if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"the recipe's 'layers' is {short(layers)}, not a list of layer names")
        out["steering_layers"] = list(layers)
    for key in ("window", "removal_window"):
        if block.get(key) is not None:
            out[f"steering_{key}"] = _window(block[key], key)
    if block.get("branch") is not None:  # one for every direction, or a list of one per direction
        try:
            branch = check_branches(block["branch"])
        except ValueError:
            raise ValueError(f"the recipe's 'branch' is {short(block['branch'])}, not what steer writes there") from None
        out["steering_branch"] = branch
    for key, kind in (("normalize", bool), ("mode", str), ("negative", str), ("strict", bool)):
        if block.get(key) is not None:
            out[f"steering_{key}"] = _need(block, key, kind)
    if block.get("readers") is not None:
        out["steering_readers"] = list(_need(block, "readers", list))
    return out


def _direction(entry: Any, scale: float, where: str) -> RecordedDirection:
    if not isinstance(entry, dict):
        raise ValueError(f"the recipe's {where} is {short(entry)}, not a direction entry")
    digest = entry.get("hash", entry.get("digest"))
    if not isinstance(digest, str) or not isinstance(entry.get("name"), str):
        raise ValueError(f"the recipe's {where} has no name and digest")
    path = entry.get("path")
    return RecordedDirection(entry["name"], digest, path if isinstance(path, str) else None, scale)


def _edit(value: Any) -> RecordedEdit | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"the recipe's 'edit' is {short(value)}, not what steer writes there")

    def file(key: str) -> tuple[str, str]:
        entry = value.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not isinstance(entry.get("sha256"), str):
            raise ValueError(f"the recipe's 'edit.{key}' is {short(entry)}, not a file's path and sha256")
        return entry["path"], entry["sha256"]

    mask = file("mask") if value.get("mask") is not None else None
    invert = value.get("invert", False)
    if not isinstance(invert, bool) or (invert and mask is not None):
        raise ValueError(f"the recipe's 'edit.invert' is {short(invert)}, not what steer writes there")
    pixels = {k: value[k]["pixels"] for k in ("image", "mask") if isinstance(value.get(k), dict) and isinstance(value[k].get("pixels"), str)}
    return RecordedEdit(file("image"), mask, _number(value.get("strength"), "edit.strength", 1e-6, 1), invert, pixels)


MAX_SCANNED_FILES = 512  # image files of a folder hashed in search of a renamed edit input
MAX_SCANNED_BYTES = 64 * 2**20  # larger files are not hashed


def _renamed_candidates(folders: Sequence[str | os.PathLike]):
    """The image files (no symlinks, none over `MAX_SCANNED_BYTES`) of ``folders``, at most `MAX_SCANNED_FILES` of
    each, by name: where a renamed edit input is looked for by its bytes (lazily, after the recorded names)."""
    from steer.extract import IMAGE_SUFFIXES

    for folder in folders:
        try:
            names = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_SCANNED_FILES]
        except OSError:
            continue
        for p in names:
            try:
                if not p.is_symlink() and p.is_file() and p.stat().st_size <= MAX_SCANNED_BYTES:
                    yield p
            except OSError:
                continue


def _pixels_of(path: Path, mode: str) -> str | None:
    """`steer.images.pixel_digest` of the picture at ``path`` decoded as an edit reads it; None: not a readable image."""
    from steer.images import open_image, pixel_digest

    try:
        return pixel_digest(open_image(path, mode=mode))
    except ValueError:
        return None


def find_edit_inputs(edit: RecordedEdit, folders: Sequence[str | os.PathLike] = ()):
    """The `steer.images.EditInputs` an edit started from: each recorded file when it still holds the recorded bytes,
    else a file of the same name in ``folders`` that does, else any image file in ``folders`` that does (renamed).
    One-line `FileNotFoundError` naming the one not found."""
    from steer.images import EditInputs, file_sha256

    def locate(what: str, recorded: tuple[str, str]) -> Path:
        path, digest = Path(recorded[0]), recorded[1]
        candidates = [path, *(Path(f) / path.name for f in folders), *_renamed_candidates(folders)]
        for candidate in candidates:
            if candidate.is_file() and file_sha256(candidate) == digest:
                return candidate
        pixels = edit.pixels.get(what)
        for candidate in candidates if pixels else []:
            if candidate.is_file() and _pixels_of(candidate, "L" if what == "mask" else "RGB") == pixels:
                return candidate  # the same picture in another file (the app's copy of an upload, a re-saved one)
        raise FileNotFoundError(f"the {what} the edit started from ({path.name}, sha256 {digest[:12]}...) is gone or "
                                f"changed at {short(str(path), 120)}; put it next to the image")

    image = locate("image", edit.image)
    mask = locate("mask", edit.mask) if edit.mask is not None else None
    return EditInputs.read(image, mask, edit.strength)


def _loras(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 8 or not all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("path"), str) for e in value):
        raise ValueError(f"the recipe's 'loras' is {short(value)}, not a list of LoRA files' paths and sha256")
    return [{"path": e["path"], "sha256": e["sha256"], "scale": _number(e.get("scale"), "loras.scale", -10, 10)} for e in value]


def read_replay(recipe: dict[str, Any]) -> Replay:
    """The `Replay` of a recipe written by `steer generate`, `steer batch` or the app; one-line `ValueError` for
    one that cannot be made again (a sweep grid, a hand-edited or foreign recipe)."""
    if not isinstance(recipe, dict):
        raise ValueError("the recipe is not a JSON object")
    if "sweep" in recipe:
        raise ValueError("this is a sweep's grid; reproduce one of its images (seed<N>_scale<S>.png)")
    steering = recipe.get("steering")
    writer = "app" if "steering" in recipe else "batch" if "unet_weights" in recipe else "generate"
    base = {
        "model": recipe.get("model") if isinstance(recipe.get("model"), str) else None,
        "prompt": _need(recipe, "prompt", str),
        "negative_prompt": recipe.get("negative_prompt") or None,
        "seed": int(_number(recipe.get("seed"), "seed", 0, MAX_SEED)),
        "steps": int(_number(recipe.get("num_inference_steps"), "num_inference_steps", 1, MAX_STEPS)),
        "guidance": _number(recipe.get("guidance_scale"), "guidance_scale", 0, 1e4),
        "height": int(_number(recipe["height"], "height", 8, MAX_SIZE)) if recipe.get("height") is not None else None,
        "width": int(_number(recipe["width"], "width", 8, MAX_SIZE)) if recipe.get("width") is not None else None,
        "sampler": recipe.get("sampler") if isinstance(recipe.get("sampler"), str) else None,
        "unet_weights": recipe.get("unet_weights") if isinstance(recipe.get("unet_weights"), str) else None,
        "loras": _loras(recipe.get("loras")),
    }
    if not isinstance(base["negative_prompt"], str | None):
        raise ValueError(f"the recipe's 'negative_prompt' is {short(base['negative_prompt'])}, not text")
    edit = _edit(recipe.get("edit"))
    if writer == "app":
        if steering is None:
            return Replay(writer, **base, call_scales=[None, None], row=1, edit=edit)
        if not isinstance(steering, dict):
            raise ValueError(f"the recipe's 'steering' is {short(steering)}, not what the app writes there")
        scale = _number(steering.get("scale"), "steering.scale", -1e4, 1e4)
        directions = [_direction(steering, scale, "'steering'")]
        away = steering.get("take_away")
        if away is not None:
            amount = _number(away.get("amount") if isinstance(away, dict) else None, "take_away.amount", 0, 1)
            directions.append(_direction(away, -amount, "'take_away'"))
        pair = [[0.0] * len(directions), [d.scale for d in directions]]
        return Replay(writer, **base, directions=directions, settings=_settings(steering), call_scales=pair, row=1, edit=edit)
    entries = _need(recipe, "directions", list)
    if not entries:
        return Replay(writer, **base, edit=edit)
    away = recipe.get("take_away")
    if writer == "generate":
        weights = [_number(e.get("weight") if isinstance(e, dict) else None, "weight", -1e4, 1e4) for e in entries]
        scale = _number(recipe.get("scale"), "scale", -1e4, 1e4)
        directions = [_direction(e, scale * w, "direction") for e, w in zip(entries, weights, strict=True)]
    else:
        directions = [_direction(e, _number(e.get("scale") if isinstance(e, dict) else None, "scale", -1e4, 1e4), "direction")
                      for e in entries]
    if away is not None:
        amount = _number(away.get("amount") if isinstance(away, dict) else None, "take_away.amount", 0, 1)
        directions.append(_direction(away, -amount, "'take_away'"))
    replay = Replay(writer, **base, directions=directions, settings=_settings(recipe), edit=edit)
    call = recipe.get("call")
    if writer == "generate" and call is not None:  # a sweep's row: the whole sweep made again, this row kept
        scales = _need(call, "scales", list, "call.scales") if isinstance(call, dict) else None
        row = call.get("row") if isinstance(call, dict) else None
        if not scales or len(scales) > 64 or not isinstance(row, int) or isinstance(row, bool) or not 0 <= row < len(scales):
            raise ValueError(f"the recipe's 'call' is {short(call)}, not a sweep's scales and this image's row")
        sweep = [_number(s, "call.scales", -1e4, 1e4) for s in scales]
        replay.call_scales = [[s * w for w in weights] + ([-min(s, 1.0)] if away is not None else []) for s in sweep]
        replay.row = row
    return replay


def _candidates(folders: Iterable[str | os.PathLike]) -> list[Path]:
    """The ``.safetensors`` files in ``folders`` (files given as such; folders searched recursively), at most
    `MAX_SEARCHED_FILES` in all: the walk stops there, however large the tree."""
    found: dict[Path, None] = {}
    for folder in folders:
        folder = Path(folder).expanduser()
        walk = [folder] if folder.is_file() else folder.rglob("*.safetensors") if folder.is_dir() else []
        for path in walk:
            if len(found) >= MAX_SEARCHED_FILES:
                return list(found)
            if path.is_file():
                found[path] = None
    return list(found)


def find_direction(recorded: RecordedDirection, folders: Sequence[str | os.PathLike] = ()):
    """The `SteeringVector` a recipe names, by its digest: the recorded file when it still holds it, else the first
    ``.safetensors`` under ``folders`` that does. One-line `FileNotFoundError` when none does."""
    from steer.vectors import SteeringVector

    tried = []
    if recorded.path is not None:
        tried.append(Path(recorded.path).expanduser())
    searched = _candidates(folders)
    for path in [*tried, *searched]:
        try:
            vector = SteeringVector.load(path)
        except Exception:  # noqa: BLE001 - not a direction, or damaged: look further
            continue
        if vector.digest() == recorded.digest:
            return vector
    where = f"{recorded.path} holds another one or is gone; " if recorded.path else ""
    raise FileNotFoundError(f"direction {recorded.name!r} (digest {recorded.digest}) not found: {where}searched "
                            f"{len(searched)} file(s); pass the folder that holds it with --directions")


def replay_call(pipe: Any, replay: Replay, vectors: Sequence[Any], edit: Any = None):
    """The image ``replay`` describes, made on ``pipe`` (already sampling with the recorded sampler) with ``vectors``
    (`find_direction` of each recorded direction, in order), in a call laid out as the one that made it (the app's
    pair, a sweep: every row from one seed, this image's kept); a PIL image. An edit's ``pipe`` is the editing
    pipeline (`steer.pipelines.factory.editing_pipeline`) and ``edit`` its `find_edit_inputs`."""
    import torch

    rows, steering = replay_steering(replay, vectors)
    if (edit is None) != (replay.edit is None):
        raise ValueError("an edit's recipe is made again with its inputs, and only it")
    size: dict[str, Any] = {"height": replay.height, "width": replay.width}
    if edit is not None:
        if replay.height is None or replay.width is None:
            raise ValueError("the recipe of an edit records no size")
        size = edit_call_inputs(pipe, edit, replay.height, replay.width, rows)
    device = pipe._execution_device
    generators = [torch.Generator("cpu" if device.type == "mps" else device).manual_seed(replay.seed) for _ in range(rows)]
    return pipe(
        [replay.prompt] * rows,
        negative_prompt=[replay.negative_prompt] * rows if replay.negative_prompt else None,
        num_inference_steps=replay.steps,
        guidance_scale=replay.guidance,
        generator=generators,
        **size,
        **steering,
    ).images[replay.row]


def replay_steering(replay: Replay, vectors: Sequence[Any]) -> tuple[int, dict[str, Any]]:
    """The rows of the call that made ``replay``'s image and its ``steering*`` arguments with ``vectors`` (each
    recorded direction's `find_direction`, in order)."""
    if len(vectors) != len(replay.directions):
        raise ValueError(f"{len(replay.directions)} direction(s) recorded, {len(vectors)} given")
    layout = replay.call_scales or [[d.scale for d in replay.directions]]
    steering: dict[str, Any] = {}
    if vectors:
        config = SteeringConfig.from_settings({**STEERING_DEFAULTS, **recommended_settings(list(vectors)), **replay.settings})
        scales = [r if r is not None else [0.0] * len(vectors) for r in layout]
        steering = {"steering": list(vectors), "steering_scale": scales, **config.to_settings()}
    return len(layout), steering


def edit_call_inputs(pipe: Any, edit: Any, height: int, width: int, rows: int) -> dict[str, Any]:
    """An editing pipeline's inputs for a call of ``rows`` rows of one edit: its image (and mask) prepared at
    ``height`` x ``width`` (`steer.images.EditInputs.prepared`) on every row (`edit_rows_inputs`)."""
    return edit_rows_inputs(pipe, [edit.prepared(height, width)] * rows, height, width)


def edit_rows_inputs(pipe: Any, rows: Sequence[dict[str, Any]], height: int, width: int) -> dict[str, Any]:
    """An editing pipeline's inputs from each row's prepared inputs (`steer.images.EditInputs.prepared`): the images
    (and masks) as lists, the strength when the rows carry one, and the size where the pipeline takes one (inpainting
    does; image-to-image runs at its image's size)."""
    import inspect

    call: dict[str, Any] = {k: [r[k] for r in rows] for k in ("image", "mask_image") if k in rows[0]}
    if "strength" in rows[0]:
        call["strength"] = rows[0]["strength"]
    if "height" in inspect.signature(pipe.__call__).parameters:
        call.update(height=height, width=width)
    return call
