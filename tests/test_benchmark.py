"""softprompt-bench in its smoke mode (tiny backbone, a few rounds): every runner is measured on both
kinds of data, ratios are the medians' ratios, and bad arguments fail in one line. The measured
numbers themselves come from real runs (README, Performance), never from timed tests."""

from __future__ import annotations

import json

import pytest

from conftest import local_task_overrides
from softprompt.benchmark import main

RUNNERS = ["ours (Trainer)", "ours (loop)", "PEFT", "frozen forward"]
GROUPED = "ours (loop, length-grouped)"


def test_smoke_every_runner_on_both_kinds_of_data(tmp_path, local_task_files, capsys):
    status = main(["--backbone", "tiny_random", "--methods", "prompt_tuning,p_tuning_v2", "--steps", "2",
                   "--warmup", "1", "--seq-len", "12", "--num-virtual-tokens", "3", "--batch-size", "4",
                   "--out", str(tmp_path / "bench"), "--", *local_task_overrides(local_task_files)])
    assert status == 0
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    rows = {(r["data"], r["method"], r["runner"]): r for r in report["rows"]}
    expected = {(data, method, runner) for data in ("synthetic", "real") for method in ("prompt_tuning", "p_tuning_v2")
                for runner in RUNNERS}
    expected |= {(data, "prompt_tuning", "full fine-tuning") for data in ("synthetic", "real")}  # first group only
    expected |= {("real", method, GROUPED) for method in ("prompt_tuning", "p_tuning_v2")}
    assert set(rows) == expected
    for (data, method, runner), row in rows.items():
        assert len(row["seconds"]) == 2 and all(s > 0 for s in row["seconds"])
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["tokens_per_s"] > 0 and row["peak_step_mib"] >= 0
        peft = rows[(data, method, "PEFT")]["median_s"]
        frozen = rows[(data, method, "frozen forward")]["median_s"]
        if runner.startswith("ours"):
            assert row["vs_peft"] == pytest.approx(row["median_s"] / peft, abs=2e-3)
        else:
            assert row["vs_peft"] is None
        if runner != "frozen forward":
            assert row["vs_frozen_forward"] == pytest.approx(row["median_s"] / frozen, abs=2e-3)
    # Synthetic batches are fixed length: tokens per step = batch x (length + virtual tokens).
    synthetic = rows[("synthetic", "prompt_tuning", "ours (loop)")]
    assert synthetic["tokens_per_s"] == pytest.approx(4 * (12 + 3) / synthetic["median_s"], rel=0.35)
    assert [e["method"] for e in report["epochs"]] == ["prompt_tuning", "p_tuning_v2"]
    assert all(e["steps_per_epoch"] == 12 for e in report["epochs"])  # 48 training rows, batch 4
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert table in capsys.readouterr().out
    assert "| real | p_tuning_v2 | PEFT |" in table


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "prompt_tuning,lora"], "--methods: unknown ['lora']; allowed: prompt_tuning, p_tuning, "
                                          "prefix_tuning, p_tuning_v2"),
    (["--data", "fake"], "--data: unknown ['fake']; allowed: synthetic, real"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
])
def test_bad_arguments_fail_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"softprompt-bench: error: {message}"
