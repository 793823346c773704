"""Sweeps through hydra-submitit-launcher: local subprocess jobs run here, one process each."""

from __future__ import annotations

import json


def test_submitit_local_runs_each_job_in_its_own_process(tmp_path, softprompt_train, local_task_overrides):
    sweep = tmp_path / "sweep"
    result = softprompt_train("-m", "hydra/launcher=submitit_local", "backbone=tiny_random", *local_task_overrides,
                              "method.num_virtual_tokens=2,4", "trainer.max_steps=3", f"hydra.sweep.dir={sweep}",
                              cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {job: json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1")}
    assert {job: run["num_virtual_tokens"] for job, run in runs.items()} == {"0": 2, "1": 4}
    assert all(run["steps"] == 3 for run in runs.values())
    job_logs = [p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]  # one folder per job id
    assert len(job_logs) == 2 and all(list(p.glob("*_result.pkl")) for p in job_logs)
