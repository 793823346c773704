"""Training runs on every backbone family beside the causal default: masked LM (the mask token's logits),
encoder with a head (the head trained and checkpointed with the prompt), seq2seq (right padding only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from softprompt.errors import ConfigError
from softprompt.training.run import run


def test_training_run_on_the_masked_lm_family(make_cfg, local_task_overrides):
    cfg = make_cfg(["backbone=tiny_random_bert", *local_task_overrides, "callbacks=none",
                    "task.verbalizer={negative: n, positive: p}", "task.template='Review: {text} It was{answer}.'",
                    "method.num_virtual_tokens=3", "trainer.max_steps=3", "trainer.val_check_interval=3"])
    summary = run(cfg)
    assert summary["trainable_params"] == 3 * 32 and summary["steps"] == 3
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
    assert (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_training_run_on_an_encoder_with_a_head(make_cfg, local_task_overrides):
    cfg = make_cfg(["backbone=tiny_random_bert", "backbone.family=encoder_head",
                    *local_task_overrides, "callbacks=default", "method.num_virtual_tokens=3",
                    "trainer.max_steps=3", "trainer.val_check_interval=3"])
    summary = run(cfg)
    assert summary["trainable_params"] == 3 * 32 + 32 * 2 + 2
    assert summary["folded_params"] == summary["trainable_params"]
    checkpoint = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert set(checkpoint) == {"method.prompt", "method.objective.classifier.weight",
                          "method.objective.classifier.bias"}


def test_seq2seq_run_refuses_left_padding_and_trains(make_cfg, local_task_overrides):
    overrides = ["backbone=tiny_random_t5", *local_task_overrides, "callbacks=none",
                 "task.verbalizer={negative: n, positive: p}", "method.num_virtual_tokens=3", "trainer.max_steps=3",
                 "trainer.val_check_interval=3"]
    with pytest.raises(ConfigError, match=r"data\.padding_side='left'.*right padding"):
        run(make_cfg([*overrides, "data.padding_side=left"]))
    summary = run(make_cfg([*overrides, "method=prefix_tuning", "method.init=random_normal"]))
    assert summary["steps"] == 3 and summary["folded_params"] == 3 * 6 * 2 * 32
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
