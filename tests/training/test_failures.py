"""Failed jobs on record: failed.json keeps the error's type and traceback; the sweep's summary line names each
failed job by its own overrides."""

from __future__ import annotations

import json

from softprompt.errors import ConfigError
from softprompt.training.failures import summary_line, sweep_failures, write_failure


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
