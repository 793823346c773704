"""The benchmark in its smoke mode (tiny backbone, a few rounds): every runner is measured on both kinds of data,
and ratios are the medians' ratios. The measured numbers themselves come from real runs (README, Performance),
never from timed tests."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from softprompt.analysis.benchmark import trainable_presets
from softprompt.cli.bench import main

RUNNERS = ["ours (Trainer)", "ours (loop)", "PEFT", "frozen forward"]
GROUPED = "ours (loop, length-grouped)"


def group_medians(report: dict, data: str, method: str, runner: str) -> list[float]:
    return [r["median_s"] for r in report["rows"] if (r["data"], r["method"], r["runner"]) == (data, method, runner)]


def test_smoke_every_runner_on_both_kinds_of_data(tmp_path, capsys, local_task_overrides):
    status = main(["backbone=tiny_random", "methods=prompt_tuning,p_tuning_v2", "steps=2", "warmup=1", "seq_len=12",
                   "num_virtual_tokens=3", "batch_size=4", f"out={tmp_path / 'bench'}", "--",
                   *local_task_overrides])
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
        # Ratios are to the reference runners of the row's own group (the length-grouped one has its own).
        peft = group_medians(report, data, method, "PEFT")
        frozen = group_medians(report, data, method, "frozen forward")
        if runner.startswith("ours"):
            assert any(row["vs_peft"] == pytest.approx(row["median_s"] / p, abs=2e-3) for p in peft)
        else:
            assert row["vs_peft"] is None
        if runner != "frozen forward":
            assert any(row["vs_frozen_forward"] == pytest.approx(row["median_s"] / f, abs=2e-3) for f in frozen)
    # Synthetic batches are fixed length: tokens per step = batch x (length + virtual tokens).
    synthetic = rows[("synthetic", "prompt_tuning", "ours (loop)")]
    per_step = [4 * (12 + 3) / seconds for seconds in synthetic["seconds"]]
    assert synthetic["tokens_per_s"] == pytest.approx(statistics.median(per_step), rel=1e-3)
    assert [e["method"] for e in report["epochs"]] == ["prompt_tuning", "p_tuning_v2"]
    assert all(e["steps_per_epoch"] == 12 for e in report["epochs"])  # 48 training rows, batch 4
    assert report["args"]["methods"] == "prompt_tuning,p_tuning_v2" and report["args"]["full_ft"] == "True"
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert table in capsys.readouterr().out
    assert "| real | p_tuning_v2 | PEFT |" in table


def test_by_default_every_preset_that_trains_is_benchmarked():
    from softprompt.config.compose import config_dir

    presets = sorted(path.stem for path in (Path(config_dir()) / "method").glob("*.yaml"))
    assert {"prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"} <= set(presets)
    assert trainable_presets() == [name for name in presets if name != "hard_prompt"]  # the one that trains nothing


def test_smoke_quantisation_is_a_dimension_with_peft_on_the_same_quantised_backbone(tmp_path, local_task_overrides):
    pytest.importorskip("bitsandbytes")
    status = main(["backbone=tiny_random", "methods=prompt_tuning", "data=synthetic", "steps=1", "warmup=0",
                   "seq_len=12", "num_virtual_tokens=3", "batch_size=4", "full_ft=false", "quantization=none,nf4",
                   f"out={tmp_path / 'bench'}", "--", *local_task_overrides])
    assert status == 0
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    rows = {(r["quantization"], r["runner"]): r for r in report["rows"]}
    assert set(rows) == {(q, runner) for q in ("none", "nf4") for runner in RUNNERS}
    for runner in RUNNERS:  # quantised rows against the same runner unquantised; the frozen forward is the floor
        assert rows[("nf4", runner)]["vs_full_precision"] == pytest.approx(
            rows[("nf4", runner)]["median_s"] / rows[("none", runner)]["median_s"], abs=2e-3)
        assert rows[("none", runner)]["vs_full_precision"] is None
    weights = {w["quantization"]: w for w in report["weights"]}
    assert weights["nf4"]["linear_mib"] < 0.35 * weights["none"]["linear_mib"]
    assert weights["nf4"]["embeddings_mib"] == weights["none"]["embeddings_mib"] > 0
    assert report["args"]["quantizations"] == "none,nf4"
    assert "| nf4 |" in (tmp_path / "bench" / "bench.md").read_text()
