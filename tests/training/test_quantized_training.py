"""Every method preset trains on every quantised backbone the CPU kernels run: the prompt gets a gradient, the
trainable tensors stay float32 and outside the backbone, and the quantised weights stay bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softprompt.backbones.loading import fingerprint
from softprompt.config.compose import config_dir
from softprompt.training.job import build_job
from softprompt.training.job_config import parse_job

pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")

PRESETS = sorted(path.stem for path in (Path(config_dir()) / "method").glob("*.yaml"))
# fp4 runs nf4's kernels with another code book: prompt tuning and the attention-level methods whose PEFT prefix
# tuning fails on 4-bit models (PEFT #2035) cover it.
RUNS = {"int8": PRESETS, "nf4": PRESETS, "int8_weight_only": PRESETS,
        "fp4": ["prompt_tuning", "prefix_tuning", "p_tuning_v2", "cartridge"]}


def quantized_job(make_cfg, overrides: list[str], scheme: str):
    cfg = make_cfg(["backbone=tiny_random", f"backbone.quantization={scheme}", "callbacks=none",
                    "data.batch_size=4", *overrides])
    return build_job(parse_job(cfg))


# One scheme after another: each quantised backbone loads once (the in-process backbone cache).
@pytest.mark.parametrize(("scheme", "preset"), [(s, preset) for s, presets in RUNS.items() for preset in presets])
def test_every_preset_trains_on_a_quantised_backbone_that_stays_bit_identical(make_cfg, local_task_overrides,
                                                                             preset, scheme):
    job = quantized_job(make_cfg, [f"method={preset}", *local_task_overrides], scheme)
    module, backbone = job.module, job.backbone
    assert backbone.quantization == scheme
    before = fingerprint(backbone.model)
    job.datamodule.setup("fit")
    batch = next(iter(job.datamodule.train_dataloader()))
    if not module.trains:
        with torch.no_grad():
            assert torch.isfinite(module.objective.loss(module, batch))
        assert fingerprint(backbone.model) == before
        return
    trainable = module.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    optimizer = torch.optim.Adam(trainable, lr=0.05)
    module.train()
    for step in range(2):
        optimizer.zero_grad()
        module.objective.loss(module, batch).backward()
        if step == 0:
            assert any(bool(torch.any(p.grad != 0)) for p in trainable if p.grad is not None)
        optimizer.step()
    assert fingerprint(backbone.model) == before
    assert not any(name.removeprefix("method.").startswith("backbone.") for name in module.trainable_state_names())


def test_a_run_on_a_4bit_backbone_records_its_quantisation_saves_no_quantised_weight_and_mixes_batches(
        make_cfg, local_task_overrides, reloaded_prompt, local_task_files, caplog, tmp_path):
    """Prefix tuning on NF4 (where PEFT's prefix tuning fails, #2035), through the whole run: Lightning's sanity
    validation runs eval-mode forwards without grad before the first step, which bitsandbytes would repack for.
    Two prompts on the one quantised backbone then share a mixed batch, each row scored as alone."""
    import json
    import shutil

    import softprompt
    from softprompt.training.run import run

    cfg = make_cfg(["backbone=tiny_random", "backbone.quantization=nf4", "method=prefix_tuning", "callbacks=default",
                    *local_task_overrides, "trainer.max_steps=3", "trainer.val_check_interval=3",
                    "trainer.num_sanity_val_steps=1"])
    summary = run(cfg)
    assert summary["steps"] == 3 and summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
    run_dir = Path(cfg.paths.output_dir)
    spec = json.loads((run_dir / "prompt" / "softprompt.json").read_text())
    assert spec["backbone"]["config"]["quantization"] == "nf4"
    checkpoint = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert checkpoint and not any(key.removeprefix("method.").startswith("backbone.") for key in checkpoint)
    assert all(type(t) is torch.Tensor and t.dtype == torch.float32 for t in checkpoint.values())
    predictor = reloaded_prompt(run_dir)  # on the prompt's own quantisation by default, as the run scored
    assert predictor.quantization is None
    assert predictor.module.backbone.model.layers[0].self_attn.q_proj.__class__.__name__ == "Linear4bit"
    reviews = [json.loads(line)["review"] for line in Path(local_task_files["test"]).read_text().splitlines()][:3]
    with caplog.at_level("WARNING", logger="softprompt"):
        full = softprompt.load(run_dir / "prompt", quantization="none")
    said = [r.getMessage() for r in caplog.records if "trained on backbone.quantization" in r.getMessage()]
    assert said == ["this prompt was trained on backbone.quantization=nf4 and predicts on none: its outputs may "
                    "differ from the run's (docs/scaling.md)"]
    records = full.predict_records(reviews)
    assert [r["quantization"] for r in records] == [{"trained": "nf4", "used": "none"}] * 3
    assert all("quantization" not in r for r in predictor.predict_records(reviews))
    other = Path(shutil.copytree(run_dir / "prompt", tmp_path / "copy"))
    mixed = softprompt.load_many({"a": run_dir / "prompt", "b": other})
    for got, want in zip(mixed.score(reviews, ["a", "b", "a"]), predictor.score(reviews), strict=True):
        assert list(got.values()) == pytest.approx(list(want.values()), abs=1e-5)


def test_fsdp_on_a_quantised_backbone_is_refused_in_one_line_with_exit_status_2(tmp_path, softprompt_train):
    result = softprompt_train("backbone=tiny_random", "backbone.quantization=nf4", "trainer=fsdp_cpu",
                              f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "softprompt: error: backbone.quantization='nf4' is invalid: FSDP cannot shard quantised weights (it flattens "
        "each unit into one floating tensor); use DDP (trainer=ddp or ddp_cpu), or backbone.quantization=none"]
