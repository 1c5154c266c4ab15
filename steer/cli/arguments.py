"""The command line's shared argument types and option groups: numbers within steer's limits, windows, sweeps, and the
model and steering options `steer learn` and `steer generate` take."""

from __future__ import annotations

import argparse
import math

from steer.cli.inputs import window_fractions
from steer.config import NEGATIVES
from steer.jobs.plan import MAX_GUIDANCE, MAX_SCALE  # the command line's limits are steer batch's
from steer.validation import (
    BRANCHES,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MAX_SWEEP,
    MODES,
    bounded_float,
    bounded_int,
    short,
)


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


def add_model_args(p: argparse.ArgumentParser) -> None:
    from steer.assets import default_model

    p.add_argument("--model", default=default_model(), help="pipeline directory or hub id (default: the embedded demo model)")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    add_lora_argument(p)


def parse_lora(text: str):
    """``--lora FILE[:SCALE]``: a `steer.lora.LoraFile`, its file checked now (before the model loads)."""
    from steer.lora import LoraFile

    try:
        return LoraFile.parse(text).check()
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_lora_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", type=parse_lora, action="append", default=[], metavar="FILE[:SCALE]",
                   help="load a LoRA (.safetensors) into the model first, weighted by SCALE (default 1); repeat for more. "
                        "Recipes record each file's sha256, and steer reproduce loads them again")


# The default of an unset steering option (`apply_recommended`): the value all the directions record as recommended.
_RECORDED = ("the value all the --direction(s) record as recommended: {} for the shipped ones and those steer learn makes "
             "with its text (default) or casteer preset, {} for its paper preset; when they record none, or differ (with a warning), {}")


def add_steering_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layers", nargs="+", default=None,
                   help="restrict to these layers / glob patterns (default: the layers all the directions record as "
                        "recommended, else every layer of the direction)")
    p.add_argument("--window", type=parse_window, nargs="+", default=None,
                   help="start,end fractions of the run, one for all directions or one per --direction in order (default: "
                        "what the directions record, each its own when they differ; else 0.45,0.95)")
    p.add_argument("--branch", choices=BRANCHES, nargs="+", default=None,
                   help="CFG half to steer, one for all directions or one per --direction in order: cond (the paper's), "
                        "uncond, both, or split (+scale on cond, -scale on uncond) (default: what the --direction(s) record "
                        "as recommended, each its own when they differ: cond for the shipped ones and those steer learn "
                        "makes with its text (default) or paper preset, split for the shipped sliders and those steer "
                        "learn --two-sided or its casteer preset makes; cond for one recording none)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="scale in units of each layer's typical activation norm (default: what all the --direction(s) record as "
                        "recommended, off for the shipped and learned ones; else off)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="add (uniform, the paper's), weighted (by activation norm) or token (in units of each position's norm) "
                        f"(default: {_RECORDED.format('token', 'add', 'add')})")
    p.add_argument("--negative", choices=NEGATIVES, default=None,
                   help="what a negative scale does: subtract the direction (default), remove what the prompt carries along it, "
                        "or replace: remove it and turn the word the prompt states for it into the added direction's "
                        "(--take-away: replace)")
    p.add_argument("--removal-window", type=parse_window, nargs="+", default=None,
                   help="start,end fractions of the run in which --negative remove acts, one for all or one per direction "
                        "(default: what the directions recommend, from the window's start to the end of the run for "
                        "text directions; else --window)")
    p.add_argument("--readers", nargs="+", default=None,
                   help="which cross-attentions read a text direction: 'layout', 'detail' or attn2 patterns (default: what "
                        "the direction recommends, else all)")
    p.add_argument("--no-strict", dest="strict", action="store_false", help="allow a direction learned on other weights")
