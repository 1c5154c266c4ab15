"""Shared ground of the Gradio demo's helpers: request limits, `UserError`, validators, pipeline facts, and the
text cleaning every user- or file-supplied string goes through before it is shown.

Never imports gradio (see `steer.app.helpers`, which re-exports everything here).
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from steer.denoisers import LayerError, denoiser_of, list_layers
from steer.vectors import ModelMismatchError, SteeringFileError

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (the app is meant to be shared)."""

    max_steps: int = 100
    max_strip: int = 9
    max_size: int = 1024
    min_size: int = 16
    max_prompt_chars: int = 300
    max_guidance: float = 30.0
    max_strength: float = 50.0
    slider_strength: float = 10.0  # the strength slider's range (a recommended scale outside it is not applied)
    max_seed: int = 2**31 - 1
    max_learn_prompts: int = 32
    max_learn_samples: int = 64
    max_learn_images: int = 64
    max_learn_steps: int = 50
    # Any single uploaded file (gradio's `max_file_size`, refused while it streams in: HTTP 413, nothing kept).
    max_upload_bytes: int = 20 * 2**20
    # A direction file: all layers of an SDXL UNet in fp32 plus its metadata are well under 2 MiB.
    max_direction_bytes: int = 8 * 2**20
    # An image for the Learn tab: decoded size cap (a 48 MP photo passes; larger ones are shrunk after checking).
    max_image_pixels: int = 50_000_000
    max_image_side: int = 2048  # images are shrunk to this side on load (they are resized to the model's size anyway)
    max_shown_chars: int = 80  # a name from a file or a prompt, as shown in the UI
    max_message_chars: int = 500  # one error message


LIMITS = Limits()


class UserError(ValueError):
    """Something the user can fix; the message is shown as is in the UI."""


# Errors whose message is meant for people: shown in the UI as is.
READABLE_ERRORS = (UserError, SteeringFileError, ModelMismatchError, LayerError, ValueError, FileNotFoundError)

# What reading a hand-edited or hostile file can raise besides its own error classes (a field of the wrong type,
# a missing key, nesting deeper than the JSON parser allows, ...): the app turns these into one readable line.
MALFORMED_FILE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
    IndexError,
    RecursionError,
    OverflowError,
    UnicodeError,
    OSError,
)


# ----------------------------------------------------------------------------------------------------------------------
# Text shown in the UI: every string that comes from a file, an upload or a user is cleaned
# ----------------------------------------------------------------------------------------------------------------------
# ANSI / VT escape sequences (CSI, OSC, two-character ESC sequences), removed whole.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
# Remaining C0/C1 controls, DEL, zero-width and bidirectional-override characters, line/paragraph separators,
# BOM, interlinear annotations, and lone surrogates (which JSON can carry but UTF-8 cannot encode).
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]")
# Markdown punctuation that could start emphasis, code, a link or an image inside a status line.
_MARKDOWN = re.compile(r"([\\`*\[\]~|])")
_SURROGATE = re.compile("[\ud800-\udfff]")
# Text that can go inside a code span unchanged.
_CODE_SAFE = re.compile(r"[A-Za-z0-9_.:/+\-, ()=#@?]*")


def clean_text(value: Any, limit: int | None = None) -> str:
    """``value`` as one line of plain text: escape sequences and control / invisible characters removed,
    whitespace collapsed, cut to ``limit`` characters (default `Limits.max_shown_chars`) with an ellipsis."""
    limit = LIMITS.max_shown_chars if limit is None else limit
    text = value if isinstance(value, str) else repr(value) if not isinstance(value, int | float) else str(value)
    text = text[: 4 * limit + 64]  # bound the work on a hostile multi-megabyte value
    text = _INVISIBLE.sub(" ", _ANSI.sub("", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"


def shown(value: Any, limit: int | None = None) -> str:
    """``repr(value)`` cleaned and cut (for "got ..." in messages; a hostile value never comes back whole)."""
    return clean_text(repr(value) if not isinstance(value, int) or abs(value) < 10**40 else "a huge number", limit)


def md_text(value: Any, limit: int | None = None) -> str:
    """`clean_text`, then safe inside Markdown / HTML: ``<``, ``>`` and ``&`` become entities and Markdown
    punctuation is backslash-escaped, so a name like ``<script>`` or ``[x](javascript:...)`` shows as text."""
    return _MARKDOWN.sub(r"\\\1", html.escape(clean_text(value, limit), quote=False))


def md_code(value: Any, limit: int | None = None) -> str:
    """``value`` in a Markdown code span when it is plain (layer names, method names), else as `md_text`
    (a code span shows entities and backslashes literally, so it is only used for text that needs neither)."""
    text = clean_text(value, limit)
    return f"`{text}`" if text and _CODE_SAFE.fullmatch(text) else md_text(text, limit)


def html_text(value: Any, limit: int | None = None) -> str:
    """`clean_text`, HTML-escaped (for gradio's toasts, which render HTML)."""
    return html.escape(clean_text(value, limit), quote=False)


def readable(err: BaseException) -> str:
    """A one-line message for ``err`` (no traceback), cut to `Limits.max_message_chars`."""
    text = str(err) if isinstance(err, READABLE_ERRORS) else f"internal error ({type(err).__name__}): {err}"
    return clean_text(text or type(err).__name__, LIMITS.max_message_chars)


# ----------------------------------------------------------------------------------------------------------------------
# Small validators
# ----------------------------------------------------------------------------------------------------------------------
def check_prompt(text: str | None, what: str = "prompt", required: bool = True) -> str:
    """Strip ``text``; enforce the length cap and (if ``required``) non-emptiness."""
    text = (text or "").strip()
    if _SURROGATE.search(text):  # JSON can carry them; the tokenizer (and a PNG's text chunk) cannot
        raise UserError(f"the {what} contains invalid characters (unpaired UTF-16 surrogates)")
    if required and not text:
        raise UserError(f"the {what} is empty")
    if len(text) > LIMITS.max_prompt_chars:
        raise UserError(f"the {what} has {len(text)} characters; at most {LIMITS.max_prompt_chars} are allowed")
    return text


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """``value`` as an int within ``[low, high]``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a number, got {shown(value)}") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{what} must be a whole number, got {shown(value)}")
    if not low <= number <= high:
        raise UserError(f"{what} must be between {low} and {high}, got {shown(int(number))}")
    return int(number)


def check_float(value: Any, what: str, low: float, high: float) -> float:
    """``value`` as a finite float within ``[low, high]``."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a number, got {shown(value)}") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise UserError(f"{what} must be between {low} and {high}, got {shown(value)}")
    return number


def check_flag(value: Any, what: str) -> bool:
    """A checkbox's value: a bool (None: unticked). The API passes what a client sends: ``bool("false")`` was True."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise UserError(f"{what} must be true or false, got {shown(value)}")
    return value


def check_size(value: Any, what: str) -> int:
    """An image side: a multiple of 8 within the caps."""
    size = check_int(value, what, LIMITS.min_size, LIMITS.max_size)
    if size % 8:
        raise UserError(f"{what} must be a multiple of 8, got {size}")
    return size


def check_choice(value: Any, what: str, options: Sequence[str]) -> str:
    if value not in options:
        raise UserError(f"{what} must be one of {list(options)}, got {shown(value)}")
    return str(value)


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe version of ``text``."""
    return (re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.") or "direction")[:limit]


# ----------------------------------------------------------------------------------------------------------------------
# Pipeline facts
# ----------------------------------------------------------------------------------------------------------------------


def layer_names(pipe) -> list[str]:
    """The hookable layers, input side to output side (the layer slider walks these)."""
    return list_layers(denoiser_of(pipe))


def sampler_choices(pipe) -> list[tuple[str, str]]:
    """The sampler picker's (label, value) choices: the model's own scheduler (value ``""``), then every named sampler
    that fits it (`steer.samplers.sampler_names`)."""
    from steer.samplers import sampler_names

    own = f"the model's own ({type(pipe.scheduler).__name__})"
    return [(own, ""), *((name, name) for name in sampler_names(pipe.scheduler))]


def check_sampler_choice(pipe, value: Any) -> str:
    """The picked sampler's canonical name, or ``""`` for the model's own; raises `UserError` for one that does not
    fit the model (a hand-made API call)."""
    if value is None or value == "":
        return ""
    from steer.samplers import check_sampler

    try:
        return check_sampler(pipe.scheduler, value)
    except ValueError as err:
        raise UserError(str(err)) from None


def sampling_pipe(pipe, sampler: str):
    """``pipe`` sampling with ``sampler`` (`steer.samplers.with_sampler`; ``""``: ``pipe`` itself)."""
    from steer.samplers import with_sampler

    return with_sampler(pipe, sampler or None)


def model_name(pipe) -> str:
    return str(getattr(pipe, "name_or_path", "") or getattr(pipe.config, "_name_or_path", "") or "in-memory pipeline")
