"""A run is atomic as a whole: it ends with metrics.json and its prompt/, or leaves no loadable prompt. A full disk
(ENOSPC) at any write of a run (the prompt's files, the test predictions, metrics.json, a checkpoint) is one line
naming the file and the OS's reason, exit status 2, and leaves no half-written file; rerunning the same command
then resumes and finishes. `StagedWrites` commits several files and folders together."""

from __future__ import annotations

import builtins
import errno
import json
import os
import signal
from pathlib import Path

import pytest

import softprompt
from softprompt.artifacts.format import ArtifactError
from softprompt.config import atomic
from softprompt.config.atomic import StagedWrites

RUN = ["backbone=tiny_random", "logger=none", "~callbacks.progress_bar", "trainer.max_steps=4",
       "trainer.val_check_interval=2", "data.batch_size=4", "data.eval_batch_size=16", "method.num_virtual_tokens=3"]


class FullDisk:
    """A file handle on a disk that fills up: half of the first write lands, then ENOSPC (which names no file)."""

    def __init__(self, handle) -> None:
        self._handle = handle

    def write(self, data) -> int:
        self._handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.close()


def fill_disk_at(monkeypatch, file: str, occurrence: int = 1) -> None:
    """The `occurrence`-th atomic write of a file named `file` meets a full disk (every write of the package goes
    through a temporary `.NAME.tmp-PID` that softprompt.config.atomic opens)."""
    seen: list[str] = []

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        handle = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (returned, as open does)
        if Path(path).name.startswith(f".{file}{atomic.TEMPORARY_MARK}"):
            seen.append(str(path))
            if len(seen) == occurrence:
                return FullDisk(handle)
        return handle

    monkeypatch.setattr(atomic, "open", open_on_full_disk, raising=False)


def assert_no_loadable_prompt(out: Path) -> None:
    assert not (out / "metrics.json").exists() and not (out / "prompt").exists()
    with pytest.raises(ArtifactError, match=r"holds no softprompt\.json"):
        softprompt.load(out)
    assert temporaries(out) == []


@pytest.mark.parametrize(("file", "occurrence", "shown"), [
    ("softprompt.safetensors", 1, "prompt/softprompt.safetensors"),
    ("softprompt.json", 1, "prompt/softprompt.json"),
    ("test_predictions.jsonl", 1, "test_predictions.jsonl"),
    ("val_predictions.jsonl", 1, "val_predictions.jsonl"),
    ("metrics.json", 1, "metrics.json"),
    ("last.ckpt", 2, "checkpoints/last.ckpt"),  # the step-4 checkpoint; the step-2 one is kept
])
def test_a_full_disk_at_any_write_is_one_line_and_leaves_no_prompt_without_metrics(
        file, occurrence, shown, run_as_main, capfd, monkeypatch, tmp_path, local_task_overrides):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, file, occurrence)
    status = run_as_main("softprompt.cli.train", *RUN, *local_task_overrides, f"hydra.run.dir={out}")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("softprompt:")]
    assert status == 2, err[-3000:]
    assert errors == [lines[-1]] and "Traceback" not in err, err[-3000:]
    assert errors[0] == (
        f"softprompt: error: hydra.run.dir='{out}' is invalid: writing {out / shown} failed (No space left on "
        "device); the job stopped before writing its results (metrics.json, prompt/): free space on its file system "
        "(or set hydra.run.dir to a folder on another one), then rerun the same command with "
        f"hydra.run.dir={out} to continue from checkpoints/last.ckpt")
    assert_no_loadable_prompt(out)


def test_after_a_full_disk_at_metrics_the_same_command_resumes_and_finishes(run_as_main, capfd, monkeypatch, tmp_path,
                                                                            local_task_overrides):
    out = tmp_path / "run"
    command = [*RUN, *local_task_overrides, f"hydra.run.dir={out}"]
    with monkeypatch.context() as patch:
        fill_disk_at(patch, "metrics.json")
        assert run_as_main("softprompt.cli.train", *command) == 2
    capfd.readouterr()
    assert run_as_main("softprompt.cli.train", *command) == 0, capfd.readouterr().err[-3000:]
    assert "resuming from" in "".join(capfd.readouterr())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert softprompt.load(out).predict(["great fun"])


def test_a_full_disk_stops_a_sweep_in_one_line_that_says_how_to_resume_it(run_as_main, capfd, monkeypatch, tmp_path,
                                                                          local_task_overrides):
    """A failed job of a sweep is recorded and the sweep goes on; a full disk would fail every later job alike."""
    sweep = tmp_path / "sweep"
    fill_disk_at(monkeypatch, "metrics.json")
    status = run_as_main("softprompt.cli.train", "-m", "seed=1,2", *RUN, *local_task_overrides,
                         f"hydra.sweep.dir={sweep}")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and "Traceback" not in err, err[-3000:]
    assert lines[-1].startswith("softprompt: error: job #0 (seed=1 ")
    assert lines[-1].endswith(
        f"failed: hydra.sweep.dir='{sweep}' is invalid: writing {sweep}/0/metrics.json failed (No space left on "
        "device); the job stopped before writing its results (metrics.json, prompt/): free space on its file system "
        "(or set hydra.sweep.dir to a folder on another one), then rerun the same command with "
        f"hydra.sweep.dir={sweep} resume_sweep=true to continue from checkpoints/last.ckpt")
    assert_no_loadable_prompt(sweep / "0")
    assert not (sweep / "1").exists()  # the sweep stopped


def test_a_sweep_job_whose_failure_cannot_be_recorded_on_a_full_disk_stops_the_sweep_in_one_line(
        run_as_main, capfd, monkeypatch, tmp_path):
    sweep = tmp_path / "sweep"
    fill_disk_at(monkeypatch, "failed.json")
    status = run_as_main("softprompt.cli.train", "-m", "method.init=glove,vocab", "backbone=tiny_random",
                         f"hydra.sweep.dir={sweep}")
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2 and "Traceback" not in err, err[-3000:]
    assert lines == [
        "softprompt: error: job #0 (method.init=glove backbone=tiny_random) failed: method.init='glove' is invalid: "
        "allowed: random_uniform, random_normal, vocab, text, class_labels, from_artifact; and "
        f"hydra.sweep.dir='{sweep}' is invalid: writing {sweep}/0/failed.json failed (No space left on device); the "
        "job stopped before writing its results (metrics.json, prompt/): free space on its file system (or set "
        f"hydra.sweep.dir to a folder on another one), then rerun the same command with hydra.sweep.dir={sweep} "
        "resume_sweep=true to start it again (no checkpoint was saved yet)"]
    assert not (sweep / "1").exists()


# ------------------------------------------------------------------------------------------------- StagedWrites

def old_results(folder: Path) -> dict[str, str]:
    (folder / "prompt").mkdir(parents=True)
    (folder / "prompt" / "a.bin").write_text("old prompt")
    (folder / "metrics.json").write_text("old metrics")
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, str]:
    """The files a reader sees (temporaries aside)."""
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*"))
            if p.is_file() and atomic.TEMPORARY_MARK not in str(p.relative_to(folder))}


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"*{atomic.TEMPORARY_MARK}*"))


def stage_new_results(staged: StagedWrites, folder: Path) -> None:
    staged.file(folder / "metrics.json", "new metrics")
    staged.directory(folder / "prompt", {"a.bin": b"new prompt", "b.bin": b"more"})


def test_staged_writes_appear_together_on_commit_and_replace_an_old_folder(tmp_path):
    old_results(tmp_path)
    with StagedWrites() as staged:
        stage_new_results(staged, tmp_path)
        assert snapshot(tmp_path) == {"metrics.json": "old metrics", "prompt/a.bin": "old prompt"}  # not yet
        staged.commit()
    assert snapshot(tmp_path) == {"metrics.json": "new metrics", "prompt/a.bin": "new prompt", "prompt/b.bin": "more"}
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("stop", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()],
                         ids=["full_disk", "ctrl_c"])
def test_staged_writes_that_stop_before_the_commit_leave_the_targets_as_they_were(tmp_path, stop):
    before = old_results(tmp_path)
    with pytest.raises(type(stop)), StagedWrites() as staged:
        stage_new_results(staged, tmp_path)
        raise stop
    assert snapshot(tmp_path) == before and temporaries(tmp_path) == []


def test_a_staged_file_on_a_full_disk_names_its_target_and_leaves_no_temporary(tmp_path, monkeypatch):
    fill_disk_at(monkeypatch, "metrics.json")
    with pytest.raises(OSError) as error, StagedWrites() as staged:
        staged.file(tmp_path / "metrics.json", "x" * 100)
    assert error.value.errno == errno.ENOSPC and error.value.filename == str(tmp_path / "metrics.json")
    assert list(tmp_path.iterdir()) == []


def test_a_commit_that_fails_part_way_leaves_none_of_its_new_targets(tmp_path, monkeypatch):
    old_results(tmp_path)
    real = atomic._commit

    def rename(temporary: Path, path: Path) -> None:
        if path.name == "metrics.json":
            raise OSError(errno.EIO, "Input/output error")
        real(temporary, path)

    monkeypatch.setattr(atomic, "_commit", rename)
    with pytest.raises(OSError, match="Input/output"), StagedWrites() as staged:
        staged.file(tmp_path / "test_predictions.jsonl", "new predictions")
        stage_new_results(staged, tmp_path)
        staged.commit()
    # The renamed predictions were removed again; metrics.json and prompt/ were never replaced: the old pair stays.
    assert snapshot(tmp_path) == {"metrics.json": "old metrics", "prompt/a.bin": "old prompt"}
    assert temporaries(tmp_path) == []


def test_ctrl_c_during_a_commit_waits_until_every_target_is_in_place(tmp_path, monkeypatch):
    real = atomic._commit

    def rename(temporary: Path, path: Path) -> None:
        if path.name == "metrics.json":  # the commit's first rename: Ctrl-C comes before the prompt's
            os.kill(os.getpid(), signal.SIGINT)
        real(temporary, path)

    monkeypatch.setattr(atomic, "_commit", rename)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a test worker may differ)
    try:
        with pytest.raises(KeyboardInterrupt), StagedWrites() as staged:
            stage_new_results(staged, tmp_path)
            staged.commit()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert snapshot(tmp_path) == {"metrics.json": "new metrics", "prompt/a.bin": "new prompt", "prompt/b.bin": "more"}
