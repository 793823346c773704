"""softprompt-train as a user runs it: one real process each (importing lightning is slow), its exit status,
its one-line errors and what its jobs leave behind."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

# Subsets of the default task: what these tests check does not depend on how many rows are evaluated.
SMALL = "data.max_samples={train: 64, validation: 32, test: 32}"
# The local task, a few steps at small batches (see conftest's local_task_overrides).
RUN = ["backbone=tiny_random", "callbacks=none", "trainer.max_steps=2", "trainer.val_check_interval=2",
       "data.batch_size=4", "data.eval_batch_size=16", "data.max_samples.validation=null"]


def test_a_single_run_writes_metrics_with_prompt_sized_trainables(tmp_path, softprompt_train):
    result = softprompt_train("backbone=tiny_random", "method.num_virtual_tokens=5", "method.init=vocab",
                              "trainer.max_steps=5", SMALL, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["trainable_params"] == 5 * 32  # 5 x hidden size of tiny_random
    assert metrics["backbone_fingerprint_start"] == metrics["backbone_fingerprint_end"]
    assert metrics["steps"] == 5 and 0.0 <= metrics["test"]["acc"] <= 1.0


def test_bad_override_fails_with_one_line_before_training(tmp_path, softprompt_train):
    result = softprompt_train("backbone=tiny_random", "method.init=glove", f"hydra.run.dir={tmp_path}/run",
                              cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == ["softprompt: error: method.init='glove' is invalid: allowed: random_uniform, "
                      "random_normal, vocab, text, class_labels, from_artifact"]
    assert "Traceback" not in result.stderr and not (tmp_path / "run" / "metrics.json").exists()


def test_nan_loss_fails_with_one_line_and_writes_no_metrics(tmp_path, softprompt_train, local_task_overrides):
    """A prompt pushed past float16's range (lr 1e6) overflows the fp16 backbone to inf, then NaN."""
    result = softprompt_train(*RUN, *local_task_overrides, "logger=none", "backbone.dtype=float16",
                              "optimizer.lr=1e6", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("softprompt: error:")]
    assert errors == [lines[-1]] and "Traceback" not in result.stderr
    assert errors == ["softprompt: error: train/loss is nan at step 1 of prompt_tuning; nothing was saved from this "
                      "step on: lower optimizer.lr or check the inputs (a float16 backbone overflows past 65504; "
                      "bfloat16 has float32's range)"]
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not (tmp_path / "run" / "test_predictions.jsonl").exists()


def test_multirun_over_every_method_writes_one_metrics_file_each(tmp_path, softprompt_train):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "WANDB_MODE")}
    # A fresh HOME has no wandb credentials; keep the prepared softprompt assets.
    env["SOFTPROMPT_CACHE"] = os.environ.get("SOFTPROMPT_CACHE", str(Path.home() / ".cache" / "softprompt"))
    methods = ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "hard_prompt"]
    result = softprompt_train("-m", f"method={','.join(methods)}", "backbone=tiny_random", "trainer.max_steps=5",
                              SMALL, "logger=wandb", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path,
                              env={**env, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    d, h, flat = 32, 32, 2 * 2 * 16  # tiny_random: hidden 32 (the LSTM's default width), 2 layers x 2 x kv_dim 16
    lstm = 2 * (4 * h * d + 4 * h * h + 8 * h) + 2 * (4 * h * 2 * h + 4 * h * h + 8 * h) + (4 * h * h + 2 * h) + (
        2 * h * d + d)
    expected = {  # (trainable, after folding) for 20 virtual tokens
        "prompt_tuning": (20 * d, 20 * d),
        "p_tuning": (20 * d + lstm, 20 * d),
        "prefix_tuning": (20 * 16 + (16 * 512 + 512) + (512 * flat + flat), 20 * flat),
        "p_tuning_v2": (20 * flat, 20 * flat),
        "hard_prompt": (0, 0),
    }
    for job, method in enumerate(methods):
        metrics = json.loads((tmp_path / "sweep" / str(job) / "metrics.json").read_text())
        assert metrics["method"] == method
        assert (metrics["trainable_params"], metrics["folded_params"]) == expected[method]
        assert metrics["steps"] == (0 if method == "hard_prompt" else 5)
        assert metrics["backbone_fingerprint_start"] == metrics["backbone_fingerprint_end"]
        runs = list((tmp_path / "sweep" / str(job) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1
        record = next(runs[0].glob("*.wandb")).read_bytes()  # offline runs keep their records in one file
        assert b"trainable_params" in record and method.encode() in record  # the config and the counts
        assert b"train/sweep" in record and b"no_cv" in record  # the sweep's group, the job type


def test_every_method_runs_through_the_cli_with_checkpointing_under_bf16_mixed(tmp_path, softprompt_train,
                                                                              local_task_overrides):
    methods = ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "hard_prompt"]
    result = softprompt_train("-m", f"method={','.join(methods)}", *RUN, *local_task_overrides,
                              "logger=none", "backbone.gradient_checkpointing=true", "trainer.precision=bf16-mixed",
                              f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, method in enumerate(methods):
        job_dir = tmp_path / "sweep" / str(job)
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["method"] == method and metrics["steps"] == (0 if method == "hard_prompt" else 2)
        assert math.isfinite(metrics["val"]["loss"]) and math.isfinite(metrics["test"]["loss"])
        assert metrics["backbone_fingerprint_start"] == metrics["backbone_fingerprint_end"]
        log = (job_dir / "train.log").read_text()
        assert ("trainer.precision=bf16-mixed: frozen backbone cast to bfloat16 (backbone.dtype=float32); "
                "trainable tensors stay float32") in log
