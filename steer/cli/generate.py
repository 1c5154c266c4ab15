"""``steer generate``: images from a prompt, optionally steered (a strength, a sweep, several directions, a take-away),
from noise or editing a given image (``--image``, ``--mask``); every PNG carries its recipe (`steer.recipe`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from steer.cli.arguments import GUIDANCE, SCALE, SEED, SIZE, STEPS, add_model_args, add_steering_args, parse_sweep
from steer.cli.inputs import (
    CLIError,
    add_compile_argument,
    add_edit_arguments,
    add_sampler_argument,
    check_compile_backend,
    check_edit_steps,
    check_out_dir,
    print_warnings,
    read_edit_arguments,
    unknown_direction,
)
from steer.config import (
    REMOVING,
    STEERING_DEFAULTS,
    TAKE_AWAY_NEGATIVE,
    SteeringConfig,
    agreed_recommendation,
    disagreement_note,
    recommended_settings,
    recorded_branches,
    routes_record,
    window_record,
)
from steer.recipe import recorded_path
from steer.validation import MAX_IMAGES, MAX_SEED, bounded_int, short


def add_generate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``steer generate`` to the subcommands."""
    p = sub.add_parser("generate", help="generate images, optionally steered; PNGs carry their recipe")
    add_model_args(p)
    add_compile_argument(p)
    p.add_argument("--prompt", required=True, help="the prompt (with --image: what the edited picture shows, leaving open what the direction changes)")
    p.add_argument("--negative-prompt", default=None,
                   help="a direction's full edit (scale 1) is calibrated for the negative prompt it was learned with (none, for the "
                        "bundled ones): for another, learn it with steer learn --negative-prompt (docs/steering.md, 'Calibrating for how the user generates')")
    p.add_argument("--direction", nargs="+", default=None, help="direction file(s), bundled direction name(s) (those shipped for --model: its folder's directions/, else assets/directions; "
                        "a file NAME or NAME.safetensors here comes first, with a note) or Hub repo(s) owner/name[@revision][:file.safetensors]")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scale", type=SCALE, default=None, help="strength (default: the direction's recommended scale, else 1)")
    group.add_argument("--sweep", type=parse_sweep, default=None, metavar="LO,HI,N", help="N scales in one batched call, plus a grid")
    p.add_argument("--weights", type=SCALE, nargs="+", default=None,
                   help="one weight per --direction, multiplying the scale (default 1 each): --direction to_blue to_red --weights 1 -1 --negative remove")
    p.add_argument("--take-away", default=None, metavar="DIRECTION",
                   help="a direction whose excess in the prompt is removed as --direction is added (\"a red t-shirt\" -> blue: "
                        "--direction to_blue --take-away to_red); amount min(scale, 1), --negative remove. 'auto': the "
                        "one the prompt states, among the files beside --direction and the bundled ones (none: nothing taken away)")
    p.add_argument("--fit", action="store_true",
                   help="with --take-away: fit the strength and window from the model first (pipe.fit_take_away; a few "
                        "seconds), used unless --scale / --sweep / --window say otherwise; with --image: fit the scale at "
                        "which the direction edits images at --strength as far as its own prompts do (pipe.fit_edit; with --mask, "
                        "fitted on whole images)")
    add_steering_args(p)
    p.add_argument("--seed", type=SEED, default=0, help="the first image's seed (default 0)")
    p.add_argument("--num-images", type=bounded_int(1, MAX_IMAGES), default=1, help="one per seed, starting at --seed")
    p.add_argument("--steps", type=STEPS, default=30, help="denoising steps (default 30)")
    p.add_argument("--guidance", type=GUIDANCE, default=7.5, help="classifier-free guidance scale (default 7.5)")
    add_sampler_argument(p)
    p.add_argument("--height", type=SIZE, default=None, help="image height (default: the model's)")
    p.add_argument("--width", type=SIZE, default=None, help="image width (default: the model's)")
    add_edit_arguments(p)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_generate)
    return p


def _recipe(args: argparse.Namespace, pipe, vectors, config: SteeringConfig, scale: float | None, seed: int, weights: list[float], away=None, edit=None,
            fit=None) -> dict[str, Any]:
    from steer import __version__
    from steer.lora import loaded_loras
    from steer.samplers import sampler_name
    from steer.take_away import take_away_record

    taken = {"take_away": take_away_record(away[0], away[1], scale, fit)} if away is not None else {}
    return {
        "steer_version": __version__,
        "model": recorded_path(args.model),
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "seed": seed,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "sampler": sampler_name(pipe.scheduler),
        "height": args.height,
        "width": args.width,
        "directions": [{"name": v.name, "hash": v.digest(), "path": recorded_path(p), "weight": w} for (v, p), w in zip(vectors, weights, strict=True)],
        "scale": scale,
        "layers": list(config.layers) if config.layers is not None else None,
        "window": window_record(config.window),
        "branch": config.branch if isinstance(config.branch, str) else list(config.branch),
        "normalize": config.normalize,
        "mode": config.mode,
        "negative": config.negative,
        **({"strict": False} if not config.strict else {}),  # --no-strict: steer reproduce applies it so too
        **({"removal_window": window_record(config.removal_window)} if config.removal_window is not None else {}),
        **({"readers": list(config.readers)} if config.readers is not None else {}),
        **routes_record([v for v, _ in vectors] + ([away[0]] if away is not None else []), config.readers),
        **taken,
        **({"edit": edit} if edit is not None else {}),
        **({"loras": loaded_loras(pipe)} if loaded_loras(pipe) else {}),
    }


_BUILTIN = {"branch": "cond", "normalize": False, "mode": "add", "layers": None, "scale": 1.0}


def _one_or_per_direction(args: argparse.Namespace, vectors: list, values: list, flag: str, what: str) -> Any:
    """A per-direction option's values as the call takes them: the one value for all directions, or a tuple of one per
    direction (the take-away included); a `CLIError` for another count."""
    if len(values) not in (1, len(vectors)):
        count = f"({len(vectors)}, the take-away included)" if getattr(args, "take_away", None) else f"({len(vectors)})"
        raise CLIError(f"{flag} takes one {what} for all directions or one per direction {count}, got {len(values)}")
    return values[0] if len(values) == 1 else tuple(values)


def apply_recommended(args: argparse.Namespace, vectors: list) -> SteeringConfig:
    """Fill unset steering options from what the directions' ``metadata["recommended"]`` agree on (all of them record
    one value), else the built-in defaults, and return the call's `SteeringConfig`: these options over what a pipeline
    call resolves for the others (the window when unset, and preserve_norm, which has no option). Directions that
    record different application settings the command leaves unset get a ``warning:`` line (`disagreement_note`)."""
    user_set = {f"steering_{key}" for key in ("branch", "normalize", "mode") if getattr(args, key, None) is not None}
    if len(vectors) > 1 and (note := disagreement_note(vectors, user_set)) is not None:
        print(f"warning: {note}", file=sys.stderr)
    branches = getattr(args, "branch", None)
    if branches is not None:  # one for all directions, or one per direction
        args.branch = _one_or_per_direction(args, vectors, branches, "--branch", "branch")
    elif (recorded := recorded_branches(vectors)) is not None:  # each direction on the branch it was calibrated on
        args.branch = recorded
    for key, builtin in _BUILTIN.items():
        if getattr(args, key, None) is None:
            agreed = agreed_recommendation(vectors, key)
            setattr(args, key, agreed if agreed is not None else builtin)
    given = {f"steering_{key}": getattr(args, key) for key in ("layers", "branch", "normalize", "mode", "strict", "negative")}
    for key in ("window", "removal_window"):  # one for all directions, or one per direction (and take-away)
        windows = getattr(args, key, None)
        if windows is not None:
            given[f"steering_{key}"] = _one_or_per_direction(args, vectors, windows, "--" + key.replace("_", "-"), "start,end")
    if args.readers is not None:
        given["steering_readers"] = args.readers
    return SteeringConfig.from_settings({**STEERING_DEFAULTS, **recommended_settings(vectors), **given})


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from diffusers.utils import make_image_grid

    from steer.assets import bundled_directions, find_direction
    from steer.cli.loading import load_pipeline
    from steer.denoisers import native_size
    from steer.hub import is_hub_spec, local_direction, resolve_direction
    from steer.images import EDIT_SIDE_FACTOR, capped_edit_size, edit_size
    from steer.inversion import invert_image
    from steer.pipelines.factory import default_strength, editing_pipeline
    from steer.recipe import save_new_pngs
    from steer.replay import edit_call_inputs
    from steer.sliders import stated_note, subtracts
    from steer.take_away import AUTO, ITSELF, pair_scales, suggested_take_aways, take_away_candidates
    from steer.vectors import SteeringVector

    def located(d: str) -> Path:  # a local file, a bundled name, a local folder, or a Hub repo owner/name[@rev][:file]
        found = find_direction(d, args.model)  # the user's file before a bundled name of the same name (said)
        if found.note is not None:
            print(f"note: {found.note}", file=sys.stderr)
        if found.path is not None:
            return found.path
        bundled = bundled_directions(args.model)
        if not is_hub_spec(d) and local_direction(d) is None and bundled:  # say what the model ships
            raise unknown_direction(d, bundled)
        return resolve_direction(d)

    check_out_dir(args.out)
    edit = read_edit_arguments(args)  # the image to edit (and its mask), read before the model loads
    sized = args.height is not None or args.width is not None
    if edit is not None:
        try:
            args.height, args.width = edit_size(edit.image.size, args.height, args.width)
        except ValueError:  # over the size limit at its own size: sized from the model's once it loads (below)
            if sized:
                raise
            args.height = args.width = None
    vectors = [(SteeringVector.load(p), p) for p in map(located, args.direction or [])]
    if args.sweep is not None and not vectors:
        raise CLIError("--sweep needs a --direction")
    if not vectors and (unused := unused_steering_options(args)):  # they would be recorded, and change nothing
        raise CLIError(f"{unused} needs a --direction (there is nothing to steer)")
    weights = args.weights if args.weights is not None else [1.0] * len(vectors)
    if getattr(args, "take_away", None) and any(w < 0 for w in weights):  # the edit was removed, not added (named scale+1)
        raise CLIError("--take-away goes with a positive --weights: it replaces what the prompt says")
    if len(weights) != len(vectors):
        raise CLIError(f"--weights takes one number per --direction: got {len(weights)} for {len(vectors)} direction(s)")
    if args.seed + args.num_images - 1 > MAX_SEED:
        raise CLIError(f"--seed {args.seed} + --num-images {args.num_images} runs past the largest seed {MAX_SEED}")
    away = None
    if args.take_away is not None and len(vectors) != 1:
        raise CLIError("--take-away goes with one --direction (the one that replaces it)")
    auto = args.take_away == AUTO  # looked for already: no note to repeat the search
    if auto:
        found = suggested_take_aways(vectors[0][0], args.prompt, take_away_candidates(vectors[0][1], bundled_directions(args.model)))
        args.take_away = found[0][0] if found else None
        print(f"take-away: auto -> {args.take_away}" if found else
              f"take-away: auto -> none ({short(args.prompt, 80)} states nothing {short(vectors[0][0].name)} replaces)", file=sys.stderr)
        if not found and args.fit and edit is None:
            args.fit = False  # nothing to fit: the direction alone, at its own settings
    if args.take_away is not None:
        if args.negative not in (None, *REMOVING):
            raise CLIError(f"--take-away removes what the prompt says (--negative {TAKE_AWAY_NEGATIVE}, or remove without turning its "
                           f"word): --negative {args.negative} contradicts it")
        away_path = located(args.take_away)
        away = (SteeringVector.load(away_path), away_path)
        if away[0].digest() == vectors[0][0].digest():
            raise CLIError(ITSELF.replace("blue, add to_blue and take away to_red", "blue: --direction to_blue --take-away to_red"))
    args.negative = args.negative or (TAKE_AWAY_NEGATIVE if away is not None else "subtract")
    if args.removal_window is not None and args.negative not in REMOVING:  # recorded, and changed nothing
        raise CLIError("--removal-window sets where --negative remove acts: under --negative subtract nothing is removed "
                       "(add --negative remove, or --take-away)")
    if args.fit and (away is None) == (edit is None):
        raise CLIError("--fit fits a take-away (--take-away) or an image edit (--image): give one of them")
    if args.fit and edit is not None and len(vectors) != 1:
        raise CLIError("--fit with --image fits the scale of one --direction")
    user_set = {"scale": args.scale is not None or args.sweep is not None, "window": args.window is not None}  # before the recommended fill in
    config = apply_recommended(args, [v for v, _ in vectors] + ([away[0]] if away else []))
    check_compile_backend(args.compile)
    pipe = load_pipeline(args.model, args.device, progress=True, loras=args.lora)
    if edit is not None and not sized and (capped := capped_edit_size(edit.image.size, native_size(pipe))) is not None:
        print(f"note: the image is {edit.image.width}x{edit.image.height}; editing at {capped[1]}x{capped[0]}, "
              f"{EDIT_SIDE_FACTOR}x the model's {native_size(pipe)} pixels (give --height / --width for another size)",
              file=sys.stderr)
        args.height, args.width = capped
    elif edit is not None and args.height is None:  # over the limit and not capped (a model drawing 4096 pixels): one line
        args.height, args.width = edit_size(edit.image.size)
    if args.compile:
        pipe.compile_unet(backend=args.compile)
    pipe = pipe.with_sampler(args.sampler)
    if edit is not None and args.invert:
        strength = 1.0  # the inversion replays the whole run
    elif edit is not None:  # the model's image-to-image or inpainting pipeline, sharing the loaded modules
        text_pipe, pipe = pipe, editing_pipeline(pipe, edit.task)
        strength = edit.strength if edit.strength is not None else default_strength(pipe)
        check_edit_steps(strength, args.steps)  # the pipeline's default strength
    if args.fit:
        negative = {"negative_prompt": args.negative_prompt} if args.negative_prompt else {}  # fitted for how this call generates
        with warnings.catch_warnings(record=True) as caught:  # the fit's advice (a pair that may not flip...)
            warnings.simplefilter("always")
            if away is not None:
                at_size = {k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None}  # as batch fits a job
                fit = pipe.fit_take_away(vectors[0][0], away[0], guidance_scale=args.guidance, negative=args.negative, **at_size, **negative)
            else:
                edit_fit = text_pipe.fit_edit(vectors[0][0], strength=strength, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                              height=args.height, width=args.width, **config.to_settings(), **negative)
        if away is not None:
            print(f"fit: strength {fit.strength:.3g}, window {fit.window[0]:g},{fit.window[1]:g} (relative distance {fit.distance:.2f}"
                  f"{fit.window_note()})", file=sys.stderr)
        else:
            print(f"fit: scale {edit_fit.scale:.3g} at strength {strength:g} (closest {edit_fit.closest:.3g}, relative distance "
                  f"{edit_fit.distance:.2f}; at least the calibrated full edit, 1)", file=sys.stderr)
        print_warnings(caught)
        if not user_set["scale"]:
            args.scale = round(fit.strength if away is not None else edit_fit.scale, 3)
        if away is not None and not user_set["window"]:
            config = dataclasses.replace(config, window=fit.window)
    away_fit = fit if args.fit and away is not None else None  # recorded with the take-away, as batch records it
    scales = args.sweep if args.sweep is not None else [args.scale if vectors else None]
    size: dict[str, Any] = {"height": args.height, "width": args.width}
    edit_record = None
    if edit is not None and args.invert:
        edit_record = {**edit.record(strength), "invert": True}
    elif edit is not None:
        size = edit_call_inputs(pipe, edit, args.height, args.width, len(scales))
        edit_record = edit.record(strength)
    out = Path(args.out)  # created with the first images: a command that fails before them leaves no folder behind
    steering_kwargs: dict[str, Any] = {}
    if vectors and config.negative == "subtract":  # a slider on a prompt that states an end: say so (a take-away removes)
        call = torch.tensor([[s * w for w in weights] for s in scales])
        if not subtracts([v for v, _ in vectors], call):
            for i, (v, _) in enumerate(vectors):
                if said := stated_note(v, args.prompt, call[:, i].tolist()):
                    print(f"note: {said}", file=sys.stderr)
    if len(vectors) == 1 and away is None and not auto and edit is None and any(s > 0 for s in scales):
        said = take_away_note(vectors[0][0], vectors[0][1], args.prompt, bundled_directions(args.model))
        if said:
            print(f"note: {said}", file=sys.stderr)
    if vectors:
        rows = [[s * w for w in weights] for s in scales]
        if away is not None:
            if any(s < 0 for s in scales):
                raise CLIError("--take-away goes with a positive --scale / --sweep: it replaces what the prompt says")
            rows = [[*r, pair_scales(s)[1]] for r, s in zip(rows, scales, strict=True)]
        steering_kwargs = dict(
            steering=[v for v, _ in vectors] + ([away[0]] if away else []),
            steering_scale=rows,
            **config.to_settings(),
        )
    device = pipe._execution_device
    gen_device = "cpu" if device.type == "mps" else device
    written, renamed = [], False
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # the library's advice (a slider flipped...): one line each
            warnings.simplefilter("always")
            for seed in range(args.seed, args.seed + args.num_images):
                generators = [torch.Generator(gen_device).manual_seed(seed) for _ in scales]
                if edit is not None and args.invert:  # the seed draws the inversion's noise; the replay draws none
                    inversion = invert_image(pipe, edit.prepared(args.height, args.width)["image"], args.prompt, negative_prompt=args.negative_prompt,
                                             num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators[0])
                    images = inversion.edit(pipe, rows=len(scales), **steering_kwargs).images
                else:
                    images = pipe(
                        [args.prompt] * len(scales),
                        negative_prompt=[args.negative_prompt] * len(scales) if args.negative_prompt else None,
                        num_inference_steps=args.steps,
                        guidance_scale=args.guidance,
                        generator=generators,
                        **size,
                        **steering_kwargs,
                    ).images
                out.mkdir(parents=True, exist_ok=True)
                shape = {"height": images[0].height, "width": images[0].width}  # what was generated, also when left to the model
                files = []  # (image, name, recipe)
                for row, (image, scale, tag) in enumerate(zip(images, scales, scale_tags(scales), strict=True)):
                    call = {"call": {"scales": scales, "row": row}} if len(scales) > 1 else {}  # a sweep's row: how it was made
                    files.append((image, f"seed{seed}{tag}.png", {**_recipe(args, pipe, vectors, config, scale, seed, weights, away, edit_record, away_fit), **shape, **call}))
                if args.sweep is not None:
                    grid = make_image_grid(list(images), rows=1, cols=len(images))
                    files.append((grid, f"seed{seed}_sweep.png", {**_recipe(args, pipe, vectors, config, None, seed, weights, away, edit_record, away_fit), **shape, "sweep": scales}))
                wanted = [out / name for _, name, _ in files]
                # free names (or this call's own earlier images), taken without replacing a file another run writes meanwhile
                paths = save_new_pngs([(image, out / name, recipe) for image, name, recipe in files])
                if paths != wanted and not renamed:  # said once: later seeds' renamed files follow from it
                    renamed = True
                    taken = next((w for w in wanted if os.path.lexists(w)), wanted[0])  # one that is there (not the run's first)
                    print(f"note: {out} holds other images named {taken.name} ...; these are written as {paths[0].name} ... "
                          "(nothing overwritten)", file=sys.stderr)
                written += paths
    finally:  # after the capture: diffusers' and torch's own notices shown as they were without it
        print_warnings(caught, others=True)
    for w in written:
        print(w)
    return 0


STEERING_FLAGS = {"scale": "--scale", "weights": "--weights", "layers": "--layers", "window": "--window", "branch": "--branch",
                  "normalize": "--normalize", "mode": "--mode", "removal_window": "--removal-window", "readers": "--readers",
                  "take_away": "--take-away"}


def unused_steering_options(args: argparse.Namespace) -> str | None:
    """The first steering option given on a command line without a direction (``--scale 5``, ``--layers foo``), or
    None; ``--negative`` given counts too."""
    given = [flag for key, flag in STEERING_FLAGS.items() if getattr(args, key, None) not in (None, False, [])]
    if getattr(args, "negative", None) is not None:
        given.append("--negative")
    return given[0] if given else None


def scale_tags(scales: list) -> list[str]:
    """The ``_scale+1`` part of each row's file name: 3 significant digits, more where rows would share a name
    (``--sweep=1,1.01``: ``+1``, ``+1.01``; ``1,1.0001``: ``+1``, ``+1.0001``), a row number where they are equal."""
    if scales == [None]:
        return [""]
    for digits in (3, 6, 17):
        tags = [f"_scale{s:+.{digits}g}" for s in scales]
        if len(set(tags)) == len(tags):
            return tags
    return [f"{t}_row{i}" if tags.count(t) > 1 else t for i, t in enumerate(tags)]


def take_away_note(vector, path: Path, prompt: str, bundled: dict[str, Path]) -> str | None:
    """A line suggesting ``--take-away`` when ``prompt`` states what ``vector`` replaces ("a red sneaker" with
    to_blue: to_red), found among the other files of ``path``'s folder and the model's bundled directions
    (`steer.take_away.take_away_candidates`, `suggested_take_aways`); None when nothing is stated against it."""
    from steer.take_away import suggested_take_aways, take_away_candidates, take_away_hint

    found = suggested_take_aways(vector, prompt, take_away_candidates(path, bundled))
    if not found:
        return None
    return f"{take_away_hint(prompt, vector, found)}; add --take-away {found[0][0]} (or auto) --fit to take it away as the edit is added"
