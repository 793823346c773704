"""Atomic writes: a file or folder appears whole or not at all, whenever the process is killed.

A file is written to a temporary sibling (same folder, so the rename cannot cross filesystems), flushed and
fsynced, then renamed over the target with `os.replace`; the folder is fsynced so the rename survives a crash.
A folder is built as a temporary sibling and renamed into place; an old folder of that name is moved aside
first and removed after. Temporaries are named `.NAME.tmp-PID`, so readers never take them for results.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMPORARY_MARK = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """`.NAME.tmp-PID` beside `path`."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}")


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _commit(temporary: Path, path: Path) -> None:
    """The last step of every atomic file write: rename the fsynced temporary over the target."""
    os.replace(temporary, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """A handle to write `path` through: the target changes only when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = temporary_sibling(path)
    try:
        with open(temporary, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _commit(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Temporaries of `path` that a killed process left behind (those of live processes are kept)."""
    for stale in path.parent.glob(f".{path.name}{TEMPORARY_MARK}*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A fresh temporary folder to fill; when the block ends without an error it becomes `path`, replacing an old
    `path` (moved aside, then removed). Between the two renames `path` is missing, never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = temporary_sibling(path)
    temporary.mkdir()
    try:
        yield temporary
        fsync_dir(temporary)
        if path.exists():
            old = path.with_name(f".{path.name}{TEMPORARY_MARK}old-{os.getpid()}")
            os.replace(path, old)
            os.replace(temporary, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
