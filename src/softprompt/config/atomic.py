"""Atomic writes: a file or folder appears whole or not at all, whenever the process is killed.

A file is written to a temporary sibling (same folder, so the rename cannot cross filesystems), flushed and
fsynced, then renamed over the target with `os.replace`; the folder is fsynced so the rename survives a crash.
A folder is built as a temporary sibling and renamed into place; an old folder of that name is moved aside
first and removed after. Temporaries are named `.NAME.tmp-PID`, so readers never take them for results.
`StagedWrites` commits several files and folders together (a run's results): all are written in full first, then
renamed into place one after another with Ctrl-C held off.

A write that fails (a full disk, a read-only file system) raises the OSError with the target's path as its
`filename` (a write through a file handle names no file), and leaves no temporary behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
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
def synced_open(path: Path, mode: str, **kwargs: Any) -> Iterator[IO]:
    """A handle on `path` whose writes are flushed and fsynced when the block ends without an error."""
    with open(path, mode, **kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """A handle to write `path` through: the target changes only when the block ends without an error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    temporary = temporary_sibling(path)
    try:
        with synced_open(temporary, mode, **kwargs) as handle:
            yield handle
        _commit(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        _name_target(error, path)
        raise


def _name_target(error: BaseException, path: Path) -> None:
    """An OSError of a write through a handle (ENOSPC on write, flush or fsync) names no file: name the target."""
    if isinstance(error, OSError) and error.errno is not None and error.filename is None:
        error.filename = str(path)


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


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Ctrl-C is acted on only after the block, so it cannot split what the block does. (Python runs signal handlers
    in the main thread only; a signal mask would not do, as any other thread may take the signal.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[0])  # the default handler raises KeyboardInterrupt here
            else:
                os.kill(os.getpid(), signal.SIGINT)  # ignored, or ends the process, as it would have


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class StagedWrites:
    """Files and folders that appear together: each is written in full (fsynced) as a temporary beside its target,
    then `commit()` renames them into place in the order they were staged, with Ctrl-C held off. Leaving the
    `with` block without a commit (an error, a full disk, Ctrl-C) removes every temporary: the targets are as they
    were. A rename that fails during the commit (rare: renames need no free space) removes the targets it already
    renamed, so a commit leaves all of its targets, or none of the new ones."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target), in commit order

    def __enter__(self) -> StagedWrites:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for temporary, _ in self._staged:
            _remove(temporary)
        self._staged.clear()

    def _temporary(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        temporary = temporary_sibling(path)
        self._staged.append((temporary, path))
        return temporary

    def file(self, path: str | Path, data: bytes | str) -> None:
        """Stage `data` as the file `path`."""
        path = Path(path)
        temporary = self._temporary(path)
        try:
            with synced_open(temporary, "wb") as handle:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        except BaseException as error:
            _name_target(error, path)
            raise

    def directory(self, path: str | Path, files: Mapping[str, bytes]) -> None:
        """Stage the folder `path` holding `files` (name -> bytes), each written atomically inside it."""
        path = Path(path)
        temporary = self._temporary(path)
        temporary.mkdir()
        for name, data in files.items():
            try:
                atomic_write_bytes(temporary / name, data)
            except OSError as error:  # named as the file it would have become
                if error.errno is not None:
                    error.filename = str(path / name)
                raise
        fsync_dir(temporary)

    def commit(self) -> None:
        """Rename everything staged into place, in order; an old folder of a target's name is replaced."""
        done: list[Path] = []
        with _sigint_held():
            try:
                for temporary, path in self._staged:
                    if temporary.is_dir():
                        if path.exists():  # a folder cannot be renamed over a folder that holds files
                            _remove(path)
                        os.replace(temporary, path)
                        fsync_dir(path.parent)
                    else:
                        _commit(temporary, path)
                    done.append(path)
            except BaseException as error:
                for path in done:
                    _remove(path)
                _name_target(error, self._staged[len(done)][1])
                raise
            finally:
                self._staged = [(t, p) for t, p in self._staged if p not in done]
