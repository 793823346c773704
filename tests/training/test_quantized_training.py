"""Every method preset trains on every quantised backbone the CPU kernels run: the prompt gets a gradient, the
trainable tensors stay float32 and outside the backbone, and the quantised weights stay bit-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softprompt.backbones.loading import fingerprint
from softprompt.config.compose import config_dir
from softprompt.training.checks import check_config
from softprompt.training.job import build_job, resolved_config

pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")

PRESETS = sorted(path.stem for path in (Path(config_dir()) / "method").glob("*.yaml"))
# fp4 runs nf4's kernels with another code book: the attention-level methods PEFT cannot run on 4-bit (#2035)
# and prompt tuning cover it.
RUNS = {"int8": PRESETS, "nf4": PRESETS, "int8_weight_only": PRESETS,
        "fp4": ["prompt_tuning", "prefix_tuning", "p_tuning_v2", "cartridge"]}


def quantized_job(make_cfg, overrides: list[str], scheme: str):
    cfg = make_cfg(["backbone=tiny_random", f"backbone.quantization={scheme}", "callbacks=none",
                    "data.batch_size=4", *overrides])
    plain = resolved_config(cfg)
    check_config(plain)
    return build_job(plain, Path(cfg.paths.cache_dir).expanduser())


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
    assert not any(name.startswith("backbone.") for name in module.trainable_state_names())
