"""Precision and memory, end to end on tiny backbones: mixed precision keeps the frozen backbone in low
precision and every trainable tensor in fp32; gradient checkpointing for every method; backbone.dtype;
refused precision settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import softprompt.training.job
from softprompt.errors import ConfigError
from softprompt.training.run import run

RUN = ["backbone=tiny_random", "callbacks=none", "trainer.max_steps=2", "trainer.val_check_interval=2",
       "data.batch_size=4", "data.eval_batch_size=16", "data.max_samples.validation=null"]


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
                                                                                         local_task_overrides):
    summary = run(make_cfg([*RUN, *local_task_overrides, *CASES[case],
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


def test_backbone_dtype_bfloat16_loads_bf16_and_trains_an_fp32_prompt(make_cfg, built, local_task_overrides):
    summary = run(make_cfg([*RUN, *local_task_overrides, "backbone.dtype=bfloat16"]))
    [record] = built
    assert {p.dtype for p in record["module"].backbone.parameters()} == {torch.bfloat16}
    assert summary["steps"] == 2
    assert_finite_losses(summary)
    assert_trained_in_fp32(record)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.precision=16-mixed"], "trainer.precision='16-mixed' is invalid: Lightning has no float16 autocast "
                                         "on CPU (it would silently run bf16-mixed); allowed on CPU: auto, 32-true, "
                                         "bf16-mixed"),
        (["trainer.precision=bf16-true"], "trainer.precision='bf16-true' is invalid: allowed: auto, 32-true, "
                                          "bf16-mixed, 16-mixed"),
        (["trainer.precision=bf16-mixed", "backbone.dtype=float16"],
         "backbone.dtype='float16' is invalid: trainer.precision=bf16-mixed computes in bfloat16; allowed: float32 "
         "(cast to bfloat16) or bfloat16"),
    ],
    ids=["16-mixed-on-cpu", "bf16-true", "bf16-mixed-with-a-float16-backbone"],
)
def test_unsupported_precision_is_refused_with_one_line_before_anything_loads(overrides, message, make_cfg, built,
                                                                             tiny_overrides):
    cfg = make_cfg([*tiny_overrides, *overrides])
    with pytest.raises(ConfigError) as raised:
        run(cfg)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert not built and not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_auto_trains_in_bfloat16_where_native_and_the_prompt_predicts_in_float32_elsewhere(
        make_cfg, built, local_task_overrides, local_task_files, monkeypatch):
    import json

    import softprompt
    from softprompt.backbones.cache import BACKBONES
    from softprompt.config import precision

    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16", "amx_bf16"})  # a CPU with native bfloat16
    cfg = make_cfg([*RUN, *local_task_overrides, "method.num_virtual_tokens=3"])
    assert cfg.trainer.precision == "auto"  # the default
    summary = run(cfg)
    assert summary["precision"] == {"requested": "auto", "trainer": "32-true", "backbone_dtype": "bfloat16",
                                    "why": "CPU with amx_bf16, avx512_bf16"}
    assert_finite_losses(summary)
    record = built[0]
    assert record["module"].backbone.dtype == torch.bfloat16
    assert_trained_in_fp32(record)
    artifact = Path(cfg.paths.output_dir) / "prompt"
    spec = json.loads((artifact / "softprompt.json").read_text())
    assert spec["precision_requested"] == "auto" and spec["backbone"]["config"]["dtype"] == "bfloat16"
    reviews = [json.loads(line)["review"] for line in Path(local_task_files["test"]).read_text().splitlines()]

    BACKBONES.clear()
    native = softprompt.load(artifact)  # this machine still runs bfloat16 natively
    assert native.module.backbone.dtype == torch.bfloat16
    expected = [p for line in (Path(cfg.paths.output_dir) / "test_predictions.jsonl").read_text().splitlines()
                for p in json.loads(line)["probabilities"]]
    assert [p for s in native.score(reviews) for p in s.values()] == pytest.approx(expected, abs=1e-5)

    BACKBONES.clear()
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})  # the prompt moves to a machine without it
    emulated = softprompt.load(artifact)  # the fingerprint is checked as the weights would be in bfloat16
    assert emulated.module.backbone.dtype == torch.float32
    assert [p for s in emulated.score(reviews) for p in s.values()] == pytest.approx(expected, abs=0.01)
    BACKBONES.clear()


def test_a_float32_prompt_moves_to_a_bfloat16_machine_and_its_fingerprint_is_still_checked(
        make_cfg, local_task_overrides, local_task_files, monkeypatch, tmp_path):
    import json
    import shutil

    import softprompt
    from softprompt.artifacts.format import ArtifactError
    from softprompt.backbones.cache import BACKBONES
    from softprompt.config import precision

    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})  # trained where bfloat16 is emulated: float32
    cfg = make_cfg([*RUN, *local_task_overrides, "method.num_virtual_tokens=3"])
    run(cfg)
    artifact = Path(cfg.paths.output_dir) / "prompt"
    assert json.loads((artifact / "softprompt.json").read_text())["backbone"]["config"]["dtype"] == "float32"
    reviews = [json.loads(line)["review"] for line in Path(local_task_files["test"]).read_text().splitlines()]

    BACKBONES.clear()
    monkeypatch.delenv(precision.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})  # predicts where bfloat16 is native
    native = softprompt.load(artifact)  # the bfloat16 weights are rounded: the check reads the float32 ones
    assert native.module.backbone.dtype == torch.bfloat16
    expected = [p for line in (Path(cfg.paths.output_dir) / "test_predictions.jsonl").read_text().splitlines()
                for p in json.loads(line)["probabilities"]]
    assert [p for s in native.score(reviews) for p in s.values()] == pytest.approx(expected, abs=0.01)

    BACKBONES.clear()
    tampered = Path(shutil.copytree(artifact, tmp_path / "tampered"))
    spec = json.loads((tampered / "softprompt.json").read_text())
    spec["backbone"]["fingerprint"] = "xxh3:" + "0" * 32  # weights other than the ones it was trained on
    (tampered / "softprompt.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="does not match the artifact"):
        softprompt.load(tampered)
    BACKBONES.clear()
