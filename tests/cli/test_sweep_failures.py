"""A failed job never ends its sweep: it leaves failed.json, the others run, the multirun ends with one summary
line and a non-zero exit status, the report lists it, and resume_sweep=true retries it."""

from __future__ import annotations

import json

from softprompt.cli.report import main as report_main

JOB = ["backbone=tiny_random", "trainer.max_steps=2", "callbacks=none", "logger=none",
       "data.max_samples={train: 16, validation: 8, test: 8}"]


def test_a_failed_job_is_recorded_the_sweep_goes_on_and_a_retry_clears_it(tmp_path, softprompt_train):
    sweep = tmp_path / "sweep"

    def multirun(*overrides: str):
        return softprompt_train("-m", *JOB, *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path)

    result = multirun("method.init=vocab,bogus,random_uniform")
    assert result.returncode == 1, result.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file() and (sweep / "2" / "metrics.json").is_file()
    assert not (sweep / "1" / "metrics.json").exists()
    failure = json.loads((sweep / "1" / "failed.json").read_text())
    assert failure["error_type"] == "ConfigError" and failure["job_num"] == 1
    assert failure["error"].startswith("method.init='bogus' is invalid: allowed: random_uniform")
    assert "method.init=bogus" in failure["overrides"]
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("softprompt: 1 of 3 jobs failed: #1 method.init=bogus: method.init='bogus' is invalid")
    assert "Traceback" not in result.stderr

    assert report_main([str(sweep)]) == 0
    results = (sweep / "results.md").read_text()
    assert "method.init='bogus' is invalid" in results.split("## Incomplete", 1)[1]

    retry = multirun("method.init=vocab,random_normal,random_uniform", "resume_sweep=true")
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert (sweep / "1" / "metrics.json").is_file() and not (sweep / "1" / "failed.json").exists()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["init"] == "random_normal"
    assert (retry.stdout + retry.stderr).count("is finished") == 2  # jobs 0 and 2 were not rerun
