"""metrics.json is the RunSummary: written by one function in field order, read back by one function that the report,
cv, transfer and the artifact share; files written before a field existed read with its old meaning."""

from __future__ import annotations

import dataclasses
import json

from softprompt.analysis.report import collect_runs
from softprompt.artifacts.summary import OLD_MEANINGS, RunSummary, load_summary, read_summary, summary_json


def a_summary() -> RunSummary:
    values = {f.name: None for f in dataclasses.fields(RunSummary)}
    return RunSummary(**{**values, "method": "prompt_tuning", "task": "local", "task_type": "classification",
                         "selection_metric": "val/acc", "val": {"acc": 0.75, "loss": 0.5}, "test": {"acc": 0.5},
                         "seed": 42, "lr": 0.3, "method_config": {"name": "prompt_tuning", "lr": 0.3},
                         "tags": ["dev"], "overrides": ["seed=42"]})


def test_metrics_json_holds_every_field_in_order_and_reads_back_equal(tmp_path):
    summary = a_summary()
    text = summary_json(summary)
    assert list(json.loads(text)) == [f.name for f in dataclasses.fields(RunSummary)]
    assert text == json.dumps(summary.record(), indent=2) + "\n"
    (tmp_path / "metrics.json").write_text(text)
    assert load_summary(tmp_path / "metrics.json") == summary
    assert summary.selection_value == 0.75


def test_an_older_metrics_json_reads_with_the_old_meaning_of_the_fields_it_lacks():
    old = {"method": "prompt_tuning", "task": "sst2", "val": {"acc": 0.8}, "test": {"acc": 0.7}, "seed": 1,
           "selection_metric": "val/acc", "unknown_later_key": 3}
    summary = read_summary(old)
    assert summary.task_type == "classification" and summary.tasks is None and summary.transfer is None
    assert summary.tags == [] and summary.overrides == [] and summary.method_config == {}
    assert summary.precision is None and summary.step_seconds is None  # not recorded then
    assert set(OLD_MEANINGS) <= {f.name for f in dataclasses.fields(RunSummary)}
    assert not hasattr(summary, "unknown_later_key")


def test_the_report_reads_an_older_metrics_json(tmp_path):
    run = tmp_path / "old_run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"method": "prompt_tuning", "task": "sst2", "seed": 1, "fold": 0,
                                                  "val": {"acc": 0.8}, "test": {"acc": 0.7}}))
    [record] = collect_runs([tmp_path]).runs
    assert record["val/acc"] == 0.8 and record["test/acc"] == 0.7 and record["transfer_source"] is None
    assert record["method"] == "prompt_tuning" and record["steps"] is None


def test_runs_on_different_quantisations_are_different_configurations_in_the_report(tmp_path):
    """metrics.json records backbone.quantization; a file written before it did reads it from its overrides (else
    full precision), so a sweep over quantisations never pools an 8-bit run with a full-precision one."""
    base = {"method": "prompt_tuning", "task": "sst2", "seed": 1, "fold": 0, "selection_metric": "val/acc"}
    runs = {"recorded": {**base, "quantization": "nf4", "val": {"acc": 0.7}, "test": {"acc": 0.6}},
            "override_only": {**base, "overrides": ["backbone.quantization=int8"], "val": {"acc": 0.8},
                              "test": {"acc": 0.7}},
            "older": {**base, "val": {"acc": 0.9}, "test": {"acc": 0.8}}}
    for name, data in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(data))
    records = collect_runs([tmp_path]).runs
    assert sorted((r["quantization"], r["test/acc"]) for r in records) == [("int8", 0.7), ("nf4", 0.6),
                                                                           ("none", 0.8)]
    assert read_summary(runs["older"]).quantization == "none"
