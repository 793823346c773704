"""End-to-end generation runs on tiny backbones: target loss, ROUGE/BLEU, predictions, selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_jsonl
from helpers import task_config, tiny_backbone
from softprompt.data.datamodule import PromptDataModule
from softprompt.data.task import TaskConfig
from softprompt.errors import ConfigError
from softprompt.training.run import run

ARTICLES = [
    ("Markets rise", "Shares rose sharply on Monday as investors cheered results."),
    ("Team wins cup", "The home side won the cup final after extra time."),
    ("New phone launched", "A firm unveiled a phone with a bigger screen today."),
    ("Minister resigns", "The minister quit after weeks of pressure over spending."),
]


@pytest.fixture(scope="module")
def headline_files(tmp_path_factory) -> dict[str, str]:
    """Nested columns as the hub has them for translation (`pair.src` / `pair.tgt`), flattened by us."""
    root = tmp_path_factory.mktemp("headlines")
    rows = [{"pair": {"body": body, "title": title}} for title, body in ARTICLES]
    return {"train": write_jsonl(root / "train.jsonl", rows * 4),
            "validation": write_jsonl(root / "validation.jsonl", rows[:2]),
            "test": write_jsonl(root / "test.jsonl", rows)}


def headline_task(files: dict[str, str], max_target_length: int = 32) -> TaskConfig:
    return task_config(**{"name": "local_headlines", "type": "generation", "metric": "rougeL",
            "source": {"path": "json", "data_files": files, "asset": None},
            "splits": {"train": "train", "validation": "validation", "test": "test"},
            "columns": {"text": "pair.body", "target": "pair.title"}, "text_fields": ["text"],
            "template": "Article: {text}\nHeadline:", "target_prefix": " ", "max_length": 64,
            "max_target_length": max_target_length,
            "generation": {"max_new_tokens": 8, "num_beams": 1}})


def generation_overrides(files: dict[str, str], backbone: str = "tiny_random") -> list[str]:
    return [f"backbone={backbone}", "task=bbc_headline", "task.name=local_headlines", "task.source.asset=null",
            f"task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
            f"test: {files['test']}}}",
            "task.columns={text: pair.body, target: pair.title}", "task.max_length=64",
            "task.generation.max_new_tokens=8", "trainer.max_steps=4", "trainer.val_check_interval=2",
            "data.batch_size=4", "data.eval_batch_size=8"]


@pytest.mark.parametrize("backbone", ["tiny_random", "tiny_random_t5"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_generation_run_reports_rouge_bleu_and_writes_predictions(make_cfg, headline_files, backbone, method):
    cfg = make_cfg([*generation_overrides(headline_files, backbone), f"method={method}", "method.init=vocab",
                    "method.num_virtual_tokens=3"])
    summary = run(cfg)
    out = Path(cfg.paths.output_dir)
    assert summary["task_type"] == "generation" and summary["selection_metric"] == "val/rougeL"
    assert set(summary["test"]) >= {"rouge1", "rouge2", "rougeL", "bleu", "loss"}
    assert all(0.0 <= summary["test"][k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL", "bleu"))
    predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    assert [p["row_index"] for p in predictions] == [0, 1, 2, 3]
    assert [p["reference"] for p in predictions] == [title for title, _ in ARTICLES]
    assert all(isinstance(p["prediction"], str) for p in predictions)
    best = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=False)
    assert all(not k.startswith("backbone.") for k in best["state_dict"])
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]


def test_rouge_of_the_predictions_file_is_the_reported_rouge(make_cfg, headline_files):
    from torchmetrics.text.rouge import ROUGEScore

    cfg = make_cfg([*generation_overrides(headline_files), "method=hard_prompt", "method.num_demonstrations=2"])
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
    (["task.template='Article: {text}{answer} is the gist'"], "task.template"),
])
def test_bad_generation_settings_fail_with_one_clear_line(make_cfg, headline_files, overrides, key):
    cfg = make_cfg([*generation_overrides(headline_files), "method=prefix_tuning", *overrides])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(cfg)


def test_targets_end_with_eos_are_cut_and_demonstrations_carry_them(headline_files, tmp_path):
    backbone = tiny_backbone()
    tokenizer = backbone.tokenizer
    data = {"batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "padding_side": "left", "max_samples": {}}
    cv = {"num_folds": None, "fold": 0, "seed": 0}
    module = PromptDataModule(headline_task(headline_files, max_target_length=6), data, cv,
                              "Article: {text}\nHeadline:", tokenizer, tmp_path, seed=0, num_demonstrations=1)
    module.setup()
    eos = tokenizer.eos_token_id
    row = module.splits["test"][1]
    assert row["target_ids"] == [*tokenizer(" Team wins cup", add_special_tokens=False).input_ids[:5], eos]
    batch = next(iter(module.test_dataloader()))
    assert set(batch) >= {"target_ids", "target_mask", "target_text"} and "labels" not in batch
    assert batch["target_mask"].sum(1).tolist() == [6] * len(batch["target_ids"])
    demo = tokenizer.decode(module.demonstration_ids)
    assert demo.startswith("Article: ") and "\nHeadline: " in demo and demo.endswith("\n\n")
    assert any(f"Headline: {title[:4]}\n\n" in demo for title, _ in ARTICLES)  # the cut target, no eos
