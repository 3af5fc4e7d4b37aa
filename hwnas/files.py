"""Reading and writing the files hwnas uses, with one-line errors and whole outputs.

Writes go to a temporary file in the destination's folder, are flushed to disk, then renamed
over the destination (a rename within one file system is atomic): a reader, a crash or a kill
sees the old file or the new one, never half of one, and a failed write leaves nothing.

Reads turn every way a file can be wrong (missing, a folder, unreadable, binary, truncated,
of another format or a future version) into a `HwnasError` whose message is one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hwnas.errors import HwnasError

# Every file written whole during this process, in order: what an interrupted command kept.
WRITTEN: list[str] = []
# What a command wants said if it is interrupted (e.g. how to resume), besides WRITTEN.
INTERRUPT_NOTES: list[str] = []


def on_interrupt(note: str) -> None:
    """Say `note` if this command is interrupted (Ctrl-C): what was kept, how to go on."""
    INTERRUPT_NOTES.append(note)


def os_error_message(exc: OSError, path: str | Path | None = None) -> str:
    """One line for an OSError: what went wrong with which path, and how to fix it."""
    where = str(path if path is not None else (exc.filename or "a file"))
    code = exc.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return f"no space left on the disk writing {where}: free some space or write to another disk"
    if code == errno.ENOENT:
        return f"no such file or folder: {where}"
    if code == errno.EISDIR:
        return f"{where} is a folder: give a file path"
    if code == errno.ENOTDIR:
        return f"{where}: a part of the path is a file, not a folder"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where}: choose a path you may write, or change its permissions"
    if code == errno.EROFS:
        return f"{where} is on a read-only file system: write somewhere else"
    if code == errno.ENAMETOOLONG:
        return f"file name too long: {where}"
    reason = exc.strerror or str(exc)
    return f"{where}: {reason}".replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# Writing


def check_writable(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, an output path that cannot be written: a folder, a path under
    a file, a missing folder that cannot be made, a read-only place. Creates missing folders."""
    path = Path(path)
    if str(path) == "" or path.name in ("", ".", ".."):
        raise HwnasError(f"{what} {str(path)!r} is not a file name: give a file path")
    if path.is_dir():
        raise HwnasError(f"{what} {path} is a folder: give a file path inside it")
    for folder in path.parents:
        if folder.exists() and not folder.is_dir():
            raise HwnasError(f"cannot write {what} {path}: {folder} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        if exc.errno == errno.ENOENT and path.parent.is_dir():  # /proc, /sys: folders that take no new files
            raise HwnasError(f"cannot write {what} {path}: {path.parent} does not take new files (a virtual "
                             f"file system?): write somewhere else") from None
        raise HwnasError(f"cannot write {what} {path}: " + os_error_message(exc, path.parent)) from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in the destination's folder for a writer that takes a path (onnx.save,
    savefig, ...); renamed over `path` when the block ends without error, removed otherwise.
    The temporary name keeps the suffix, so writers that infer the format from it still work."""
    path = Path(path)
    if path.is_dir():
        raise HwnasError(f"{path} is a folder: give a file path inside it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        _ordinary_mode(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    WRITTEN.append(str(path))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` whole or not at all."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # The rename itself is durable only once the folder is synced (POSIX); not possible on Windows.
    if sys.platform == "win32":
        return
    with contextlib.suppress(OSError):
        _fsync(folder)


def _ordinary_mode(path: Path) -> None:
    # mkstemp makes 0600; an output is an ordinary file, readable as the umask allows.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


# ---------------------------------------------------------------------------------------------
# Reading


def read_bytes(path: str | Path, what: str = "file") -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise HwnasError(f"cannot read {what} {path}: " + os_error_message(exc, path)) from None


def read_text(path: str | Path, what: str = "file") -> str:
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HwnasError(f"{path} is not a text {what}: binary data at byte {exc.start}") from None


def parse_json(text: str, path: str | Path, what: str = "JSON file") -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if not text.strip():
            raise HwnasError(f"{path} is empty, not a {what}") from None
        if looks_truncated(exc, text):
            raise HwnasError(f"{path} ends early (truncated?): not a whole {what}") from None
        raise HwnasError(f"{path} is not a {what}: invalid JSON ({exc.msg} at line {exc.lineno} "
                         f"column {exc.colno})") from None
    except RecursionError:
        raise HwnasError(f"{path} is not a {what}: JSON nested too deeply") from None


def looks_truncated(exc: json.JSONDecodeError, text: str) -> bool:
    """The JSON ended where more was expected (a cut file), not a wrong character in the middle."""
    return exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    return parse_json(read_text(path, what), path, what)


def check_format(raw: Any, path: str | Path, fmt: str, version: int, what: str, remedy: str) -> dict[str, Any]:
    """A JSON document with `"format": fmt` and `"version": version`; a newer version is named
    as such (upgrade hwnas), an older one gets `remedy`."""
    if not isinstance(raw, dict) or raw.get("format") != fmt:
        raise HwnasError(f"{path} is not an {what} (no \"format\": \"{fmt}\")")
    found = raw.get("version")
    if found != version:
        if isinstance(found, int) and not isinstance(found, bool) and found > version:
            raise HwnasError(f"{path} is a version {found} {what}, newer than this hwnas reads (version "
                             f"{version}): upgrade hwnas")
        raise HwnasError(f"{path} is a version {found} {what}; this hwnas reads version {version}: {remedy}")
    return raw


# ---------------------------------------------------------------------------------------------
# Locks


@contextlib.contextmanager
def exclusive(path: str | Path, what: str = "file") -> Iterator[None]:
    """Hold PATH.lock while writing PATH: a second process that wants the same file is refused
    with the first one's pid and command. The lock dies with its process (flock)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise HwnasError(f"{path} is being written by another process ({holder}); wait for it to "
                             f"finish or choose another output (the lock is {lock})") from None
        except OSError:
            os.close(fd)
            raise
        # The holder before us may have removed the lock file after we opened it: retry on the new one.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {' '.join(sys.argv)}\n".encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text.splitlines()[0] if text else "pid unknown"
