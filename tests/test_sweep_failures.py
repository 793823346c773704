"""A failed job never ends its sweep: it leaves failed.json, the others run, the multirun ends with one summary
line and a non-zero exit status, and resume_sweep=true retries it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from softprompt.cli.report import main as report_main
from softprompt.errors import ConfigError
from softprompt.training.failures import summary_line, sweep_failures, write_failure

JOB = ["backbone=tiny_random", "trainer.max_steps=2", "callbacks=none", "logger=none",
       "data.max_samples={train: 16, validation: 8, test: 8}"]


def multirun(sweep: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprompt.cli.train", "-m", *JOB, *overrides,
                           f"hydra.sweep.dir={sweep}"], cwd=sweep.parent, capture_output=True, text=True, timeout=600)


def test_a_failed_job_is_recorded_the_sweep_goes_on_and_a_retry_clears_it(tmp_path):
    sweep = tmp_path / "sweep"
    result = multirun(sweep, "method.init=vocab,bogus,random_uniform")
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

    retry = multirun(sweep, "method.init=vocab,random_normal,random_uniform", "resume_sweep=true")
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert (sweep / "1" / "metrics.json").is_file() and not (sweep / "1" / "failed.json").exists()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["init"] == "random_normal"
    assert (retry.stdout + retry.stderr).count("is finished") == 2  # jobs 0 and 2 were not rerun


def test_an_unexpected_error_keeps_its_type_and_traceback(tmp_path):
    try:
        raise RuntimeError("out of memory\nwhile allocating")
    except RuntimeError as error:
        path = write_failure(tmp_path / "job", error, ["method.num_virtual_tokens=100"], 4)
    record = json.loads(path.read_text())
    assert record["error"] == "RuntimeError: out of memory while allocating"
    assert "Traceback" in record["traceback"] and record["job_num"] == 4


def test_the_summary_names_each_failed_job_by_its_own_overrides(tmp_path):
    for num, init in ((1, "bogus"), (3, "glove")):
        job = tmp_path / str(num)
        (job / ".hydra").mkdir(parents=True)
        write_failure(job, ConfigError("method.init", init, "allowed: vocab"), ["backbone=tiny_random",
                                                                                f"method.init={init}"], num)
    for num in (0, 2):
        (tmp_path / str(num) / ".hydra").mkdir(parents=True)
    failures, jobs = sweep_failures(tmp_path)
    line = summary_line(failures, jobs, shared=["backbone=tiny_random"])
    assert line == ("2 of 4 jobs failed: #1 method.init=bogus: method.init='bogus' is invalid: allowed: vocab; "
                    "#3 method.init=glove: method.init='glove' is invalid: allowed: vocab")
