"""Checked safetensors files: tensors plus a JSON header with format name, version and a content digest.

Directions and detectors share this format; reading never unpickles and every failure names the file and the
problem (missing, truncated, foreign, newer format, edited contents).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from steer.errors import UnsafePathError
from steer.validation import MAX_HEADER_CHARS, MAX_METADATA_DEPTH, SchemaError, check_header_common, clip, short


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], replace: bool = True) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a fresh temporary file next to it (created
    exclusively under an unpredictable name, so nothing planted in the folder is followed), which is flushed to disk
    and then replaces ``path`` (``replace=False``: takes the name only while it is free, else `FileExistsError`, so a
    file another process wrote since the caller looked is never replaced). A ``path`` that is a symlink is refused
    (`UnsafePathError`) rather than written through or replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        raise UnsafePathError(f"refusing to write {path}: it is a symbolic link")
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        os.close(fd)
        write(tmp)
        if tmp.is_symlink():  # swapped under us: never replace the target with a link
            raise UnsafePathError(f"refusing to write {path}: its temporary file was replaced by a link")
        os.chmod(tmp, 0o644)  # what a plain open() gives under the usual umask (mkstemp makes 0600; writers recreate)
        _fsync(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))  # the data on disk before the name points at it
        if replace:
            os.replace(tmp, path)
        else:
            link_no_clobber(tmp, path)
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))  # and the rename itself
    finally:
        tmp.unlink(missing_ok=True)
    return path


class GrowingFile:
    """A text file written a part at a time that survives an interruption: the parts go to a partial file next to
    ``path`` (created exclusively under its own name, ``path.name.partial-XXXX``, so nothing planted is followed and
    two runs never share one), each flushed to disk as it is added; `finish` gives it the name ``path`` (a symlink
    there is refused). A run that stops before `finish` leaves the partial file holding every part added, ``partial``
    names it (it is removed when nothing was added).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"{self.path.name[:64]}.partial-", dir=self.path.parent)
        self.partial = Path(name)
        self._file = os.fdopen(fd, "w", encoding="utf-8")
        self.parts = 0

    def add(self, text: str) -> None:
        """Append ``text`` and flush it to disk."""
        self._file.write(text)
        self._file.flush()
        os.fsync(self._file.fileno())
        self.parts += 1

    def finish(self) -> Path:
        """The whole file under its name (replacing a file there, never a symlink)."""
        self._file.close()
        if self.path.is_symlink():
            raise UnsafePathError(f"refusing to write {self.path}: it is a symbolic link (the report is in {self.partial})")
        os.chmod(self.partial, 0o644)
        os.replace(self.partial, self.path)
        _fsync(self.path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        return self.path

    def abandon(self) -> Path | None:
        """Stop here: the partial file when it holds something (kept for the user), else None (removed)."""
        self._file.close()
        if self.parts:
            os.chmod(self.partial, 0o644)  # as the finished file would be (mkstemp makes 0600)
            return self.partial
        self.partial.unlink(missing_ok=True)
        return None


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:  # a folder that cannot be opened for reading (some platforms): the rename stays unsynced
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system without fsync on folders
        pass
    finally:
        os.close(fd)


def link_no_clobber(tmp: str | os.PathLike, name: str | os.PathLike, dir_fd: int | None = None) -> None:
    """Give ``tmp`` the name ``name`` unless something is there already (a hard link, which never replaces:
    `FileExistsError`). Where the file system has no hard links, the name is claimed with an exclusive create first."""
    try:
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV):
            raise
        # no hard links here (vfat, exFAT, some network mounts): claim the name exclusively, then fill it
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
        os.close(os.open(name, flags, 0o644, dir_fd=dir_fd))  # FileExistsError when it is taken
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names and fp32 bytes of ``tensors``, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def write_checked(path: Path, tensors: dict[str, torch.Tensor], key: str, header: dict[str, Any]) -> Path:
    """Write ``tensors`` with ``header`` (+ digest) as JSON under metadata ``key`` (`atomic_write`)."""
    header = {**header, "digest": tensor_digest(tensors)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={key: json.dumps(header)}))


def is_pickle(path: Path) -> bool:
    """Whether ``path`` starts like a file `torch.save` writes (a zip holding ``data.pkl``, or a bare pickle of
    protocol 2-5): the first bytes only, never unpickled."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return (head.startswith(b"PK\x03\x04") and b".pkl" in head) or (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5)


def read_checked(
    path: Path, key: str, format_name: str, format_version: int, error: type[Exception], what: str, contents: str = "tensor contents"
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a file written by `write_checked`; raise ``error`` naming the file and the problem."""
    if not path.is_file():
        raise error(f"{what} file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        if is_pickle(path):  # what the file is and what to do, not the safetensors parser's complaint
            raise error(f"{path} is not a readable safetensors file: it is a PyTorch pickle (.pt, torch.save), which steer "
                        f"never unpickles; save the {what} as .safetensors") from None
        raise error(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None
    if key not in raw:
        raise error(f"{path} is a safetensors file but not a {what} (no '{key}' header)")
    text = raw[key]
    if len(text) > MAX_HEADER_CHARS:
        raise error(f"{path}: the {what} metadata is {len(text)} characters long (limit {MAX_HEADER_CHARS})")
    try:
        header = json.loads(text)
    except ValueError as err:  # JSONDecodeError, or an integer beyond Python's digit limit
        raise error(f"{path}: the {what} metadata is not valid JSON ({clip(str(err))})") from None
    except RecursionError:
        raise error(f"{path}: the {what} metadata is nested too deeply (limit {MAX_METADATA_DEPTH} levels)") from None
    if not isinstance(header, dict) or header.get("format") != format_name:
        found = header.get("format") if isinstance(header, dict) else header
        raise error(f"{path}: unknown format {short(found)} (expected {format_name!r})")
    try:
        check_header_common(header, format_version)
    except SchemaError as err:
        raise error(f"{path}: {err}") from None
    if header.get("digest") != tensor_digest(tensors):
        raise error(f"{path}: {contents} do not match the recorded digest (the file was edited or damaged)")
    return header, tensors
