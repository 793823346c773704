"""Precision and memory, end to end on tiny backbones: mixed precision keeps the frozen backbone in low
precision and every trainable tensor in fp32; gradient checkpointing for every method; backbone.dtype;
the one-line NaN guard; refused precision settings; the GPU check script's no-GPU path."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import softprompt.training.job
from conftest import TINY, local_task_overrides
from softprompt.config.precision import backbone_config_for_precision, check_precision
from softprompt.errors import ConfigError
from softprompt.training.run import run

ROOT = Path(__file__).resolve().parents[1]
RUN = [*TINY, "trainer.max_steps=2", "trainer.val_check_interval=2", "data.batch_size=4", "data.eval_batch_size=16",
       "data.max_samples.validation=null"]


@pytest.fixture
def built(monkeypatch) -> list[dict]:
    """Each method module `run` builds, with its trainable tensors before training and, per tensor, the
    dtype of every gradient that reached it (recorded by hooks while training)."""
    records: list[dict] = []
    build = softprompt.training.job.build_method

    def recording_build(*args, **kwargs):
        module = build(*args, **kwargs)
        record = {"module": module, "before": {}, "grads": {}}
        for name, param in module.named_parameters():
            if param.requires_grad:
                record["before"][name] = param.detach().clone()
                record["grads"][name] = []
                param.register_hook(lambda grad, name=name: record["grads"][name].append(
                    (grad.dtype, bool(torch.isfinite(grad).all()), bool(grad.abs().sum() > 0))))
        records.append(record)
        return module

    monkeypatch.setattr(softprompt.training.job, "build_method", recording_build)
    return records


def assert_finite_losses(summary: dict) -> None:
    assert math.isfinite(summary["val"]["loss"]) and math.isfinite(summary["test"]["loss"])
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]


def assert_trained_in_fp32(record: dict) -> None:
    """Every trainable tensor is fp32, got finite, non-zero fp32 gradients, and changed."""
    module, before = record["module"], record["before"]
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and set(trainable) == set(before)
    for name, param in trainable.items():
        assert param.dtype == torch.float32, name
        assert record["grads"][name], f"no gradient reached {name}"
        assert all(dtype == torch.float32 and finite for dtype, finite, _ in record["grads"][name]), name
        assert any(nonzero for _, _, nonzero in record["grads"][name]), name
        assert not torch.equal(param.detach(), before[name]), name


CASES = {  # every method, gradient checkpointing on, under bf16-mixed; encoder_head adds the trainable classifier
    "prompt_tuning": ["method=prompt_tuning"],
    "p_tuning": ["method=p_tuning"],  # the LSTM encoder
    "prefix_tuning": ["method=prefix_tuning", "method.reparam_hidden=16"],  # the MLP
    "p_tuning_v2": ["method=p_tuning_v2"],
    "hard_prompt": ["method=hard_prompt"],
    "encoder_head": ["backbone=tiny_random_bert", "backbone.family=encoder_head", "method.num_virtual_tokens=3"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_mixed_keeps_the_backbone_bf16_and_trains_fp32_tensors_with_checkpointing(case, make_cfg, built,
                                                                                         local_task_files):
    summary = run(make_cfg([*RUN, *local_task_overrides(local_task_files), *CASES[case],
                            "trainer.precision=bf16-mixed", "backbone.gradient_checkpointing=true"]))
    [record] = built
    backbone = record["module"].backbone
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}  # cast: no fp32 copy of frozen weights
    assert backbone.is_activation_checkpointing
    assert_finite_losses(summary)
    if case == "hard_prompt":
        assert summary["steps"] == 0 and summary["trainable_params"] == 0 and not record["before"]
        return
    assert summary["steps"] == 2
    assert_trained_in_fp32(record)
    module = record["module"]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the encoder and the prefix MLP compute in fp32 under it
        reparameterised = module.prompt_embeddings() if hasattr(module, "prompt_embeddings") else module.flat_prefix()
    assert reparameterised.dtype == torch.float32
    if case == "encoder_head":
        assert {"objective.classifier.weight", "objective.classifier.bias"} <= set(record["before"])


def test_backbone_dtype_bfloat16_loads_bf16_and_trains_an_fp32_prompt(make_cfg, built, local_task_files):
    summary = run(make_cfg([*RUN, *local_task_overrides(local_task_files), "backbone.dtype=bfloat16"]))
    [record] = built
    assert {p.dtype for p in record["module"].backbone.parameters()} == {torch.bfloat16}
    assert summary["steps"] == 2
    assert_finite_losses(summary)
    assert_trained_in_fp32(record)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.precision=16-mixed"], "trainer.precision='16-mixed' is invalid: Lightning has no float16 autocast "
                                         "on CPU (it would silently run bf16-mixed); allowed on CPU: 32-true, "
                                         "bf16-mixed"),
        (["trainer.precision=bf16-true"], "trainer.precision='bf16-true' is invalid: allowed: 32-true, bf16-mixed, "
                                          "16-mixed"),
        (["trainer.precision=bf16-mixed", "backbone.dtype=float16"],
         "backbone.dtype='float16' is invalid: trainer.precision=bf16-mixed computes in bfloat16; allowed: float32 "
         "(cast to bfloat16) or bfloat16"),
    ],
    ids=["16-mixed-on-cpu", "bf16-true", "bf16-mixed-with-a-float16-backbone"],
)
def test_unsupported_precision_is_refused_with_one_line_before_anything_loads(overrides, message, make_cfg, built):
    cfg = make_cfg([*TINY, *overrides])
    with pytest.raises(ConfigError) as raised:
        run(cfg)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert not built and not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_the_precision_rule():
    def dtype(precision: str, configured: str = "float32", **trainer) -> str:
        job = {"trainer": {"precision": precision, "accelerator": "gpu", **trainer}, "backbone": {"dtype": configured}}
        check_precision(job["trainer"], job["backbone"])
        return backbone_config_for_precision(job)["dtype"]

    assert [dtype("32-true"), dtype("32-true", "bfloat16"), dtype("32-true", "float16")] == \
        ["float32", "bfloat16", "float16"]
    assert [dtype("bf16-mixed"), dtype("bf16"), dtype("bf16-mixed", "bfloat16")] == ["bfloat16"] * 3
    assert [dtype("16-mixed"), dtype("16"), dtype("16-mixed", "float16")] == ["float16"] * 3  # fine on a GPU
    fsdp = {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}
    assert dtype("bf16-mixed", strategy=fsdp) == "float32"  # FSDP flattens the backbone with the fp32 prompt


def softprompt_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "softprompt.cli.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_nan_loss_fails_with_one_line_and_writes_no_metrics(tmp_path, local_task_files):
    """A prompt pushed past float16's range (lr 1e6) overflows the fp16 backbone to inf, then NaN."""
    result = softprompt_train(*RUN, *local_task_overrides(local_task_files), "logger=none", "backbone.dtype=float16",
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


def test_every_method_runs_through_the_cli_with_checkpointing_under_bf16_mixed(tmp_path, local_task_files):
    methods = ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "hard_prompt"]
    result = softprompt_train("-m", f"method={','.join(methods)}", *RUN, *local_task_overrides(local_task_files),
                              "logger=none", "backbone.gradient_checkpointing=true", "trainer.precision=bf16-mixed",
                              f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, method in enumerate(methods):
        job_dir = tmp_path / "sweep" / str(job)
        metrics = json.loads((job_dir / "metrics.json").read_text())
        assert metrics["method"] == method and metrics["steps"] == (0 if method == "hard_prompt" else 2)
        assert_finite_losses(metrics)
        log = (job_dir / "train.log").read_text()
        assert ("trainer.precision=bf16-mixed: frozen backbone cast to bfloat16 (backbone.dtype=float32); "
                "trainable tensors stay float32") in log


def test_gpu_check_script(tmp_path, local_task_files):
    """Without CUDA: exit status 2 and one clear line. With CUDA: one quick check on the tiny backbone passes."""
    command = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--backbone", "tiny_random", "--checks",
               "bf16_mixed", "--out", str(tmp_path / "out"), "--", *local_task_overrides(local_task_files)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    if not torch.cuda.is_available():
        assert result.returncode == 2
        assert [line for line in result.stderr.splitlines() if line.strip()] == [
            f"gpu_check: error: CUDA is not available (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}); run this on a machine with a CUDA GPU"]
        assert not (tmp_path / "out").exists()
    else:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        [check] = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["results"]
        assert check["ok"] and check["stats"]["backbone_dtypes"] == ["bfloat16"] and check["peak_cuda_mib"] > 0
