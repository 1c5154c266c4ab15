"""Checks of a ``steer batch`` job's fields: each returns the value or raises `JobError` naming the field."""

from __future__ import annotations

import math
from typing import Any

from steer.config import check_window as check_config_window
from steer.config import is_per_vector
from steer.jobs.read import JobError, show

MAX_PROMPT_CHARS = 10_000  # prompt and negative_prompt (CLIP reads 77 tokens)


def check_text(line: int, what: str, value: Any, required: bool = False) -> str | None:
    """A prompt: a string of at most `MAX_PROMPT_CHARS` characters that encodes as UTF-8 (no lone surrogate)."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise JobError(line, f"{what} is required and must be a string" if value is None else f"{what} must be a string, got {show(value)}")
    if len(value) > MAX_PROMPT_CHARS:
        raise JobError(line, f"{what} is {len(value)} characters long, over the {MAX_PROMPT_CHARS} limit")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise JobError(line, f"{what} is not valid Unicode text (a lone surrogate {value[err.start]!r} at character {err.start + 1})") from None
    return value


def check_int(line: int, what: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(line, f"{what} must be an integer, got {show(value)}")
    if not lo <= value <= hi:
        raise JobError(line, f"{what} must be in [{lo}, {hi}], got {show(value)}")
    return value


def check_float(line: int, what: str, value: Any, lo: float, hi: float) -> float:
    """A finite number in ``[lo, hi]`` (an int too large for a float is out of range, not an overflow)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float) and not math.isfinite(value)):
        raise JobError(line, f"{what} must be a finite number, got {show(value)}")
    if not lo <= value <= hi:
        if lo == 0 and value < 0:
            raise JobError(line, f"{what} must be >= 0, got {show(value)}")
        raise JobError(line, f"{what} must be in [{lo:g}, {hi:g}], got {show(value)}")
    return float(value)


def check_window_field(line: int, key: str, window: Any, count: int | None = None, allow_none: bool = False) -> Any:
    """A job's ``[start, end]`` window of fractions, or (with ``count`` directions) one such window per direction
    (``allow_none``: an entry may be null, that direction's own window); raises `JobError` naming ``key``."""
    if count is not None and is_per_vector(window):
        if len(window) != count:
            raise JobError(line, f"{key} holds {len(window)} window(s) for {count} direction(s): give one [start, end] for all, or one per direction")
        return tuple(None if (w is None and allow_none) else check_window_field(line, key, w) for w in window)
    if not isinstance(window, list | tuple) or len(window) != 2:
        raise JobError(line, f"{key} must be a pair [start, end] of fractions, got {show(window)}")
    window = tuple(check_float(line, key, w, 0.0, 1.0) for w in window)
    try:
        return check_config_window(window, key)
    except ValueError as err:
        raise JobError(line, str(err)) from None


def check_bool(line: int, what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise JobError(line, f"{what} must be true or false, got {show(value)}")
    return value


def check_name_list(line: int, value: Any, limit: int, message: str, min_chars: int = 0) -> list[str] | None:
    """None, or a name / glob given as a string or a non-empty list (or tuple) of at most ``limit`` strings of
    ``min_chars`` to 200 characters, as a list; else `JobError` with ``message`` (the value shown after it)."""
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not 0 < len(names) <= limit or not all(isinstance(x, str) and min_chars <= len(x) <= 200 for x in names):
        raise JobError(line, f"{message}, got {show(names)}")
    return list(names)
