"""End-to-end generation runs on tiny backbones: target loss, ROUGE/BLEU, predictions, selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from softprompt.errors import ConfigError
from softprompt.training.run import run


@pytest.fixture(scope="module")
def generation_overrides(headline_task_overrides):
    """`generation_overrides(backbone="tiny_random")`: 4 steps of headline generation (conftest's headlines)."""

    def overrides(backbone: str = "tiny_random") -> list[str]:
        return [f"backbone={backbone}", *headline_task_overrides, "task.max_length=64",
                "task.generation.max_new_tokens=8", "trainer.max_steps=4", "trainer.val_check_interval=2",
                "data.batch_size=4", "data.eval_batch_size=8"]

    return overrides


@pytest.mark.parametrize("backbone", ["tiny_random", "tiny_random_t5"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_generation_run_reports_rouge_bleu_and_writes_predictions(make_cfg, generation_overrides, headlines, backbone,
                                                                   method):
    cfg = make_cfg([*generation_overrides(backbone), f"method={method}", "method.init=vocab",
                    "method.num_virtual_tokens=3"])
    summary = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert summary["task_type"] == "generation" and summary["selection_metric"] == "val/rougeL"
    assert set(summary["test"]) >= {"rouge1", "rouge2", "rougeL", "bleu", "loss"}
    assert all(0.0 <= summary["test"][k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL", "bleu"))
    predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [p["row_index"] for p in predictions] == [0, 1, 2, 3]
    assert [p["reference"] for p in predictions] == [title for title, _ in headlines]
    assert all(isinstance(p["prediction"], str) for p in predictions)
    best = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)
    assert all(not k.startswith("method.backbone.") for k in best["state_dict"])
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]


def test_rouge_of_the_predictions_file_is_the_reported_rouge(make_cfg, generation_overrides):
    from torchmetrics.text.rouge import ROUGEScore

    cfg = make_cfg([*generation_overrides(), "method=hard_prompt", "method.num_demonstrations=2"])
    summary = run(cfg)
    rows = [json.loads(line) for line in (Path(cfg.paths.output_dir) / "test_predictions.jsonl").open()]
    rouge = ROUGEScore(rouge_keys=("rougeL",))([r["prediction"] for r in rows], [r["reference"] for r in rows])
    assert summary["trainable_params"] == 0
    assert summary["test"]["rougeL"] == pytest.approx(float(rouge["rougeL_fmeasure"]))


@pytest.mark.parametrize(("overrides", "key"), [
    (["backbone=tiny_random_bert"], "task.type"),
    (["method=prompt_tuning", "method.init=class_labels"], "method.init"),
    (["task.metric=acc"], "task.metric"),
    (["task.generation.num_beams=0"], "task.generation.num_beams"),
    (["task.references=all"], "task.references"),
    (["task.template='Article: {text}{answer} is the gist'"], "task.template"),
])
def test_bad_generation_settings_fail_with_one_clear_line(make_cfg, generation_overrides, overrides, key):
    cfg = make_cfg([*generation_overrides(), "method=prefix_tuning", *overrides])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg)
