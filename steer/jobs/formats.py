"""Reading a jobs file of any supported kind: the one entry point over the JSONL/CSV reader (`steer.jobs.read`)
and the bounded YAML reader (`steer.jobs.yaml_reader`)."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

from steer.jobs.read import (
    MAX_FILE_BYTES,
    MAX_JOBS,
    MAX_YAML_BYTES,
    RawJob,
    _check_entry_count,
    _read_csv,
    _read_jsonl,
    show,
)
from steer.jobs.yaml_reader import read_yaml


def read_jobs(path: str | os.PathLike) -> list[RawJob]:
    """Parse a ``.jsonl``, ``.csv`` or ``.yaml``/``.yml`` jobs file into ``(line, fields | JobError)`` pairs.

    A malformed entry becomes a `JobError` carrying its line number; the other entries are unaffected. A file that
    cannot be read at all raises ValueError / OSError with one line.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise FileNotFoundError(f"jobs file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is {'a folder' if path.is_dir() else 'not a regular file'}, not a jobs file")
    if suffix not in (".jsonl", ".csv", ".yaml", ".yml"):
        raise ValueError(f"{path}: unknown jobs file type {show(suffix)}; use .jsonl, .csv or .yaml")
    limit = MAX_YAML_BYTES if suffix in (".yaml", ".yml") else MAX_FILE_BYTES
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        hint = "; a .jsonl file may hold up to 16 MiB" if limit == MAX_YAML_BYTES else ""
        raise ValueError(f"{path} is larger than {limit // 2**20} MiB, the limit for a {suffix} jobs file; split it{hint}")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if suffix in (".jsonl", ".csv"):
        _check_entry_count(data, MAX_JOBS + (suffix == ".csv"))
    try:
        if suffix == ".jsonl":
            return _read_jsonl(data)
        if suffix == ".csv":
            return _read_csv(data)
        return read_yaml(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
