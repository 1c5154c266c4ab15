"""``steer reproduce IMAGE.png ...``: make images again from the recipes they carry and say whether the pixels match.

Exit status 0 when every image comes out identical (or within ``--tolerance``), 1 when one differs (each reproduction written when ``--out`` is
given, as ``<name>.reproduced.png``: an original is never overwritten), 2 for an image without a readable recipe, a
direction that cannot be found by its digest, or a model that does not load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from steer.cli.inputs import check_out_dir
from steer.validation import bounded_int, clip


def configure_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``steer reproduce``."""
    p = subparsers.add_parser(
        "reproduce",
        help="make images again from the recipes their PNGs carry and check the pixels match",
        description="Reads the recipe steer generate, steer batch or the app wrote into each PNG, makes the image "
        "again (same model, prompt, seed, steps, guidance, size, sampler, directions found by their digest, scales and "
        "steering options; an edit's input image and mask by their sha256, where recorded or next to the image) and "
        "compares the pixels. Exit status 0: all identical; 1: some differ.",
    )
    p.add_argument("images", nargs="+", help="PNG files written by steer (generate, batch or the app)")
    p.add_argument("--model", default=None, help="the model to use instead of the one the recipe names (a moved folder)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--directions", nargs="+", default=[], metavar="DIR",
                   help="folders (or files) to look in for the recipe's directions, by digest, when their recorded file "
                        "is gone or changed (the image's folder and the model's bundled directions are searched too)")
    p.add_argument("--lora", nargs="+", default=[], metavar="PATH",
                   help="LoRA files (or folders of them) to look in, by sha256, when a recorded LoRA file is gone or changed "
                        "(the image's folder is searched too)")
    p.add_argument("--tolerance", type=bounded_int(0, 255), default=0, metavar="LEVELS",
                   help="largest pixel difference (of 255) still counted as reproduced (default 0: bit for bit; images "
                        "made in a batch of other rows can differ by a level where the arithmetic rounds otherwise)")
    p.add_argument("--out", default=None, help="write each reproduction here as <name>.reproduced.png, with the recipe (<name>.reproduced-2.png where another image of that name is there)")
    p.set_defaults(func=cmd_reproduce)
    return p


def _scheduler_sampler(recipe: dict[str, Any], replay: Any) -> str | None:
    """The sampler to use: the recorded name, else (recipes from before names) the recorded scheduler class."""
    if replay.sampler is not None:
        return replay.sampler
    scheduler = recipe.get("scheduler")
    return scheduler if isinstance(scheduler, str) and scheduler.endswith("Scheduler") else None


def cmd_reproduce(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from steer.assets import default_model, directions_dir
    from steer.cli.loading import load_pipeline
    from steer.denoisers import denoiser_of
    from steer.inversion import replay_inverted
    from steer.lora import find_lora
    from steer.pipelines.factory import editing_pipeline
    from steer.recipe import read_recipe, save_new_pngs
    from steer.replay import find_direction, find_edit_inputs, read_replay, replay_call
    from steer.samplers import sampler_name
    from steer.vectors import weights_hash

    check_out_dir(args.out)
    jobs, grids = [], []
    for image in args.images:  # every recipe read before any model loads: a bad one fails first
        path = Path(image)
        if path.is_dir():
            raise FileNotFoundError(f"{image} is a folder: give its images (steer reproduce {image.rstrip('/')}/*.png)")
        if not path.is_file():
            raise FileNotFoundError(f"{image}: no such file")
        try:
            recipe = read_recipe(path)
            if isinstance(recipe, dict) and "sweep" in recipe and len(args.images) > 1:
                grids.append(path)  # `out/*.png` holds the grid `steer generate --sweep` writes beside its rows
                continue
            jobs.append((path, recipe, read_replay(recipe)))
        except ValueError as err:  # a recipe that is no JSON, or that cannot be made again: the file named
            raise ValueError(f"{image}: {err}") from None
    if grids:
        print(f"note: skipped {len(grids)} sweep grid(s) ({grids[0]} ...): their rows are reproduced one by one", file=sys.stderr)
    if not jobs:
        raise ValueError(f"{grids[0]}: these are sweeps' grids; reproduce their images (seed<N>_scale<S>.png)")
    pipes: dict[tuple, Any] = {}
    differ = 0
    for path, recipe, replay in jobs:
        model = args.model or replay.model or default_model()
        try:  # a problem with one image's model, sampler or directions: one line naming the image
            loras = [find_lora(record, [*args.lora, path.parent]) for record in replay.loras]
            key = (model, *((str(lora.path), lora.scale) for lora in loras))
            if key not in pipes:
                try:
                    pipes[key] = load_pipeline(model, args.device, progress=False, loras=loras)
                except (OSError, ValueError) as err:
                    hint = "" if args.model else " (the model the recipe names; give another with --model)"
                    raise type(err)(f"{err}{hint}") from None
            pipe = pipes[key]
            if replay.unet_weights is not None and weights_hash(denoiser_of(pipe)) != replay.unet_weights:
                print(f"warning: {path}: {model}'s weights are not the ones the recipe records", file=sys.stderr)
            pipe = pipe.with_sampler(_scheduler_sampler(recipe, replay))
            folders = [*args.directions, *sorted(path.parent.glob("*.safetensors")), directions_dir(model)]
            vectors = [find_direction(d, folders) for d in replay.directions]
            edit = find_edit_inputs(replay.edit, [path.parent]) if replay.edit is not None else None
            inverted = replay.edit is not None and replay.edit.invert
            if edit is not None and not inverted:  # an image edit: the model's image-to-image or inpainting pipeline
                pipe = editing_pipeline(pipe, edit.task)
        except (OSError, ValueError) as err:
            raise type(err)(f"{path}: {err}") from None
        try:  # a hand-edited recipe diffusers refuses (a height not divisible by 8, ...): one line naming the image
            image = replay_inverted(pipe, replay, vectors, edit) if inverted else replay_call(pipe, replay, vectors, edit)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: its recipe cannot be made again: {clip(str(err))}") from None
        with Image.open(path) as im:
            before = np.asarray(im.convert("RGB"), dtype=np.int16)
        after = np.asarray(image.convert("RGB"), dtype=np.int16)
        if before.shape != after.shape:
            verdict, same = f"differs: {after.shape[1]}x{after.shape[0]} against the original's {before.shape[1]}x{before.shape[0]}", False
        else:
            delta = np.abs(after - before)
            same = int(delta.max()) <= args.tolerance
            verdict = "identical" if not delta.any() else \
                f"{'within tolerance' if same else 'differs'}: max |difference| {int(delta.max())}/255 on {int((delta > 0).sum())} of {delta.size} values"
        differ += not same
        note = f"{path}: {verdict} ({replay.writer} recipe, {sampler_name(pipe.scheduler)}, {len(vectors)} direction(s))"
        if args.out is not None:
            # another original of the same name already reproduced there is kept (steer.recipe.save_new_pngs)
            (written,) = save_new_pngs([(image, Path(args.out) / f"{path.stem}.reproduced.png", recipe)])
            note += f"; wrote {written}"
        print(note, flush=True)
    return 1 if differ else 0
