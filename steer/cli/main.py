"""The ``steer`` command line: learn, generate, and the subcommands of the other modules (detect, batch, lab)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before anything imports transformers

from steer.cli.inputs import (  # noqa: E402
    CLIError,
    add_compile_argument,
    add_edit_arguments,
    add_sampler_argument,
    check_compile_backend,
    check_edit_steps,
    check_out_dir,
    check_out_file,
    expand_items,
    print_warnings,
    read_edit_arguments,
    unknown_direction,
    window_fractions,
)
from steer.config import (  # noqa: E402
    NEGATIVES,
    STEERING_DEFAULTS,
    SteeringConfig,
    agreed_recommendation,
    disagreement_note,
    recommended_settings,
    routes_record,
    window_record,
)
from steer.jobs.plan import MAX_GUIDANCE, MAX_SCALE  # noqa: E402  (the command line's limits are steer batch's)
from steer.validation import (  # noqa: E402
    BRANCHES,
    MAX_IMAGES,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MAX_SWEEP,
    MODES,
    bounded_float,
    bounded_int,
    clip,
    short,
)

# Modules that add their own subcommands through ``configure_parser(subparsers)``.
_TOP_LEVEL_PLUGINS = ("steer.cli.detect", "steer.cli.batch", "steer.cli.reproduce", "steer.cli.samplers")
_LAB_PLUGINS = ("steer.lab.train", "steer.lab.theory")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``steer generate: error: ...``), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {clip(message, 500)} (see {self.prog} --help)\n")


def _floats(text: str, n: int | None = None, what: str = "value") -> list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers, got {short(text)}") from None
    if n is not None and len(values) != n:
        raise argparse.ArgumentTypeError(f"{what} needs {n} comma-separated numbers, got {short(text)}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{what} must be finite numbers, got {short(text)}")
    return values


def parse_window(text: str) -> tuple[float, float]:
    try:
        return window_fractions([text], "--window")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_learn_window(text: str) -> tuple[float, float] | str:
    """``steer learn --window``: start,end, or ``auto`` (the calibration chooses among `steer.learn.AUTO_WINDOWS`)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return parse_window(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--window needs start,end (0 <= start < end <= 1) or auto, got {short(text)}") from None


def parse_sweep(text: str) -> list[float]:
    lo, hi, n = _floats(text, 3, "--sweep")
    if n != int(n) or not 2 <= n <= MAX_SWEEP:
        raise argparse.ArgumentTypeError(f"--sweep count must be an integer from 2 to {MAX_SWEEP}, got {n:g}")
    if max(abs(lo), abs(hi)) > MAX_SCALE:
        raise argparse.ArgumentTypeError(f"--sweep scales must be within +-{MAX_SCALE:g}, got {short(text)}")
    n = int(n)
    return [round(lo + (hi - lo) * i / (n - 1), 6) for i in range(n)]


STEPS = bounded_int(1, MAX_STEPS)
SEED = bounded_int(0, MAX_SEED)
SIZE = bounded_int(8, MAX_SIZE, multiple=8)
GUIDANCE = bounded_float(0.0, MAX_GUIDANCE)
SCALE = bounded_float(-MAX_SCALE, MAX_SCALE)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from steer.assets import default_model

    p.add_argument("--model", default=default_model(), help="pipeline directory or hub id (default: the embedded demo model)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")


# The default of an unset steering option (`apply_recommended`): the value all the directions record as recommended.
_RECORDED = ("the value all the --direction(s) record as recommended: {} for the shipped ones and those steer learn makes "
             "with its text (default) or casteer preset, {} for its paper preset; when they record none, or differ (with a warning), {}")


def _add_steering_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", nargs="+", default=None,
                   help="restrict to these layers / glob patterns (default: the layers all the directions record as "
                        "recommended, else every layer of the direction)")
    p.add_argument("--window", type=parse_window, nargs="+", default=None,
                   help="start,end fractions of the run, one for all directions or one per --direction in order (default: "
                        "what the directions record, each its own when they differ; else 0.45,0.95)")
    p.add_argument("--branch", choices=BRANCHES, default=None,
                   help="CFG half to steer: cond (the paper's), uncond, both, or split (+scale on cond, -scale on uncond) "
                        f"(default: {_RECORDED.format('split', 'cond', 'cond')})")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="scale in units of each layer's typical activation norm (default: what all the --direction(s) record as "
                        "recommended, off for the shipped and learned ones; else off)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="add (uniform, the paper's), weighted (by activation norm) or token (in units of each position's norm) "
                        f"(default: {_RECORDED.format('token', 'add', 'add')})")
    p.add_argument("--negative", choices=NEGATIVES, default="subtract",
                   help="what a negative scale does: subtract the direction (default) or remove what the prompt carries along it")
    p.add_argument("--removal-window", type=parse_window, nargs="+", default=None,
                   help="start,end fractions of the run in which --negative remove acts, one for all or one per direction "
                        "(default: what the directions recommend, from the window's start to the end of the run for "
                        "text directions; else --window)")
    p.add_argument("--readers", nargs="+", default=None,
                   help="which cross-attentions read a text direction: 'layout', 'detail' or attn2 patterns (default: what "
                        "the direction recommends, else all)")
    p.add_argument("--no-strict", dest="strict", action="store_false", help="allow a direction learned on other weights")


# ----------------------------------------------------------------------------------------------------------------------
def cmd_learn(args: argparse.Namespace) -> int:
    from steer.cli.loading import load_pipeline

    check_out_file(args.out)  # the inputs first: a bad one fails before the model loads
    positive, negative = expand_items(args.positive), expand_items(args.negative)
    pipe = load_pipeline(args.model, args.device, progress=False).with_sampler(args.sampler)
    with warnings.catch_warnings(record=True) as caught:  # learning's advice (a weak recipe...) as one line each
        warnings.simplefilter("always")
        vector = _learn(pipe, args, positive, negative)
    path = vector.save(args.out)
    print(f"wrote {path}: {vector}")
    choice = vector.metadata.get("window_choice")
    if choice:  # --window auto: what the calibration compared
        tried = ", ".join(f"{w[0]:g},{w[1]:g}: {d:.3f}" for w, d in zip(choice["windows"], choice["distances"], strict=True))
        print(f"window: {choice['chosen'][0]:g},{choice['chosen'][1]:g} (relative distance to the positives' samples {tried})")
    route = vector.metadata.get("route_choice")
    if route:  # --readers auto: what the calibration decided on
        read_by = "layout (a layout edit)" if route["readers"] else "all (an appearance edit)"
        print(f"readers: {read_by}: the positives' samples keep {route['structure']:.2f} of the open samples' layout (a layout edit below {route['below']:g})")
    print_warnings(caught)
    return 0


def _learn(pipe, args: argparse.Namespace, positive: list[str], negative: list[str]):
    return pipe.learn_direction(
        positive,
        negative or None,
        preset=args.preset,
        layers=args.layers,
        method=args.method,
        mode=args.source_mode,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        timestep=args.timestep,
        image_prompts=args.image_prompt,
        seed=args.seed,
        name=args.name,
        window=args.window,
        readers=args.readers,
        progress=True,
        **{k: v for k, v in (("height", args.height), ("width", args.width)) if v is not None},
    )


def _recipe(args: argparse.Namespace, pipe, vectors, config: SteeringConfig, scale: float | None, seed: int, weights: list[float], away=None, edit=None) -> dict[str, Any]:
    from steer import __version__
    from steer.samplers import sampler_name
    from steer.take_away import take_away_record

    taken = {"take_away": take_away_record(away[0], away[1], scale)} if away is not None else {}
    return {
        "steer_version": __version__,
        "model": str(args.model),
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "seed": seed,
        "num_inference_steps": args.steps,
        "guidance_scale": args.guidance,
        "sampler": sampler_name(pipe.scheduler),
        "height": args.height,
        "width": args.width,
        "directions": [{"name": v.name, "hash": v.digest(), "path": str(p), "weight": w} for (v, p), w in zip(vectors, weights, strict=True)],
        "scale": scale,
        "layers": list(config.layers) if config.layers is not None else None,
        "window": window_record(config.window),
        "branch": config.branch,
        "normalize": config.normalize,
        "mode": config.mode,
        "negative": config.negative,
        **({"removal_window": window_record(config.removal_window)} if config.removal_window is not None else {}),
        **({"readers": list(config.readers)} if config.readers is not None else {}),
        **routes_record([v for v, _ in vectors] + ([away[0]] if away is not None else []), config.readers),
        **taken,
        **({"edit": edit} if edit is not None else {}),
    }


_BUILTIN = {"branch": "cond", "normalize": False, "mode": "add", "layers": None, "scale": 1.0}


def apply_recommended(args: argparse.Namespace, vectors: list) -> SteeringConfig:
    """Fill unset steering options from what the directions' ``metadata["recommended"]`` agree on (all of them record
    one value), else the built-in defaults, and return the call's `SteeringConfig`: these options over what a pipeline
    call resolves for the others (the window when unset, and preserve_norm, which has no option). Directions that
    record different application settings the command leaves unset get a ``warning:`` line (`disagreement_note`)."""
    user_set = {f"steering_{key}" for key in ("branch", "normalize", "mode") if getattr(args, key, None) is not None}
    if len(vectors) > 1 and (note := disagreement_note(vectors, user_set)) is not None:
        print(f"warning: {note}", file=sys.stderr)
    for key, builtin in _BUILTIN.items():
        if getattr(args, key, None) is None:
            agreed = agreed_recommendation(vectors, key)
            setattr(args, key, agreed if agreed is not None else builtin)
    given = {f"steering_{key}": getattr(args, key) for key in ("layers", "branch", "normalize", "mode", "strict", "negative")}
    for key in ("window", "removal_window"):  # one for all directions, or one per direction (and take-away)
        windows = getattr(args, key, None)
        if windows is not None:
            if len(windows) not in (1, len(vectors)):
                flag = "--" + key.replace("_", "-")
                raise CLIError(f"{flag} takes one start,end for all directions or one per direction ({len(vectors)}), got {len(windows)}")
            given[f"steering_{key}"] = windows[0] if len(windows) == 1 else tuple(windows)
    if args.readers is not None:
        given["steering_readers"] = args.readers
    return SteeringConfig.from_settings({**STEERING_DEFAULTS, **recommended_settings(vectors), **given})


def cmd_generate(args: argparse.Namespace) -> int:
    import torch
    from diffusers.utils import make_image_grid

    from steer.assets import bundled_directions
    from steer.cli.loading import load_pipeline
    from steer.hub import is_hub_spec, resolve_direction
    from steer.images import edit_size
    from steer.pipelines.factory import editing_pipeline
    from steer.recipe import save_png
    from steer.replay import edit_call_inputs
    from steer.take_away import pair_scales
    from steer.vectors import SteeringVector

    def located(d: str) -> Path:  # a local file or folder, a bundled name, or a Hub repo owner/name[@rev][:file]
        bundled = bundled_directions(args.model)
        if d in bundled and not Path(d).exists():
            return bundled[d]
        if not is_hub_spec(d) and not Path(d).expanduser().exists() and bundled:  # say what the model ships
            raise unknown_direction(d, bundled)
        return resolve_direction(d)

    check_out_dir(args.out)
    edit = read_edit_arguments(args)  # the image to edit (and its mask), read before the model loads
    if edit is not None:
        args.height, args.width = edit_size(edit.image.size, args.height, args.width)
    vectors = [(SteeringVector.load(p), p) for p in map(located, args.direction or [])]
    if args.sweep is not None and not vectors:
        raise CLIError("--sweep needs a --direction")
    weights = args.weights if args.weights is not None else [1.0] * len(vectors)
    if len(weights) != len(vectors):
        raise CLIError(f"--weights takes one number per --direction: got {len(weights)} for {len(vectors)} direction(s)")
    if args.seed + args.num_images - 1 > MAX_SEED:
        raise CLIError(f"--seed {args.seed} + --num-images {args.num_images} runs past the largest seed {MAX_SEED}")
    away = None
    if args.take_away is not None:
        if len(vectors) != 1:
            raise CLIError("--take-away goes with one --direction (the one that replaces it)")
        away_path = located(args.take_away)
        away = (SteeringVector.load(away_path), away_path)
        args.negative = "remove"
    elif args.fit:
        raise CLIError("--fit fits a take-away: give --take-away too")
    user_set = {"scale": args.scale is not None or args.sweep is not None, "window": args.window is not None}  # before the recommended fill in
    config = apply_recommended(args, [v for v, _ in vectors] + ([away[0]] if away else []))
    check_compile_backend(args.compile)
    pipe = load_pipeline(args.model, args.device, progress=True)
    if args.compile:
        pipe.compile_unet(backend=args.compile)
    pipe = pipe.with_sampler(args.sampler)
    if args.fit:
        with warnings.catch_warnings(record=True) as caught:  # the fit's advice (a pair that may not flip...)
            warnings.simplefilter("always")
            fit = pipe.fit_take_away(vectors[0][0], away[0], guidance_scale=args.guidance)
        print(f"fit: strength {fit.strength:.3g}, window {fit.window[0]:g},{fit.window[1]:g} (relative distance {fit.distance:.2f})", file=sys.stderr)
        print_warnings(caught)
        if not user_set["scale"]:
            args.scale = round(fit.strength, 3)
        if not user_set["window"]:
            config = dataclasses.replace(config, window=fit.window)
    scales = args.sweep if args.sweep is not None else [args.scale if vectors else None]
    size: dict[str, Any] = {"height": args.height, "width": args.width}
    edit_record = None
    if edit is not None:  # the model's image-to-image or inpainting pipeline, sharing the loaded modules
        pipe = editing_pipeline(pipe, edit.task)
        strength = edit.strength if edit.strength is not None else inspect.signature(pipe.__call__).parameters["strength"].default
        check_edit_steps(strength, args.steps)  # the pipeline's default strength
        size = edit_call_inputs(pipe, edit, args.height, args.width, len(scales))
        edit_record = edit.record(strength)
    out = Path(args.out)  # created with the first images: a command that fails before them leaves no folder behind
    steering_kwargs: dict[str, Any] = {}
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
    written = []
    for seed in range(args.seed, args.seed + args.num_images):
        generators = [torch.Generator(gen_device).manual_seed(seed) for _ in scales]
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
        for row, (image, scale) in enumerate(zip(images, scales, strict=True)):
            tag = f"_scale{scale:+.3g}" if scale is not None else ""
            call = {"call": {"scales": scales, "row": row}} if len(scales) > 1 else {}  # a sweep's row: how it was made
            written.append(save_png(image, out / f"seed{seed}{tag}.png", {**_recipe(args, pipe, vectors, config, scale, seed, weights, away, edit_record), **shape, **call}))
        if args.sweep is not None:
            grid = make_image_grid(list(images), rows=1, cols=len(images))
            written.append(save_png(grid, out / f"seed{seed}_sweep.png", {**_recipe(args, pipe, vectors, config, None, seed, weights, away, edit_record), **shape, "sweep": scales}))
    for w in written:
        print(w)
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from steer.cli.loading import load_pipeline
    from steer.denoisers import CONTEXT_SITE, adapter_for, default_layers, denoiser_of, layer_channels, list_layers

    pipe = load_pipeline(args.model, args.device)
    denoiser = denoiser_of(pipe)  # the UNet or the transformer, whichever family the pipeline is
    names = list_layers(denoiser, adapter_for(denoiser).listing_kinds)
    channels = layer_channels(denoiser, names)
    defaults = set(default_layers(denoiser))
    for n in names:  # the text-token site is learn_direction's default; the others marked are the paper's layers
        flag = "\tdefault (learn_direction)" if n == CONTEXT_SITE else ("\tpaper" if n in defaults else "")
        print(f"{n}\t{channels[n]}{flag}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from steer.assets import bundled_directions
    from steer.vectors import SteeringVector

    bundled = bundled_directions(args.model)
    path = bundled[args.path] if args.path in bundled and not Path(args.path).exists() else args.path
    if not Path(path).expanduser().exists() and bundled:  # neither a file nor a shipped name: say what the model ships
        raise unknown_direction(args.path, bundled, hub=False)
    v = SteeringVector.load(path)
    summary = {"name": v.name, "path": str(path), "layers": v.channels(), "step_buckets": v.step_buckets, "norms": v.norms(), "digest": v.digest(), **{k: v.metadata.get(k) for k in ("method", "preset", "source", "pooling", "timestep", "positive", "negative", "recommended", "calibration", "window_choice", "route_choice", "fixed_tokens")}}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_directions(args: argparse.Namespace) -> int:
    """The directions shipped for a model: name, what it learned, its recommended window and calibrated strength,
    the benchmark numbers it shipped with (open prompts at 1.0), and which cross-attentions read it when not all."""
    from steer.assets import DEFAULT_MODEL, DIRECTIONS_DIR, bundled_directions, directions_dir
    from steer.vectors import SteeringVector

    rows = []
    for name, path in bundled_directions(args.model).items():
        try:
            meta = SteeringVector.load(path).metadata
        except Exception as err:  # noqa: BLE001 - listed as unreadable, the rest still listed
            rows.append({"name": name, "path": str(path), "error": clip(f"{type(err).__name__}: {err}", 200)})
            continue
        rec, cal, bench = meta.get("recommended") or {}, meta.get("calibration") or {}, meta.get("benchmark") or {}
        rows.append({"name": name, "learned": meta.get("name"), "window": rec.get("window"), "readers": rec.get("readers"), "strength": cal.get("strength"),
                     "open_at_1": bench.get("open_at_1"), "passing_scales": bench.get("passing_scales"), "path": str(path)})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    folder = directions_dir(args.model)
    whose = "" if folder != DIRECTIONS_DIR or Path(args.model).expanduser().resolve() == DEFAULT_MODEL.resolve() else \
        " (no directions of its own: the embedded demo model's, which fit only that model)"
    print(f"{len(rows)} direction(s) for {args.model} in {folder}{whose}")
    for r in rows:
        if "error" in r:
            print(f"  {r['name']:<16} unreadable: {r['error']}")
            continue
        at1 = r["open_at_1"] or {}
        bench = f"open prompts at 1.0: success {at1['success_at_1']:.2f}, kept {at1['kept_at_1']:.2f}" if "success_at_1" in at1 else "no benchmark recorded"
        window = ",".join(f"{w:g}" for w in r["window"]) if r["window"] else "-"
        strength = f"{r['strength']:.3f}" if isinstance(r["strength"], float) else "-"
        readers = f"; read by {clip(','.join(map(str, r['readers'])), 60)}" if isinstance(r["readers"], list) else ""
        print(f"  {r['name']:<16} {clip(str(r['learned']), 40):<24} window {window:<7} strength {strength:<6} {bench}{readers}")
    print("strength: the calibrated full edit the file holds (in units of each text token's norm), what steering_scale=1.0 "
          "applies; window: the share of the run it acts over")
    return 0


# ----------------------------------------------------------------------------------------------------------------------
def _load_plugin(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name == name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    from steer.assets import default_model

    parser = Parser(prog="steer", description="Training-free representation steering for Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("learn", help="learn a steering direction from prompts or images")
    _add_model_args(p)
    p.add_argument("--positive", nargs="+", required=True,
                   help="prompt(s), .txt file(s) of prompts (one per line), image files or a directory of images")
    p.add_argument("--negative", nargs="+", default=None,
                   help="prompt(s), .txt file(s) of prompts (one per line), image files or a directory of images")
    p.add_argument("--preset", choices=("text", "casteer", "paper"), default=None,
                   help="text (default for prompts: text-token site, calibrated), casteer (per-step attn2 outputs) or paper (default for images)")
    p.add_argument("--method", choices=("mean", "mean_diff", "pca"), default=None, help="default: the preset's")
    p.add_argument("--source-mode", choices=("text", "trajectory", "fast", "reference"), default=None,
                   help="default: the preset's (text; trajectory for casteer; reference = generate + re-encode, the paper's)")
    p.add_argument("--layers", nargs="+", default=None)
    p.add_argument("--num-samples", type=bounded_int(1, MAX_IMAGES), default=16)
    p.add_argument("--batch-size", type=bounded_int(1, 1024), default=8,
                   help="images per sampling call, calibration included (lower it if the model runs out of memory)")
    p.add_argument("--steps", type=STEPS, default=20)
    p.add_argument("--guidance", type=GUIDANCE, default=7.5, help="sampling guidance (calibrate at the guidance you generate with)")
    p.add_argument("--timestep", type=bounded_int(0, 100_000), default=10)
    p.add_argument("--image-prompt", default="", help="prompt used with image sets (default: empty)")
    p.add_argument("--window", type=parse_learn_window, default=None,
                   help="learn and calibrate for this window, recorded as the direction's recommended one (default: the preset's; "
                        "for text with negatives 'auto': calibrate over 0,0.5 and 0,1 and keep the closer, at a plain calibration's cost)")
    p.add_argument("--readers", nargs="+", default=None,
                   help="which cross-attentions read a text direction, recorded as recommended: 'layout' (the down and mid "
                        "blocks': object/class edits keep the prompt's colour), 'detail' (the up blocks'), 'all', attn2 patterns, or "
                        "'auto' (the default for text directions: layout where the model's own prompt edit moves the layout, else all)")
    p.add_argument("--height", type=SIZE, default=None, help="sample size for learning and calibration (default: the model's)")
    p.add_argument("--width", type=SIZE, default=None)
    p.add_argument("--seed", type=SEED, default=0)
    add_sampler_argument(p, "learn and calibrate")
    p.add_argument("--name", default=None)
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("generate", help="generate images, optionally steered; PNGs carry their recipe")
    _add_model_args(p)
    add_compile_argument(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--direction", nargs="+", default=None, help="direction file(s), bundled direction name(s) (those shipped for --model: its folder's directions/, else assets/directions) or Hub repo(s) owner/name[@revision][:file.safetensors]")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scale", type=SCALE, default=None, help="strength (default: the direction's recommended scale, else 1)")
    group.add_argument("--sweep", type=parse_sweep, default=None, metavar="LO,HI,N", help="N scales in one batched call, plus a grid")
    p.add_argument("--weights", type=SCALE, nargs="+", default=None,
                   help="one weight per --direction, multiplying the scale (default 1 each): --direction to_blue to_red --weights 1 -1 --negative remove")
    p.add_argument("--take-away", default=None, metavar="DIRECTION",
                   help="a direction whose excess in the prompt is removed as --direction is added (\"a red t-shirt\" -> blue: "
                        "--direction to_blue --take-away to_red); amount min(scale, 1), --negative remove")
    p.add_argument("--fit", action="store_true",
                   help="with --take-away: fit the strength and window from the model first (pipe.fit_take_away; a few "
                        "seconds), used unless --scale / --sweep / --window say otherwise")
    _add_steering_args(p)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--num-images", type=bounded_int(1, MAX_IMAGES), default=1, help="one per seed, starting at --seed")
    p.add_argument("--steps", type=STEPS, default=30)
    p.add_argument("--guidance", type=GUIDANCE, default=7.5)
    add_sampler_argument(p)
    p.add_argument("--height", type=SIZE, default=None)
    p.add_argument("--width", type=SIZE, default=None)
    add_edit_arguments(p)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("layers", help="list a model's hookable layers with channel counts")
    _add_model_args(p)
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("inspect", help="print a direction file's layers and metadata")
    p.add_argument("path", help="a direction file, or the name of one shipped for --model")
    p.add_argument("--model", default=default_model(), help="whose bundled directions a name refers to (default: the embedded demo model)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("directions", help="list the directions shipped for a model (bundled names for --direction)")
    p.add_argument("--model", default=default_model(), help="model folder (default: the embedded demo model)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_directions)

    for name in _TOP_LEVEL_PLUGINS:
        module = _load_plugin(name)
        if module is not None and hasattr(module, "configure_parser"):
            module.configure_parser(sub)

    lab = sub.add_parser("lab", help="train the lab's small models and run the theory experiments")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    for name in _LAB_PLUGINS:
        module = _load_plugin(name)
        if module is not None and hasattr(module, "configure_parser"):
            module.configure_parser(lab_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    from steer.denoisers import LayerError
    from steer.vectors import ModelMismatchError, SteeringFileError

    command = " ".join(filter(None, ["steer", args.command, getattr(args, "lab_command", None)]))
    try:
        result = args.func(args)
    except (CLIError, LayerError, ModelMismatchError, SteeringFileError, FileNotFoundError, ValueError, OSError) as err:
        print(f"{command}: error: {clip(str(err), 1000) or type(err).__name__}", file=sys.stderr)
        return 2
    except RecursionError:
        print(f"{command}: error: an input is nested too deeply", file=sys.stderr)
        return 2
    except SystemExit as exc:  # sys.exit("message") from a command (the lab's checks): a user error, one line
        if isinstance(exc.code, str):
            print(f"{command}: error: {clip(exc.code, 1000)}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    # a command returns its exit status, or None / a result (the lab's statistics dict) for success
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
