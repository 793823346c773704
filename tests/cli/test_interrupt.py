"""Ctrl-C at any moment of softprompt-train is one line saying what it interrupted and how to resume, and exit
status 130: during the imports, while a job is prepared, mid-training (where Lightning catches it itself), in a
sweep. The printed way to resume works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from softprompt.training import run as run_module
from softprompt.training.interrupts import Interrupted, JobContext, interrupted_line

HERE = Path(__file__).parent  # interrupt_callback.py
# 48 rows at batch 8; validations (and last.ckpt) at steps 4 and 8.
TRAIN = ["backbone=tiny_random", "logger=none", "~callbacks.progress_bar", "trainer.max_steps=8",
         "trainer.val_check_interval=4", "data.batch_size=8", "data.eval_batch_size=16", "method.num_virtual_tokens=3"]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines, err[-3000:]
    assert [line for line in lines if line.startswith("softprompt:")] == [lines[-1]], err[-3000:]
    return lines[-1]


def test_ctrl_c_mid_training_says_where_to_resume_and_the_rerun_resumes(tmp_path, local_task_overrides):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "softprompt.cli.train", *TRAIN, *local_task_overrides, f"hydra.run.dir={out}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    interrupted = subprocess.run([*command, "+callbacks.interrupt._target_=interrupt_callback.InterruptAtStep",
                                  "+callbacks.interrupt.step=6"], capture_output=True, text=True, env=env,
                                 cwd=tmp_path, timeout=600)
    assert interrupted.returncode == 130, interrupted.stderr[-3000:]
    assert one_line(interrupted.stderr) == (
        f"softprompt: interrupted (Ctrl-C) while training at step 6 in {out}; to resume, rerun the same command with "
        f"hydra.run.dir={out}: it continues from checkpoints/last.ckpt (step 4)")
    assert not (out / "metrics.json").exists() and not (out / "prompt").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8


CTRL_C_DURING_IMPORTS = """
import os, signal, sys

class CtrlCWhenLightningIsImported:
    def find_spec(self, name, path=None, target=None):
        if name == "lightning":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlCWhenLightningIsImported())
sys.argv = ["softprompt-train", *sys.argv[1:]]
from softprompt.cli.train import main  # as the console script softprompt-train does
main()
"""


def test_ctrl_c_during_the_imports_is_one_line_and_status_130(tmp_path):
    result = subprocess.run([sys.executable, "-c", CTRL_C_DURING_IMPORTS, "backbone=tiny_random",
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 130, result.stderr[-3000:]
    assert result.stderr.splitlines() == ["softprompt: interrupted (Ctrl-C) while starting, before any job ran; "
                                          "nothing to resume: run the command again"]
    assert not (tmp_path / "run").exists()


def train_in_process(run_as_main, *args: str) -> int:
    try:
        return run_as_main("softprompt.cli.train", *args)
    except KeyboardInterrupt:  # it would end the test session
        pytest.fail("Ctrl-C escaped softprompt-train as a KeyboardInterrupt (a traceback, status 1)")


@pytest.fixture
def ctrl_c_while_preparing(monkeypatch):
    def build_job(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "build_job", build_job)


def test_ctrl_c_while_a_job_is_prepared_is_one_line(run_as_main, capfd, tmp_path, ctrl_c_while_preparing):
    out = tmp_path / "run"
    assert train_in_process(run_as_main, "backbone=tiny_random", f"hydra.run.dir={out}") == 130
    assert one_line(capfd.readouterr().err) == (
        f"softprompt: interrupted (Ctrl-C) while preparing the job (its data and backbone) in {out}; no checkpoint "
        "was saved yet (one is saved at every validation): rerun the same command to start it again")


def test_ctrl_c_in_a_sweep_says_how_to_resume_the_sweep(run_as_main, capfd, tmp_path, ctrl_c_while_preparing):
    sweep = tmp_path / "sweep"
    assert train_in_process(run_as_main, "-m", "seed=1,2", "backbone=tiny_random", f"hydra.sweep.dir={sweep}") == 130
    assert one_line(capfd.readouterr().err) == (
        f"softprompt: interrupted (Ctrl-C) job #0 of the sweep {sweep} while preparing the job (its data and "
        f"backbone); to resume, rerun the same command with hydra.sweep.dir={sweep} resume_sweep=true: the finished "
        "jobs are skipped, and job #0 starts again, as it saved no checkpoint yet")


def test_ctrl_c_that_a_library_swallows_is_still_reported_as_an_interrupt(run_as_main, capfd, tmp_path, monkeypatch):
    def build_job(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10))  # the handler raises KeyboardInterrupt here
        except KeyboardInterrupt:
            pass
        raise AttributeError("module 'numpy._core' has no attribute '_multiarray_umath'")  # a half-done import

    monkeypatch.setattr(run_module, "build_job", build_job)
    out = tmp_path / "run"
    assert train_in_process(run_as_main, "backbone=tiny_random", f"hydra.run.dir={out}") == 130
    assert one_line(capfd.readouterr().err).startswith(f"softprompt: interrupted (Ctrl-C) while preparing the job in "
                                                        f"{out}; ")


def test_the_line_names_the_checkpoint_a_rerun_continues_from(tmp_path):
    (tmp_path / "job" / "checkpoints").mkdir(parents=True)
    (tmp_path / "job" / "checkpoints" / "last.ckpt").write_bytes(b"")
    job = JobContext(tmp_path / "job", sweep_dir=tmp_path, job_num=3)
    assert interrupted_line(Interrupted("testing at step 12", tmp_path / "job", 8), job) == (
        f"softprompt: interrupted (Ctrl-C) job #3 of the sweep {tmp_path} while testing at step 12; to resume, rerun "
        f"the same command with hydra.sweep.dir={tmp_path} resume_sweep=true: the finished jobs are skipped, and job "
        "#3 continues from checkpoints/last.ckpt (step 8)")
    job.finished = True  # Ctrl-C between two jobs
    assert interrupted_line(KeyboardInterrupt(), job) == (
        f"softprompt: interrupted (Ctrl-C) the sweep {tmp_path} after job #3; to resume, rerun the same command with "
        f"hydra.sweep.dir={tmp_path} resume_sweep=true: the finished jobs are skipped")
    single = JobContext(tmp_path / "job", ckpt_path=None)
    assert interrupted_line(Interrupted("training at step 9"), single).endswith(
        f"hydra.run.dir={tmp_path / 'job'}: it continues from checkpoints/last.ckpt once you add ckpt_path=auto")
