"""Faults during training: kill -9 in the middle of writing a checkpoint or the artifact, then the same command again,
ends with the metrics of an uninterrupted run; a DDP worker that dies fails the job in one line from rank 0 instead of
hanging it; checkpoints and metrics.json are never half-written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import softprompt
from softprompt.artifacts.format import ArtifactError
from softprompt.config import atomic
from softprompt.errors import ConfigError
from softprompt.training.checkpointing import AtomicCheckpointIO, resume_checkpoint
from softprompt.training.distributed import worker_failure
from softprompt.training.results import METRICS_FILE, PREDICTIONS_FILE, write_run_results

# As the resume tests: 48 rows at batch 8, validations (and checkpoints) at steps 4, 8 and 12.
TRAIN = ["backbone=tiny_random", "logger=none", "trainer.max_steps=12", "trainer.val_check_interval=4",
         "data.batch_size=8", "method.num_virtual_tokens=3"]


def kill_during_write(file: str, occurrence: int = 1) -> list[str]:
    return ["+callbacks.kill._target_=kill_callback.KillDuringWrite", f"+callbacks.kill.file={file}",
            f"+callbacks.kill.occurrence={occurrence}"]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(f"*{atomic.TEMPORARY_MARK}*"))


def test_a_run_killed_while_writing_a_checkpoint_or_its_artifact_ends_as_an_uninterrupted_run(tmp_path, train,
                                                                                             local_task_overrides):
    args = [*TRAIN, *local_task_overrides]
    straight = train([*args, f"hydra.run.dir={tmp_path / 'straight'}"], tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    out = tmp_path / "crashed"
    command = [*args, f"hydra.run.dir={out}"]
    # 1. Killed half way through the second last.ckpt (step 8): the step-4 one stays whole and is resumed from.
    crashed = train([*command, *kill_during_write("last.ckpt", occurrence=2)], tmp_path)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert [name.split(atomic.TEMPORARY_MARK)[0] for name in temporaries(out)] == [".last.ckpt"]  # the half write
    assert torch.load(resume_checkpoint("auto", out), weights_only=False)["global_step"] == 4
    assert not (out / METRICS_FILE).exists()

    # 2. The same command resumes, trains and tests, and is killed half way through the artifact's tensors file.
    crashed = train([*command, *kill_during_write("softprompt.safetensors")], tmp_path)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    assert "resuming from" in crashed.stdout + crashed.stderr
    assert not (out / "prompt").exists() and not (out / METRICS_FILE).exists()
    with pytest.raises(ArtifactError, match=r"holds no softprompt\.json"):  # the half-written folder is never read
        softprompt.load(out)

    # 3. The same command once more: it resumes after the last step and finishes as the uninterrupted run did.
    resumed = train(command, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = json.loads((tmp_path / "straight" / METRICS_FILE).read_text())
    got = json.loads((out / METRICS_FILE).read_text())
    for key in ("val", "test", "steps", "best_step", "backbone_fingerprint_end"):
        assert got[key] == expected[key], key
    assert (out / PREDICTIONS_FILE).read_text() == (tmp_path / "straight" / PREDICTIONS_FILE).read_text()
    # A fresh process may sum in another order: the prompt is compared to float32 round-off (as the resume tests).
    torch.testing.assert_close(load_file(out / "prompt" / "softprompt.safetensors")["prompt"],
                               load_file(tmp_path / "straight" / "prompt" / "softprompt.safetensors")["prompt"],
                               rtol=0, atol=1e-6)
    assert softprompt.load(out).predict(["great fun"])
    assert temporaries(out) == []  # what the killed writers left is cleared by the next write of each file


@pytest.mark.xdist_group("distributed")  # two training processes: one such test at a time
def test_a_dead_ddp_worker_fails_the_job_in_one_line_from_rank_0(tmp_path, train, local_task_overrides):
    """Rank 1 is killed at step 2; rank 0 must not wait out its collective's timeout (120 s here: long enough for
    the workers' rendezvous on a loaded machine, far longer than the watcher takes to notice the death)."""
    started = time.monotonic()
    result = train(["trainer=ddp_cpu", "trainer.devices=2", *TRAIN, *local_task_overrides, "data.batch_size=4",
                    "trainer.strategy.timeout.seconds=120", "+callbacks.kill._target_=kill_callback.KillAtStep",
                    "+callbacks.kill.step=2", "+callbacks.kill.rank=1", f"hydra.run.dir={tmp_path / 'ddp'}"],
                   tmp_path)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("softprompt: error:")]
    assert errors == [lines[-1]] and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith("softprompt: error: a worker process of this multi-process job died or "
                                 "stopped answering: rank 0 got '")
    assert "stopped the job instead of waiting" in errors[0]
    assert elapsed < 240  # startup of two processes on a busy machine; a hang would wait out the subprocess timeout
    assert not (tmp_path / "ddp" / METRICS_FILE).exists()


def fail_when_writing(name: str):
    original = atomic._commit

    def commit(temporary: Path, path: Path) -> None:
        if path.name == name:
            raise OSError(28, "No space left on device")
        original(temporary, path)

    return commit


def test_checkpoints_and_metrics_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 4}, last)
    monkeypatch.setattr(atomic, "_commit", fail_when_writing("last.ckpt"))
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 8, "big": torch.zeros(1000)}, last)
    assert io.load_checkpoint(last)["global_step"] == 4 and temporaries(tmp_path) == []

    write_run_results(tmp_path, {"test": {"acc": 0.5}}, [{"row_index": 0}])
    monkeypatch.setattr(atomic, "_commit", fail_when_writing(METRICS_FILE))
    with pytest.raises(OSError, match="No space left"):
        write_run_results(tmp_path, {"test": {"acc": 0.9}}, [{"row_index": 0}, {"row_index": 1}])
    assert json.loads((tmp_path / METRICS_FILE).read_text()) == {"test": {"acc": 0.5}}  # the run is not "finished"
    assert temporaries(tmp_path) == []


def test_resume_refuses_a_cut_checkpoint_in_one_line(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 4}, last)
    assert resume_checkpoint("auto", tmp_path) == str(last)
    last.write_bytes(last.read_bytes()[:100])  # as a writer without the atomic rename would leave it
    for setting in ("auto", "last", str(last)):
        with pytest.raises(ConfigError) as error:
            resume_checkpoint(setting, tmp_path)
        assert str(error.value) == (f"ckpt_path={setting!r} is invalid: {last} is not a whole checkpoint (truncated, "
                                    "or not written by torch.save); delete it to start fresh, or give ckpt_path=null "
                                    "or another .ckpt path")


STUCK_RANK_0 = """
import subprocess, sys, time
from softprompt.training import distributed
worker = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
distributed._WORKERS[:] = [worker]
distributed.WorkerObserver([worker], period=0.2, grace=1).start()
time.sleep(300)  # rank 0 stuck where nothing raises
"""


def test_a_rank_0_stuck_where_nothing_fails_is_ended_by_the_worker_observer_in_one_line():
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", STUCK_RANK_0], capture_output=True, text=True, timeout=200)
    assert result.returncode == 2 and time.monotonic() - started < 150
    assert result.stderr.splitlines() == [
        "softprompt: error: worker process rank 1 was killed by signal SIGKILL; rank 0 was stuck and stopped the job "
        "after 1 s (see rank1.log in the output dir)"]


def test_collective_failures_become_one_line_and_other_errors_stay_as_they_are(monkeypatch):
    timeout = RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 30000ms "
                           "for recv operation to complete")
    closed = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                          "[127.0.0.1]:18319. This is typically caused by a remote worker crashing. Check the logs")
    assert worker_failure(timeout) is None  # one process: nothing to blame on a worker
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert str(worker_failure(timeout)) == (
        "a worker process of this multi-process job died or stopped answering: rank 0 got 'Timed out waiting 30000ms "
        "for recv operation to complete' in a collective and stopped the job instead of waiting (a silent worker "
        "fails it after trainer.strategy.timeout); see each worker's rank<N>.log in the output dir")
    assert "got 'Connection closed by peer [127.0.0.1]:18319' in a collective" in str(worker_failure(closed))
    assert worker_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert worker_failure(ValueError("Timed out")) is None
