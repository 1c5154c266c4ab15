"""The ``steer`` command line: learn, layers, inspect, directions, and the subcommands of the other modules (generate, detect, batch, reproduce, samplers, lab)."""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before anything imports transformers

from steer.cli.arguments import GUIDANCE, SEED, SIZE, STEPS, add_model_args, parse_learn_window  # noqa: E402
from steer.cli.generate import add_generate_parser  # noqa: E402
from steer.cli.inputs import (  # noqa: E402
    CLIError,
    add_sampler_argument,
    check_out_file,
    expand_items,
    print_warnings,
    unknown_direction,
)
from steer.config import BRANCHES  # noqa: E402
from steer.validation import MAX_IMAGES, bounded_int, clip, safetensors_path  # noqa: E402
from steer.window_choice import read_window_choice  # noqa: E402

# Modules that add their own subcommands through ``configure_parser(subparsers)``.
_TOP_LEVEL_PLUGINS = ("steer.cli.detect", "steer.cli.batch", "steer.cli.reproduce", "steer.cli.samplers")
_LAB_PLUGINS = ("steer.lab.train", "steer.lab.theory")


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``steer generate: error: ...``), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {clip(message, 500)} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------------------------------------------------
def cmd_learn(args: argparse.Namespace) -> int:
    from steer.assets import out_shadow_note
    from steer.calibrate import calibrated_for
    from steer.cli.loading import load_pipeline
    from steer.extract import is_image_item

    if args.no_flip and not args.two_sided:
        raise CLIError("--no-flip goes with --two-sided (a one-sided direction fits no flip)")
    check_out_file(args.out, safetensors=True)  # the inputs first: a bad one fails before the model loads
    if (shadows := out_shadow_note(args.out, args.model)) is not None:  # ./to_red.safetensors: to_red then names it
        print(f"note: {shadows}", file=sys.stderr)
    positive, negative = expand_items(args.positive, "--positive"), expand_items(args.negative, "--negative")
    if args.sampler is not None and positive and is_image_item(positive[0]):  # learned the same file under any sampler
        raise CLIError("--sampler does nothing for image sets: it sets the sampler of the learning and calibration samples, "
                       "and image sets are read, not sampled")
    pipe = load_pipeline(args.model, args.device, progress=False, loras=args.lora).with_sampler(args.sampler)
    with warnings.catch_warnings(record=True) as caught:  # learning's advice (a weak recipe...) as one line each
        warnings.simplefilter("always")
        vector = _learn(pipe, args, positive, negative)
    if args.sampler is not None and vector.metadata.get("source") == "prompts-text" and not vector.metadata.get("calibration"):
        raise CLIError("--sampler does nothing for the text mode without calibration: it reads the prompts and samples "
                       "nothing (give negative prompts to calibrate)")  # learned in no time: refused before writing
    out = Path(args.out).expanduser()  # where the checks looked (an unexpanded ~ was written under ./~)
    replaced = safetensors_path(out).exists()
    path = vector.save(out)
    print(f"{'replaced' if replaced else 'wrote'} {path}: {vector}")
    sides = [("", vector)]
    if vector.opposite is not None:  # a slider: what each end of it is, then each side's calibration
        two = vector.metadata.get("two_sided") or {}
        print(f"two-sided: +1 = the full edit toward {clip(repr((two.get('positive') or ['?'])[0]), 80)}, "
              f"-1 toward {clip(repr((two.get('negative') or ['?'])[0]), 80)}, 0 the prompt's own image")
        sides = [("+ side: ", vector), ("- side: ", vector.opposite)]
    for label, side in sides:
        _print_calibration(label, side.metadata, calibrated_for)
    if vector.opposite is not None:
        for label, side, other in (("+ side: ", vector, vector.opposite), ("- side: ", vector.opposite, vector)):
            _print_flip(label, side.metadata.get("flip"), other.metadata.get("flip"))
    print_warnings(caught)
    return 0


def _print_flip(label: str, flip: dict | None, other: dict | None) -> None:
    """How a slider's side turns a prompt that states the other side (`steer.sliders`), and the fit's advice."""
    if not flip:
        return
    stated = " / ".join(map(repr, (other or {}).get("words") or ["the other side"]))
    print(f"{label}flips prompts that state {clip(stated, 120)}: adds the side at {flip['strength']:.3g} x |scale| over "
          f"{flip['window'][0]:g},{flip['window'][1]:g} and takes {clip(stated, 120)} away (relative distance {flip['distance']:.2f})")
    if flip.get("advice"):
        print(f"warning: {label}{flip['advice']}", file=sys.stderr)


def _print_calibration(label: str, meta: dict, calibrated_for) -> None:
    """What a learned direction's calibration steered, how it sampled, and the window and route it chose."""
    opened = (meta.get("calibration") or {}).get("open_prompts")
    if opened:  # what the calibration steered toward the positives' own samples, and how it sampled them
        print(f"{label}calibrated on: {clip(', '.join(map(repr, opened)), 200)} (the positives with the attribute left open), "
              f"for {calibrated_for(meta)}")
    choice = read_window_choice(meta)
    if choice:  # --window auto: what the calibration compared
        print(f"{label}window: {choice.chosen[0]:g},{choice.chosen[1]:g} {choice.sentence()}")
    calibration = meta.get("calibration")
    if isinstance(calibration, dict) and calibration.get("strength_by") == "colour":  # an appearance edit's full edit
        from steer.calibrate import MARGIN

        try:
            strength, margin = float(calibration["strength"]), MARGIN * float(calibration["closest"])
        except (KeyError, TypeError, ValueError):  # a hand-edited record: nothing said of it
            strength = margin = None
        if strength is not None:
            print(f"{label}full edit: strength {strength:.3g}, where the samples' colour comes closest to the positives' own "
                  f"({MARGIN:g} x the latent distance's minimum would be {margin:.3g})")
    route = meta.get("route_choice")
    if route:  # --readers auto: what the calibration decided on
        read_by = "layout (a layout edit)" if route["readers"] else "all (an appearance edit)"
        print(f"{label}readers: {read_by}: the positives' samples keep {route['structure']:.2f} of the open samples' layout "
              f"(a layout edit below {route['below']:g})")


def _learn(pipe, args: argparse.Namespace, positive: list[str], negative: list[str]):
    from steer.errors import UnusedOptionError

    flags = {"num_samples": "--num-samples", "timestep": "--timestep", "image_prompts": "--image-prompt", "num_inference_steps": "--steps",
             "guidance_scale": "--guidance", "height": "--height", "width": "--width", "negative_prompt": "--negative-prompt"}
    try:
        return _learn_call(pipe, args, positive, negative)
    except UnusedOptionError as err:  # an option this learning does not use: named as the command line spells it
        if err.option not in flags:
            raise
        raise CLIError(flags[err.option] + str(err)[len(err.option):]) from None


def _learn_call(pipe, args: argparse.Namespace, positive: list[str], negative: list[str]):
    given = (("num_inference_steps", args.steps), ("guidance_scale", args.guidance), ("height", args.height), ("width", args.width),
             ("negative_prompt", args.negative_prompt))  # only those the user gave: one a learning does not use is refused
    return pipe.learn_direction(
        positive,
        negative or None,
        preset=args.preset,
        layers=args.layers,
        method=args.method,
        mode=args.source_mode,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        timestep=args.timestep,
        image_prompts=args.image_prompt,
        seed=args.seed,
        name=args.name,
        window=args.window,
        readers=args.readers,
        branch=args.branch,
        two_sided=args.two_sided,
        **({"flip_stated": False} if args.no_flip else {}),
        progress=True,
        **{k: v for k, v in given if v is not None},
    )


def cmd_layers(args: argparse.Namespace) -> int:
    from steer.cli.loading import load_pipeline
    from steer.denoisers import CONTEXT_SITE, adapter_for, default_layers, denoiser_of, layer_channels, list_layers

    pipe = load_pipeline(args.model, args.device, loras=args.lora)
    denoiser = denoiser_of(pipe)  # the UNet or the transformer, whichever family the pipeline is
    names = list_layers(denoiser, adapter_for(denoiser).listing_kinds)
    channels = layer_channels(denoiser, names)
    defaults = set(default_layers(denoiser))
    for n in names:  # the text-token site is learn_direction's default; the others marked are the paper's layers
        flag = "\tdefault (learn_direction)" if n == CONTEXT_SITE else ("\tpaper" if n in defaults else "")
        print(f"{n}\t{channels[n]}{flag}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from steer.assets import bundled_directions, find_direction
    from steer.cli.loading import check_model
    from steer.vectors import SteeringVector

    check_model(args.model)  # a folder that is not there: one line (the demo model's directions were used silently)
    found = find_direction(args.path, args.model)  # the user's file before a bundled name of the same name (said)
    if found.note is not None:
        print(f"note: {found.note}", file=sys.stderr)
    path = found.path if found.path is not None else args.path
    if found.path is None and not Path(path).expanduser().exists() and (bundled := bundled_directions(args.model)):
        raise unknown_direction(args.path, bundled, hub=False)  # neither a file nor a shipped name: say what the model ships
    v = SteeringVector.load(path)
    keys = ("method", "preset", "source", "pooling", "timestep", "positive", "negative", "recommended", "calibration", "window_choice",
            "route_choice", "fixed_tokens", "flip")
    summary = {"name": v.name, "path": str(path), "layers": v.channels(), "step_buckets": v.step_buckets, "norms": v.norms(),
               "digest": v.digest(), **{k: v.metadata.get(k) for k in keys}}
    if v.opposite is not None:  # a slider: its two prompt sets, and what a negative strength applies
        o = v.opposite
        summary["two_sided"] = v.metadata.get("two_sided")
        summary["opposite"] = {"name": o.name, "layers": o.channels(), "norms": o.norms(), **{k: o.metadata.get(k) for k in keys}}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_directions(args: argparse.Namespace) -> int:
    """The directions shipped for a model: name, what it learned, its recommended window and calibrated strength,
    the benchmark numbers it shipped with (open prompts at 1.0), and which cross-attentions read it when not all."""
    from steer.assets import DEFAULT_MODEL, DIRECTIONS_DIR, bundled_directions, directions_dir
    from steer.cli.loading import check_model
    from steer.vectors import SteeringVector

    check_model(args.model)  # as in cmd_inspect
    rows = []
    for name, path in bundled_directions(args.model).items():
        try:
            meta = SteeringVector.load(path).metadata
        except Exception as err:  # noqa: BLE001 - listed as unreadable, the rest still listed
            rows.append({"name": name, "path": str(path), "error": clip(f"{type(err).__name__}: {err}", 200)})
            continue
        rec, cal, bench = meta.get("recommended") or {}, meta.get("calibration") or {}, meta.get("benchmark") or {}
        rows.append({"name": name, "learned": meta.get("name"), "window": rec.get("window"), "readers": rec.get("readers"), "strength": cal.get("strength"),
                     "open_at_1": bench.get("open_at_1"), "passing_scales": bench.get("passing_scales"), "path": str(path),
                     **({"open_ends": bench["open_ends"]} if isinstance(bench.get("open_ends"), dict) else {}),
                     **({"falls_short": True} if bench.get("falls_short") is True else {})})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    folder = directions_dir(args.model)
    whose = "" if folder != DIRECTIONS_DIR or Path(args.model).expanduser().resolve() == DEFAULT_MODEL.resolve() else \
        " (no directions of its own: the embedded demo model's, which fit only that model)"
    print(f"{len(rows)} direction(s) for {args.model} in {folder}{whose}")
    for r in rows:
        if "error" in r:
            print(f"  {r['name']:<20} unreadable: {r['error']}")
            continue
        at1, ends = r["open_at_1"] or {}, r.get("open_ends") or {}
        bench = f"open prompts at 1.0: success {at1['success_at_1']:.2f}, kept {at1['kept_at_1']:.2f}" if "success_at_1" in at1 else "no benchmark recorded"
        bench += " (short of the pass)" if r.get("falls_short") else ""
        if {"+1", "-1"} <= set(ends):  # a slider: both ends
            bench = "a slider; open prompts " + ", ".join(f"at {e}: success {ends[e]['success']:.2f}, kept {ends[e]['kept']:.2f}" for e in ("+1", "-1"))
        window = ",".join(f"{w:g}" for w in r["window"]) if r["window"] else "-"
        strength = f"{r['strength']:.3f}" if isinstance(r["strength"], float) else "-"
        readers = f"; read by {clip(','.join(map(str, r['readers'])), 60)}" if isinstance(r["readers"], list) else ""
        print(f"  {r['name']:<20} {clip(str(r['learned']), 40):<24} window {window:<7} strength {strength:<6} {bench}{readers}")
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


def _versions() -> str:
    """``steer 0.1.0 (torch ..., diffusers ..., transformers ...)``: what a bug report needs, read without importing."""
    from importlib.metadata import PackageNotFoundError, version

    from steer import __version__

    found = []
    for name in ("torch", "diffusers", "transformers"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return f"steer {__version__} ({', '.join(found)})"


def build_parser() -> argparse.ArgumentParser:
    from steer.assets import default_model

    parser = Parser(prog="steer", description="Training-free representation steering for Stable Diffusion.")
    parser.add_argument("--version", action="version", version=_versions(), help="print steer's version and those of "
                        "the libraries its results depend on (for bug reports), then exit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("learn", help="learn a steering direction from prompts or images")
    add_model_args(p)
    p.add_argument("--positive", nargs="+", required=True,
                   help="prompt(s), .txt file(s) of prompts (one per line), image files or a directory of images")
    p.add_argument("--negative", nargs="+", default=None,
                   help="prompt(s), .txt file(s) of prompts (one per line), image files or a directory of images")
    p.add_argument("--preset", choices=("text", "casteer", "paper"), default=None,
                   help="text (default for prompts: text-token site, calibrated), casteer (per-step attn2 outputs) or paper (default for images)")
    p.add_argument("--method", choices=("mean", "mean_diff", "pca"), default=None, help="default: the preset's")
    p.add_argument("--source-mode", choices=("text", "trajectory", "fast", "reference"), default=None,
                   help="default: the preset's (text; trajectory for casteer; reference = generate + re-encode, the paper's)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="sites to learn at: module paths or globs, 'attn2' for every cross-attention output, or "
                        "'encoder_hidden_states' for the text tokens (default: the preset's; steer layers lists them)")
    p.add_argument("--num-samples", type=bounded_int(1, MAX_IMAGES), default=None,
                   help="samples per prompt set for the sampling source modes (default 16); refused for the text preset, which reads the prompts themselves")
    p.add_argument("--batch-size", type=bounded_int(1, 1024), default=8,
                   help="images per sampling call, calibration included (lower it if the model runs out of memory)")
    p.add_argument("--steps", type=STEPS, default=None,
                   help="denoising steps of every learning and calibration sample (default 20; prompt sets only: image sets are not sampled)")
    p.add_argument("--guidance", type=GUIDANCE, default=None,
                   help="sampling guidance (default 7.5; calibrate at the guidance you generate with; prompt sets only)")
    p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="sample the calibration (and every learning sample) with this negative prompt: calibrate with the one you generate with")
    p.add_argument("--timestep", type=bounded_int(0, 100_000), default=None,
                   help="the timestep images and re-encoded samples are read at (reference and image sources; default 10, the paper's)")
    p.add_argument("--image-prompt", default=None, help="prompt used with image sets (default: empty)")
    p.add_argument("--window", type=parse_learn_window, default=None,
                   help="learn and calibrate for this window, recorded as the direction's recommended one (default: the preset's; "
                        "for text with negatives 'auto': calibrate over 0,0.5 and 0,1 and keep the closer, at a plain calibration's cost)")
    p.add_argument("--readers", nargs="+", default=None,
                   help="which cross-attentions read a text direction, recorded as recommended: 'layout' (the down and mid "
                        "blocks': object/class edits keep the prompt's colour), 'detail' (the up blocks'), 'all', attn2 patterns, or "
                        "'auto' (the default for text directions: layout where the model's own prompt edit moves the layout, else all)")
    p.add_argument("--branch", choices=BRANCHES, default=None,
                   help="the CFG half the direction is calibrated on and recorded to steer: cond (+scale on the conditional "
                        "half), split (+ on it, - on the unconditional one), uncond or both (default: cond, split for "
                        "--two-sided and the casteer preset)")
    p.add_argument("--height", type=SIZE, default=None, help="sample size for learning and calibration (default: the model's)")
    p.add_argument("--width", type=SIZE, default=None, help="sample width (default: the model's)")
    p.add_argument("--seed", type=SEED, default=0, help="first seed of the learning and calibration samples (default 0)")
    add_sampler_argument(p, "learn and calibrate")
    p.add_argument("--two-sided", action="store_true",
                   help="learn a slider between the positives' attribute and the negatives' own ('a red t-shirt' vs 'a blue "
                        "t-shirt'): each side calibrated against the prompts with the attribute left open, so --scale 1 is the "
                        "full edit toward the positives and -1 toward the negatives (one-sided, -1 subtracts the direction)")
    p.add_argument("--no-flip", action="store_true",
                   help="with --two-sided: skip fitting how each side flips a prompt that states the other ('a red t-shirt' "
                        "slid to -1 turns blue: the side added, the other taken away; a few seconds a side): the slider then "
                        "only adds its sides")
    p.add_argument("--name", default=None, help="the name recorded in the file, shown in notes and the app (default: from the prompts, 'a blue sneaker <- a sneaker')")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.set_defaults(func=cmd_learn)

    add_generate_parser(sub)

    p = sub.add_parser("layers", help="list a model's hookable layers with channel counts")
    add_model_args(p)
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


# Options whose value is a comma-separated list of numbers that may start with a minus ("--sweep -1,1,5": a slider's
# strip): argparse reads "-1,1,5" as an option unless it is attached ("--sweep=-1,1,5"), so `main` attaches it.
_SIGNED_LIST_OPTIONS = ("--sweep",)


def _attach_signed_values(argv: list[str]) -> list[str]:
    out: list[str] = []
    for token in argv:
        if out and out[-1] in _SIGNED_LIST_OPTIONS and token[:1] == "-" and (token[1:2].isdigit() or token[1:2] == "."):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line parsed as `main` parses it (``sys.argv[1:]`` when None). An option the chosen (sub)command
    does not know is that command's one-line error with the closest option it has (it was ``steer: error:``, pointing
    at ``steer --help``, which lists no subcommand's options)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(_attach_signed_values(list(sys.argv[1:] if argv is None else argv)))
    if extra:
        chosen = _chosen_parser(parser, args)
        options = [o for action in chosen._actions for o in action.option_strings]
        first = next((e.split("=", 1)[0] for e in extra if e.startswith("-")), None)
        close = difflib.get_close_matches(first, options, n=1) if first else []
        chosen.error(f"unrecognized arguments: {' '.join(extra)}" + (f"; did you mean {close[0]}?" if close else ""))
    return args


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest subcommand parser the parsed ``args`` went through (``steer lab train``'s, ``steer generate``'s)."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        value = getattr(args, subs[0].dest, None) if subs else None
        if not subs or value not in subs[0].choices:
            return parser
        parser = subs[0].choices[value]


def _undecodable_text(args: argparse.Namespace) -> str | None:
    """The first prompt-like option (``prompt``, ``negative_prompt``, ``positive``, ``negative``) holding bytes the
    shell passed that are not UTF-8; None when all are text."""
    for name, value in vars(args).items():
        if not any(word in name for word in ("prompt", "positive", "negative")):
            continue
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError:
                    return name
    return None


def _printable_paths() -> None:
    """A path that is not UTF-8 (a folder named in another encoding) printed as its own bytes on stdout (what a script
    reading the paths needs) and escaped on stderr, not a UnicodeEncodeError after the work is done (the files were
    written and the command exited 2)."""
    for stream, errors in ((sys.stdout, "surrogateescape"), (sys.stderr, "backslashreplace")):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", None) == "strict":
            stream.reconfigure(errors=errors)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _printable_paths()
    args = parse_args(argv)
    from steer.denoisers import LayerError
    from steer.take_away import said_elsewhere
    from steer.vectors import ModelMismatchError, SteeringFileError

    command = " ".join(filter(None, ["steer", args.command, getattr(args, "lab_command", None)]))
    if (bad := _undecodable_text(args)) is not None:  # argv bytes that are not UTF-8 reach the tokenizer as surrogates
        print(f"{command}: error: --{bad.replace('_', '-')} is not UTF-8 text", file=sys.stderr)
        return 2
    try:
        with said_elsewhere():  # the commands say which direction to take away in their own words (`--take-away`)
            result = args.func(args)
    except (CLIError, LayerError, ModelMismatchError, SteeringFileError, FileNotFoundError, ValueError, OSError) as err:
        text = str(err).replace("pass steering_strict=False", "pass --no-strict") if isinstance(err, ModelMismatchError) else str(err)
        print(f"{command}: error: {clip(text, 1000) or type(err).__name__}", file=sys.stderr)
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
