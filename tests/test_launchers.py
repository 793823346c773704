"""Sweeps through hydra-submitit-launcher: local subprocess jobs run here; the SLURM preset composes."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import local_task_overrides


def test_submitit_local_runs_each_job_in_its_own_process(tmp_path, local_task_files):
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "-m", "softprompt.cli.train", "-m", "hydra/launcher=submitit_local",
                             "backbone=tiny_random", *local_task_overrides(local_task_files),
                             "method.num_virtual_tokens=2,4", "trainer.max_steps=3", f"hydra.sweep.dir={sweep}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {job: json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1")}
    assert {job: run["num_virtual_tokens"] for job, run in runs.items()} == {"0": 2, "1": 4}
    assert all(run["steps"] == 3 for run in runs.values())
    job_logs = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]  # one folder per job id
    assert len(job_logs) == 2 and all(list(p.glob("*_result.pkl")) for p in job_logs)


def test_slurm_preset_sets_the_cluster_knobs(make_cfg):
    cfg = make_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
                    "hydra.launcher.tasks_per_node=4", "trainer=ddp", "trainer.devices=4",
                    "hydra.launcher.setup=[module load cuda]"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == ("gpu", 4, 4, 1)
    assert launcher.array_parallelism == 32 and launcher.max_num_timeout == 3 and launcher.timeout_min == 240
    assert list(launcher.setup) == ["module load cuda"]
    assert cfg.trainer.strategy._target_.endswith("DDPStrategy") and cfg.trainer.devices == 4
