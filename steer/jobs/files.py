"""The output folder of ``steer batch``: written without following symlinks, locked, temp files named by run.

* Everything under ``--out`` is reached from a descriptor of the folder itself, one component at a time with
  ``O_NOFOLLOW``: a symlinked subfolder, manifest or output name is refused with one line (`UnsafePathError`), never
  written through. (``--out`` itself is the user's choice and may be a symlink.)
* ``OUT/.steer-batch.lock`` is held (``flock``, non-blocking) for the whole run: a second ``steer batch`` on the same
  folder stops at once with `OutputBusyError` (exit status 2) instead of writing the same images twice.
* A temp file is named ``.NAME.steer-tmp-RUNID``; a run removes only its own, and those of the run recorded in the
  lock file, which is dead once its lock could be taken (a killed run). Files of the user's are never removed.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steer.errors import OutputBusyError, UnsafePathError  # noqa: F401  (re-exported)
from steer.files import link_no_clobber

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.jsonl"
LOCK_FILE = ".steer-batch.lock"
TEMP_TAG = ".steer-tmp-"
MAX_MANIFEST_LINE = 4 * 2**20
_RUN_ID = re.compile(r"[0-9a-f]{12}")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR = getattr(os, "O_DIRECTORY", 0)
_READ = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)  # a FIFO planted there cannot block a read


def new_run_id() -> str:
    return secrets.token_hex(6)


def safe_parts(rel: str) -> list[str]:
    """``rel`` ('/'-separated, relative) as its parts; ValueError for an absolute path or ``..``."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"not a safe relative path: {rel[:200]!r}")
    return parts


class OutDir:
    """A descriptor of the output folder and symlink-free operations below it."""

    def __init__(self, path: str | os.PathLike, run_id: str, create: bool = True):
        self.path = Path(path)
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        self.fd = -1
        self._lock_fd: int | None = None
        self.previous_run: str | None = None  # the run that held the lock before this one
        self.fd = os.open(self.path, os.O_RDONLY | _DIR | _CLOEXEC)
        self.run_id = run_id

    def close(self) -> None:
        self.unlock()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OutDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- paths --------------------------------------------------------------------------------------------------
    def _unsafe(self, parts: list[str], what: str = "is a symlink or not a folder") -> UnsafePathError:
        return UnsafePathError(f"{self.path.joinpath(*parts)} {what}; steer batch does not write through it")

    def parent(self, rel: str, create: bool) -> tuple[int, str]:
        """An open descriptor of ``rel``'s folder (the caller closes it) and its last part; symlinks refused."""
        parts = safe_parts(rel)
        fd = os.dup(self.fd)
        try:
            for i, part in enumerate(parts[:-1]):
                flags = os.O_RDONLY | _DIR | _NOFOLLOW | _CLOEXEC
                try:
                    new = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass
                    try:
                        new = os.open(part, flags, dir_fd=fd)
                    except OSError as err:
                        raise self._unsafe(parts[: i + 1]) from err
                except OSError as err:
                    if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise self._unsafe(parts[: i + 1]) from None
                    raise
                os.close(fd)
                fd = new
            return fd, parts[-1]
        except BaseException:
            os.close(fd)
            raise

    def lstat(self, rel: str) -> os.stat_result | None:
        """``rel``'s own status (a symlink is not followed); None when missing."""
        try:
            fd, name = self.parent(rel, create=False)
        except FileNotFoundError:
            return None
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)

    def read_bytes(self, rel: str, limit: int | None = None) -> bytes | None:
        """The bytes of the regular file ``rel``; None when missing, a symlink, under a symlink or not a file."""
        try:
            fd, name = self.parent(rel, create=False)
        except (OSError, ValueError):
            return None
        try:
            f = os.open(name, _READ, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        with os.fdopen(f, "rb") as file:
            if not stat.S_ISREG(os.fstat(f).st_mode):
                return None
            return file.read() if limit is None else file.read(limit)

    # ----- writes -------------------------------------------------------------------------------------------------
    def temp_name(self, name: str) -> str:
        return f".{name[:200]}{TEMP_TAG}{self.run_id}"

    def write_new(self, rel: str, data: bytes) -> None:
        """Create ``rel`` with ``data`` (fsync-ed, temp file then link): FileExistsError if anything is there."""
        self._write(rel, data, replace=False)

    def write_replace(self, rel: str, data: bytes) -> None:
        """Atomically replace the regular file ``rel`` (or create it); a symlink there is refused."""
        self._write(rel, data, replace=True)

    def _write(self, rel: str, data: bytes, replace: bool) -> None:
        fd, name = self.parent(rel, create=True)
        tmp = self.temp_name(name)
        try:
            try:
                current = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and (not replace or not stat.S_ISREG(current.st_mode)):
                if stat.S_ISLNK(current.st_mode):
                    raise self._unsafe(rel.split("/"), "is a symlink")
                raise FileExistsError(errno.EEXIST, f"{self.path / rel} already exists")
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=fd)
            try:
                with os.fdopen(out, "wb", closefd=False) as f:
                    f.write(data)
                os.fsync(out)
            finally:
                os.close(out)
            if replace:
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            else:
                link_no_clobber(tmp, name, fd)
        finally:
            try:
                os.unlink(tmp, dir_fd=fd)
            except FileNotFoundError:
                pass
            os.close(fd)

    def unlink(self, rel: str) -> None:
        fd, name = self.parent(rel, create=False)
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def open_append(self, name: str) -> AppendFile:
        """``name`` (directly in the folder) opened for appending; a symlink or non-file there is refused."""
        try:
            fd = os.open(name, os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=self.fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EMLINK):
                raise self._unsafe([name], "is a symlink") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._unsafe([name], "is not a regular file")
        return AppendFile(fd)

    def check_file(self, name: str) -> None:
        """Refuse (one line) when ``name`` exists in the folder but is a symlink or not a regular file."""
        st = self.lstat(name)
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise self._unsafe([name], "is a symlink" if stat.S_ISLNK(st.st_mode) else "is not a regular file")

    def files(self) -> Iterator[tuple[str, str]]:
        """``(folder relative to out, file name)`` of the folder's tree, symlinked folders not entered."""
        for root, _dirs, names, _fd in os.fwalk(".", dir_fd=self.fd, follow_symlinks=False):
            rel = os.path.normpath(root)
            for n in names:
                yield ("" if rel == "." else rel), n

    def remove_temp_files(self, run_ids: list[str]) -> int:
        """Remove the temp files of these runs (``.NAME.steer-tmp-RUNID``, RUNID optionally ``-rN``); nothing else."""
        ids = [r for r in run_ids if _RUN_ID.fullmatch(r)]
        if not ids:
            return 0
        pattern = re.compile(rf"^\..+{re.escape(TEMP_TAG)}(?:{'|'.join(ids)})(?:-r\d+)?$")
        removed = 0
        for folder, name in list(self.files()):
            if pattern.match(name):
                self.unlink(f"{folder}/{name}" if folder else name)
                removed += 1
        return removed

    # ----- lock ---------------------------------------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def lock(self) -> str | None:
        """Take the folder's lock (non-blocking) and record this run's id; the previous run's id, if any."""
        if fcntl is None or self._lock_fd is not None:
            return None
        try:
            fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666, dir_fd=self.fd)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.EMLINK):
                raise self._unsafe([LOCK_FILE], "is a symlink") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._unsafe([LOCK_FILE], "is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputBusyError(
                    f"another steer batch is running on {self.path} (it holds {self.path / LOCK_FILE}); "
                    "wait for it to finish or use another --out"
                ) from None
            previous = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.run_id}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        self.previous_run = previous.split("-r")[0] if _RUN_ID.fullmatch(previous.split("-r")[0]) else None
        return self.previous_run

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None


def read_under(out: str | os.PathLike, rel: str, limit: int | None = None) -> bytes | None:
    """The bytes of the regular file ``out/rel``, reached without following a symlink below ``out``; else None."""
    try:
        folder = OutDir(out, "", create=False)
    except OSError:
        return None
    with folder:
        return folder.read_bytes(rel, limit)


class AppendFile:
    """An opened manifest: drops a torn last line left by a killed run; appends lines, each flushed and fsync-ed."""

    def __init__(self, fd: int):
        self.fd = fd
        size = os.fstat(fd).st_size
        if size:
            end = size
            while end > 0:  # the last newline, reading backwards in blocks
                start = max(0, end - 2**16)
                block = os.pread(fd, end - start, start)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    end = start + nl + 1
                    break
                end = start
            if end != size:
                os.ftruncate(fd, end)

    def append(self, entry: dict[str, Any]) -> None:
        data = (json.dumps(entry, sort_keys=True) + "\n").encode()
        while data:
            data = data[os.write(self.fd, data) :]
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def manifest_lines(out: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Entries of ``manifest.jsonl`` and the ``manifest.rank*.jsonl`` shards (regular files only, never through a
    symlink); unreadable (torn) or overlong lines are ignored."""
    out = Path(out)
    names = [MANIFEST, *sorted(p.name for p in out.glob("manifest.rank*.jsonl"))] if out.is_dir() else []
    for name in names:
        try:
            fd = os.open(out / name, _READ)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            yield from _entries(f)


def _entries(f: io.BufferedReader) -> Iterator[dict[str, Any]]:
    while True:
        line = f.readline(MAX_MANIFEST_LINE)
        if not line:
            return
        if not line.endswith(b"\n") and len(line) == MAX_MANIFEST_LINE:
            while (rest := f.readline(MAX_MANIFEST_LINE)) and not rest.endswith(b"\n"):
                pass
            continue
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("key", "path", "sha256")):
            yield e
