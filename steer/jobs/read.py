"""Reading ``steer batch`` jobs files (.jsonl, .csv, .yaml) in bounded time and memory.

Every entry becomes ``(line, fields)`` or ``(line, JobError)``: a bad entry (malformed, invalid UTF-8, nested too
deeply, an integer too long to read, a duplicate key, an alias bomb, an unclosed CSV quote, an overlong line) fails
alone, with its line number, and the other entries still run. The file as a whole is refused with a one-line
ValueError only when it cannot be read at all: larger than the size limit, more than `MAX_JOBS` jobs, a YAML syntax
error, a CSV without a header, a bad YAML ``defaults``. Nothing an error message echoes is longer than `ECHO_CHARS`.
"""

from __future__ import annotations

import csv
import io
import json
import re
import reprlib
from collections.abc import Iterator
from typing import Any

# ----- limits (documented in the README's batch section) --------------------------------------------------------------
MAX_FILE_BYTES = 16 * 2**20  # a .jsonl / .csv jobs file
MAX_YAML_BYTES = 2 * 2**20  # a .yaml jobs file (PyYAML is ~10x slower per byte than json)
MAX_LINE_BYTES = 128 * 2**10  # one JSONL line / CSV row
MAX_JOBS = 100_000  # entries in one file
MAX_DEPTH = 16  # nesting of lists / mappings in one entry (a job needs 5)
MAX_YAML_NODES = 200_000  # YAML nodes as written
MAX_JOB_NODES = 20_000  # values in one YAML job once its aliases are expanded
MAX_YAML_EXPANDED = 1_000_000  # values in all YAML jobs once their aliases are expanded
ECHO_CHARS = 200  # the longest value an error message shows

JOB_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "seeds",
    "num_inference_steps",
    "guidance_scale",
    "height",
    "width",
    "directions",
    "steering_layers",
    "steering_window",
    "steering_branch",
    "steering_normalize",
    "steering_mode",
    "steering_strict",
    "steering_negative",
    "steering_removal_window",
    "steering_readers",
    "take_away",
    "take_away_fit",
    "sampler",
    "image",
    "mask",
    "strength",
    "invert",
    "name",
    "model",
)

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 6, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 80, 80, 40


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters (``...`` marks the cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def show(value: Any) -> str:
    """A bounded repr for error messages: shallow, short, never expands a shared (aliased) structure in full."""
    try:
        return clip(_REPR.repr(value))
    except Exception:  # noqa: BLE001 - e.g. an int too long to print
        return f"<{type(value).__name__}>"


class JobError(ValueError):
    """A job that cannot run: its line number and the reason (clipped to a bounded length)."""

    def __init__(self, line: int, reason: str):
        reason = clip(reason, 2 * ECHO_CHARS)
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


RawJob = tuple[int, "dict[str, Any] | JobError"]


# ======================================================================================================================
def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Physical lines (split at ``\\n`` only), numbered from 1, without their line ending; one at a time."""
    for line_no, raw in enumerate(io.BytesIO(data), start=1):
        yield line_no, raw.rstrip(b"\r\n")


def _decode_line(line_no: int, raw: bytes) -> str | JobError:
    if len(raw) > MAX_LINE_BYTES:
        return JobError(line_no, f"the line is {len(raw)} bytes long, over the {MAX_LINE_BYTES // 1024} KiB limit")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return JobError(line_no, f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})")


_ENTRY = re.compile(rb"^[ \t\r]*[^\s#]", re.MULTILINE)  # a line that is neither blank nor a comment


def _check_entry_count(data: bytes, limit: int) -> None:
    """Refuse a file of more than ``limit`` entries before parsing any (a scan at C speed)."""
    for n, m in enumerate(_ENTRY.finditer(data), start=1):
        if n > limit:
            line = data.count(b"\n", 0, m.start()) + 1
            raise ValueError(f"more than {MAX_JOBS} jobs (line {line}); split the file")


class _TooMany:
    """Counts entries; past `MAX_JOBS` the whole file is refused (bounded time and memory)."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, line_no: int) -> None:
        self.n += 1
        if self.n > MAX_JOBS:
            raise ValueError(f"more than {MAX_JOBS} jobs (line {line_no}); split the file")


# ----- JSONL ----------------------------------------------------------------------------------------------------------
class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"duplicate key {show(k)}")
        out[k] = v
    return out


def parse_json_value(line_no: int, text: str) -> Any:
    """One JSON value, or a `JobError`: malformed, nested too deeply, a number too long, a duplicate key."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as err:
        return JobError(line_no, f"malformed JSON ({err.msg} at column {err.colno})")
    except RecursionError:
        return JobError(line_no, f"nested deeper than {MAX_DEPTH} levels")
    except ValueError as err:  # a duplicate key, an integer of more than 4300 digits
        return JobError(line_no, str(err) if isinstance(err, _DuplicateKey) else f"unreadable value: {clip(str(err))}")
    if _too_deep(value):
        return JobError(line_no, f"nested deeper than {MAX_DEPTH} levels")
    return value


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > MAX_DEPTH:
                return True
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return False


def _read_jsonl(data: bytes) -> list[RawJob]:
    jobs: list[RawJob] = []
    count = _TooMany()
    for line_no, raw in _lines(data):
        stripped = raw.strip()
        if not stripped or stripped.startswith(b"#"):
            continue
        count(line_no)
        text = _decode_line(line_no, stripped)
        value = text if isinstance(text, JobError) else parse_json_value(line_no, text)
        if not isinstance(value, dict | JobError):
            value = JobError(line_no, f"a job must be a JSON object, got {type(value).__name__}")
        jobs.append((line_no, value))
    return jobs


# ----- CSV ------------------------------------------------------------------------------------------------------------
_CSV_INT = {"seed", "num_inference_steps", "height", "width"}
_CSV_FLOAT = {"guidance_scale", "strength"}
_CSV_BOOL = {"steering_normalize", "steering_strict", "take_away_fit", "invert"}
_CSV_LISTS = {"seeds": int, "steering_layers": str, "steering_window": float, "steering_removal_window": float, "steering_readers": str}


def _csv_row(line_no: int, text: str) -> list[str] | JobError:
    """One physical line as one CSV row: a quoted cell cannot span lines (an unclosed quote fails this line only)."""
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as err:
        if "unexpected end of data" in str(err):
            return JobError(line_no, "unclosed quote (a quoted cell must end on its own line)")
        return JobError(line_no, f"malformed CSV row ({clip(str(err))})")


def _read_csv(data: bytes) -> list[RawJob]:
    header: list[str] | None = None
    jobs: list[RawJob] = []
    count = _TooMany()
    for line_no, raw in _lines(data):
        if not raw.strip():
            continue
        text = _decode_line(line_no, raw)
        row = text if isinstance(text, JobError) else _csv_row(line_no, text)
        if isinstance(row, list) and (all(not c.strip() for c in row) or row[0].lstrip().startswith("#")):
            continue
        if header is None:
            if isinstance(row, JobError):
                raise ValueError(f"CSV header {row}")
            header = [h.strip() for h in row]
            unknown = [h for h in header if h not in JOB_FIELDS]
            if unknown:
                raise ValueError(f"CSV header line {line_no}: unknown column(s) {show(unknown)}; known: {list(JOB_FIELDS)}")
            if len(set(header)) != len(header):
                raise ValueError(f"CSV header line {line_no}: a column appears twice")
            continue
        count(line_no)
        if isinstance(row, JobError):
            jobs.append((line_no, row))
            continue
        if len(row) > len(header):
            jobs.append((line_no, JobError(line_no, f"{len(row)} cells but the header has {len(header)} columns")))
            continue
        try:
            fields = {h: _csv_cell(line_no, h, c.strip()) for h, c in zip(header, row, strict=False) if c.strip()}
        except JobError as err:
            jobs.append((line_no, err))
            continue
        except ValueError as err:
            jobs.append((line_no, JobError(line_no, str(err))))
            continue
        jobs.append((line_no, fields))
    if header is None and data.strip():
        raise ValueError("CSV jobs file has no header row")
    return jobs


_CSV_TEXT = {"prompt", "negative_prompt", "name", "image", "mask", "model", "sampler"}  # never JSON: "[masterpiece], a bag"


def _csv_cell(line_no: int, column: str, text: str) -> Any:
    """A CSV cell as a typed value: text in the text columns (a prompt may start with '[' or '{'), else JSON if it
    starts with '[' or '{', else by the column's type."""
    if column in _CSV_TEXT:
        return text
    if text[:1] in "[{":
        value = parse_json_value(line_no, text)
        if isinstance(value, JobError):
            raise JobError(line_no, f"{column}: {value.reason}")
        return value
    if column in _CSV_INT:
        return _int_text(column, text)
    if column in _CSV_FLOAT:
        return _float_text(column, text)
    if column in _CSV_BOOL:
        low = text.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{column} must be true or false, got {show(text)}")
        return low in ("true", "1", "yes")
    if column in _CSV_LISTS:
        cast = _CSV_LISTS[column]
        items = [t for t in re.split(r"[;,\s]+", text) if t]
        return [_int_text(column, t) if cast is int else _float_text(column, t) if cast is float else t for t in items]
    if column == "directions":
        return [_compact_direction(t.strip()) for t in text.split(";") if t.strip()]
    return text


def _is_revision(parts: list[str]) -> bool:
    """Whether ``REVISION`` or ``REVISION:file.safetensors`` (split on ``:``) reads as a Hub revision: a branch, tag or
    commit name that is not a number (``main``, ``v1.0``, ``0a1b2c3``), not a scale or a sweep."""
    if len(parts) == 2 and not parts[1].endswith(".safetensors"):
        return False
    return len(parts) <= 2 and bool(re.fullmatch(r"[\w.-]+", parts[0])) and not _is_number(parts[0])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _compact_direction(text: str) -> dict[str, Any]:
    """``path``, ``path@SCALE`` or ``path@LO:HI:N`` (a sweep); a Hub direction ``owner/name@REVISION[:file.safetensors]``
    (a revision is no number and no sweep) is all path."""
    path, _, spec = text.rpartition("@") if "@" in text else (text, "", "")
    if not spec:
        return {"path": path}
    parts = spec.split(":")
    of = f" of direction {show(path)}"  # what a bad number is: "directions: the scale of direction 'to_red' must be ..."
    if "/" in path and "@" not in path and _is_revision(parts):
        return {"path": text}
    if len(parts) == 1:
        return {"path": path, "scale": _float_text(f"directions: the scale{of}", parts[0])}
    if len(parts) == 3:
        lo, hi = (_float_text(f"directions: the sweep {end}{of}", t) for end, t in zip(("lo", "hi"), parts[:2], strict=True))
        return {"path": path, "sweep": [lo, hi, _int_text(f"directions: the sweep count{of}", parts[2])]}
    raise ValueError(f"directions: {show(text)} is not path, path@scale or path@lo:hi:n")


def _int_text(what: str, text: str) -> int:
    if len(text) > 40:  # int() of a 5,000-digit string raises; a 40-digit one is out of every range anyway
        raise ValueError(f"{what} must be an integer of at most 40 digits, got {show(text)}")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {show(text)}") from None


def _float_text(what: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what} must be a number, got {show(text)}") from None
