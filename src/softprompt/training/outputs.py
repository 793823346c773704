"""The output folder: refused in one line when it cannot be created or written, before Hydra writes into it; and a
write that fails there later (a full disk, a read-only or unwritable file system) becomes one line too, naming the
file, the OS's reason and how to go on.

Hydra creates the run's folder (`hydra.run.dir`, or `hydra.sweep.dir` for a multirun) and writes its `.hydra/`
files and the log before the task function runs, and prints a traceback when that fails. `OutputDirCheck` (a Hydra
callback) runs first: it creates the folder and writes a probe of `PROBE_BYTES` there (more than Hydra's first
files take), so a folder under a regular file, on a read-only file system, without permission or on a full disk
is refused in one line, and a refused run leaves no folder behind.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from softprompt.config.atomic import TEMPORARY_MARK, synced_open, temporary_sibling
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.training.results import LAST_CHECKPOINT

PROBE_BYTES = 64 * 1024  # .hydra/{config,hydra,overrides}.yaml and the first log lines take about 16 KiB
# OS errors that say the file system refuses writes: no space, no quota, read-only, no permission.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
FULL_BYTES = 1024 * 1024  # a file system with less free space than this is taken for the full one


class OutputWriteError(SoftPromptError):
    """A file of the run's output could not be written."""


def _fix(reason: int | None, key: str) -> str:
    if reason in (errno.ENOSPC, errno.EDQUOT):
        return f"free space on its file system (or set {key} to a folder on another one)"
    if reason == errno.EROFS:
        return f"set {key} to a folder on a writable file system"
    return f"make the folder writable, or set {key} to another folder"


def _blocking_file(path: Path) -> Path | None:
    """The nearest ancestor of `path` (or `path` itself) that exists and is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def check_output_dir(key: str, path: str | Path) -> None:
    """Create the folder `path` (the value of `key`) and write a probe file in it; a ConfigError naming `key` when
    either fails. Folders it created are removed again when it refuses."""
    path = Path(path).expanduser()
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            blocking = _blocking_file(path)
            if blocking == path:  # FileExistsError
                raise ConfigError(key, str(path), f"cannot create it ({error.strerror}: it is a file); set {key} to "
                                  "a folder") from None
            if blocking is not None:  # NotADirectoryError
                raise ConfigError(key, str(path), f"cannot create it ({error.strerror}: {blocking} is a file); set "
                                  f"{key} to a path that does not go through a file") from None
            raise ConfigError(key, str(path), f"cannot create it ({error.strerror}: {error.filename}); "
                              f"{_fix(error.errno, key)}") from None
        probe = temporary_sibling(path / "softprompt-probe")  # .softprompt-probe.tmp-PID
        try:
            with synced_open(probe, "wb") as handle:  # fsynced: a full disk shows here, not at the first save
                handle.write(bytes(PROBE_BYTES))
        except OSError as error:
            raise ConfigError(key, str(path), f"cannot write into it ({error.strerror}); "
                              f"{_fix(error.errno, key)}") from None
        finally:
            probe.unlink(missing_ok=True)
    except ConfigError:
        for folder in created:  # innermost first
            if folder.is_dir():
                try:
                    folder.rmdir()
                except OSError:
                    break
        raise


def _refuse(error: SoftPromptError) -> None:
    """One line and exit status 2 from inside Hydra: a Hydra callback's exception would only be a warning, and a
    SystemExit passes through Hydra untouched."""
    import sys

    print(f"softprompt: error: {error}", file=sys.stderr)
    raise SystemExit(2)


class OutputDirCheck(Callback):
    """Refuses, before Hydra creates it, an output folder that cannot be created or written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, "hydra.sweep.dir")

    @staticmethod
    def _check(config: DictConfig, key: str) -> None:
        try:
            path = OmegaConf.select(config, key, throw_on_resolution_failure=True)
        except Exception:  # Hydra reports an unresolvable folder itself
            return
        if path is None or not str(path):
            return
        try:
            check_output_dir(key, str(path))
        except ConfigError as error:
            _refuse(error)


def _target(filename: str) -> Path:
    """A temporary `.NAME.tmp-PID` stands for the file NAME it would have become."""
    path = Path(filename)
    if path.name.startswith(".") and TEMPORARY_MARK in path.name:
        return path.with_name(path.name[1:].rsplit(TEMPORARY_MARK, 1)[0])
    return path


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return folder == path or folder in path.parents


def _full(folder: Path) -> bool:
    """Whether the file system of `folder` (or of its nearest existing parent) has (nearly) no space left."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free < FULL_BYTES
            except OSError:
                return False
    return False


def output_write_error(error: BaseException, output_dir: Path, cache_dir: Path, key: str, value: str,
                       resume: str) -> OutputWriteError | None:
    """`error` as one line when it is the OS refusing a write (WRITE_ERRNOS) of a file of the run's output or of
    the cache, or a full disk anywhere; None for any other error. `key`=`value` is the output folder's setting,
    and `resume` the setting(s) a rerun needs to continue. A write through a file handle that names no file (a
    logger's, say) is put down to the folder whose file system is full."""
    if not isinstance(error, OSError) or error.errno not in WRITE_ERRNOS:
        return None
    path = _target(error.filename) if isinstance(error.filename, str) and error.filename else None
    full = error.errno in (errno.ENOSPC, errno.EDQUOT)
    if path is None and full:
        where = next((folder for folder in (output_dir, cache_dir) if _full(folder)), None)
        what = f"writing a file in {where} failed" if where is not None else "a write failed"
    else:
        where, what = path, f"writing {path} failed"
    if where is not None and _inside(where, output_dir):
        setting = f"{key}={value!r} is invalid: "
    elif where is not None and _inside(where, cache_dir):
        setting, key = f"paths.cache_dir={str(cache_dir)!r} is invalid: ", "paths.cache_dir (SOFTPROMPT_CACHE)"
    elif full:
        setting = ""
    else:
        return None  # a file the run reads, or one outside its folders: left as it is
    fix = _fix(error.errno, key) if setting else "free space on its file system"
    last = output_dir / LAST_CHECKPOINT
    go_on = f"continue from {LAST_CHECKPOINT}" if last.is_file() else "start it again (no checkpoint was saved yet)"
    return OutputWriteError(f"{setting}{what} ({error.strerror}); the job stopped before writing its results "
                            f"(metrics.json, prompt/): {fix}, then rerun the same command with {resume} to {go_on}")
