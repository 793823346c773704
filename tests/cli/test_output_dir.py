"""An output folder that cannot be created or written (under a regular file, on a read-only file system, on a full
disk) is refused in one line naming hydra.run.dir (hydra.sweep.dir for a multirun), exit status 2, before Hydra
writes anything; a refused run leaves no folder behind. A write the OS refuses later is one line too."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from softprompt.config import atomic
from softprompt.training.outputs import output_write_error


def run_train(run_as_main, capfd, *args: str) -> tuple[int, list[str]]:
    status = run_as_main("softprompt.cli.train", *args, "backbone=tiny_random")
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return status, [line for line in err.splitlines() if line.strip()]


def test_a_run_dir_under_a_regular_file_is_one_line(run_as_main, capfd, tmp_path):
    (tmp_path / "afile").write_text("")
    status, lines = run_train(run_as_main, capfd, f"hydra.run.dir={tmp_path}/afile/run")
    assert status == 2
    assert lines == [f"softprompt: error: hydra.run.dir='{tmp_path}/afile/run' is invalid: cannot create it (Not a "
                     f"directory: {tmp_path}/afile is a file); set hydra.run.dir to a path that does not go through "
                     "a file"]


def test_a_run_dir_that_is_a_regular_file_is_one_line(run_as_main, capfd, tmp_path):
    (tmp_path / "afile").write_text("")
    status, lines = run_train(run_as_main, capfd, f"hydra.run.dir={tmp_path}/afile")
    assert status == 2
    assert lines == [f"softprompt: error: hydra.run.dir='{tmp_path}/afile' is invalid: cannot create it (File "
                     "exists: it is a file); set hydra.run.dir to a folder"]


def test_a_sweep_dir_under_a_regular_file_is_one_line(run_as_main, capfd, tmp_path):
    (tmp_path / "afile").write_text("")
    status, lines = run_train(run_as_main, capfd, "-m", "seed=1,2", f"hydra.sweep.dir={tmp_path}/afile/sweep")
    assert status == 2
    assert lines == [f"softprompt: error: hydra.sweep.dir='{tmp_path}/afile/sweep' is invalid: cannot create it (Not "
                     f"a directory: {tmp_path}/afile is a file); set hydra.sweep.dir to a path that does not go "
                     "through a file"]


def test_a_run_dir_on_a_read_only_file_system_is_one_line(run_as_main, capfd, tmp_path, monkeypatch):
    readonly = tmp_path / "readonly"
    real_mkdir = Path.mkdir

    def mkdir(path: Path, *args, **kwargs) -> None:
        if path == readonly or readonly in path.parents:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    status, lines = run_train(run_as_main, capfd, f"hydra.run.dir={readonly}/run")
    assert status == 2
    assert lines == [f"softprompt: error: hydra.run.dir='{readonly}/run' is invalid: cannot create it (Read-only file "
                     f"system: {readonly}/run); set hydra.run.dir to a folder on a writable file system"]


def test_a_run_dir_on_a_full_disk_is_one_line_and_left_as_it_was(run_as_main, capfd, tmp_path, monkeypatch):
    """8 KB free: Hydra's .hydra/*.yaml and the log would be left at 0 bytes."""
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode:
            handle.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return handle

    monkeypatch.setattr(atomic, "open", full_disk, raising=False)  # the probe is the first file written
    status, lines = run_train(run_as_main, capfd, f"hydra.run.dir={tmp_path}/new/run")
    assert status == 2
    assert lines == [f"softprompt: error: hydra.run.dir='{tmp_path}/new/run' is invalid: cannot write into it (No "
                     "space left on device); free space on its file system (or set hydra.run.dir to a folder on "
                     "another one)"]
    assert not (tmp_path / "new").exists()  # the folders the check created are gone


@pytest.mark.parametrize(("error", "inside", "expected"), [
    (OSError(errno.EACCES, "Permission denied"), True, "hydra.run.dir='{out}' is invalid: writing {out}/metrics.json"),
    (OSError(errno.EACCES, "Permission denied"), False, None),  # a file the run reads: not about the output folder
    (OSError(errno.ENOSPC, "No space left on device"), False, "writing /elsewhere/metrics.json failed"),
    (OSError(errno.EIO, "Input/output error"), True, None),
])
def test_only_writes_the_os_refuses_become_one_line(tmp_path, error, inside, expected):
    out = tmp_path / "run"
    error.filename = str(out / ".metrics.json.tmp-123") if inside else "/elsewhere/.metrics.json.tmp-123"
    found = output_write_error(error, out, tmp_path / "cache", "hydra.run.dir", str(out), f"hydra.run.dir={out}")
    if expected is None:
        assert found is None
    else:
        assert str(found).startswith(expected.format(out=out)), str(found)
        assert str(found).endswith("to start it again (no checkpoint was saved yet)")
