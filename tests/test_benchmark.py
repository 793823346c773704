"""softprompt-bench in its smoke mode (tiny backbone, a few rounds): every runner is measured on both
kinds of data, ratios are the medians' ratios, and bad arguments fail in one line. The measured
numbers themselves come from real runs (README, Performance), never from timed tests."""

from __future__ import annotations

import json
import statistics

import pytest

from conftest import local_task_overrides
from softprompt.analysis.benchmark import DATA_KINDS, Benchmark, Settings, trainable_presets
from softprompt.cli import bench
from softprompt.cli.bench import main

RUNNERS = ["ours (Trainer)", "ours (loop)", "PEFT", "frozen forward"]
GROUPED = "ours (loop, length-grouped)"


def test_smoke_every_runner_on_both_kinds_of_data(tmp_path, local_task_files, capsys):
    status = main(["backbone=tiny_random", "methods=prompt_tuning,p_tuning_v2", "steps=2", "warmup=1", "seq_len=12",
                   "num_virtual_tokens=3", "batch_size=4", f"out={tmp_path / 'bench'}", "--",
                   *local_task_overrides(local_task_files)])
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
    per_step = [4 * (12 + 3) / seconds for seconds in synthetic["seconds"]]
    assert synthetic["tokens_per_s"] == pytest.approx(statistics.median(per_step), rel=1e-3)
    assert [e["method"] for e in report["epochs"]] == ["prompt_tuning", "p_tuning_v2"]
    assert all(e["steps_per_epoch"] == 12 for e in report["epochs"])  # 48 training rows, batch 4
    assert report["args"]["methods"] == "prompt_tuning,p_tuning_v2" and report["args"]["full_ft"] == "True"
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert table in capsys.readouterr().out
    assert "| real | p_tuning_v2 | PEFT |" in table


@pytest.fixture
def settings_seen(monkeypatch) -> list[Settings]:
    """The Settings main hands to the benchmark, which is not run."""
    seen: list[Settings] = []

    def fake_run(settings: Settings) -> Benchmark:
        seen.append(settings)
        return Benchmark("header", "CPU", table="table\n")

    monkeypatch.setattr(bench, "run_benchmark", fake_run)
    return seen


def test_the_defaults_are_the_declared_keys(settings_seen, capsys):
    assert main([]) == 0
    assert settings_seen == [Settings(backbone="smollm2_135m", methods=[], data=list(DATA_KINDS),
                                      batch_size=16, seq_len=64, num_virtual_tokens=20, steps=5, warmup=1,
                                      device="cpu", full_ft=True, overrides=[])]
    assert capsys.readouterr().out == "table\n\n"


def test_by_default_every_preset_that_trains_is_benchmarked():
    assert trainable_presets() == ["p_tuning", "p_tuning_v2", "prefix_tuning", "prompt_tuning"]


def test_keys_and_train_overrides_reach_the_benchmark(settings_seen):
    assert main(["methods=p_tuning", "data=real", "full_ft=false", "warmup=0", "device=gpu", "--",
                 "task.max_length=64", "optimizer.lr=0.1"]) == 0
    (settings,) = settings_seen
    assert (settings.methods, settings.data, settings.full_ft, settings.warmup, settings.device) == (
        ["p_tuning"], ["real"], False, 0, "gpu")
    assert settings.overrides == ["task.max_length=64", "optimizer.lr=0.1"]


@pytest.mark.parametrize(("argv", "message"), [
    (["methods=prompt_tuning,lora"], "methods='prompt_tuning,lora' is invalid: give a comma-separated list of "
                                     "hard_prompt, p_tuning, p_tuning_v2, prefix_tuning, prompt_tuning"),
    (["data=fake"], "data='fake' is invalid: give a comma-separated list of synthetic, real"),
    (["steps=0"], "steps='0' is invalid: must be an integer >= 1"),
    (["batch_size=0"], "batch_size='0' is invalid: must be an integer >= 1"),
    (["warmup=-1"], "warmup='-1' is invalid: must be an integer >= 0"),
    (["device=tpu"], "device='tpu' is invalid: allowed: cpu, gpu"),
    (["--steps", "2"], "expected key=value, got '--steps' (keys: backbone, methods, data, batch_size, seq_len, "
                       "num_virtual_tokens, steps, warmup, device, full_ft, out)"),
    (["--no-full-ft"], "expected key=value, got '--no-full-ft' (keys: backbone, methods, data, batch_size, "
                       "seq_len, num_virtual_tokens, steps, warmup, device, full_ft, out)"),
    (["task.max_length=64"], "unknown key 'task.max_length'; allowed: backbone, methods, data, batch_size, seq_len, "
                             "num_virtual_tokens, steps, warmup, device, full_ft, out"),
])
def test_bad_arguments_fail_in_one_line(argv, message, settings_seen, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"softprompt-bench: error: {message}\n"
    assert not settings_seen


def test_gpu_without_cuda_fails_in_one_line(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        main(["device=gpu"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"softprompt-bench: error: device=gpu, but CUDA is not available "
                                       f"(torch {torch.__version__})\n")
