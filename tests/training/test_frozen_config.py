"""The composed config is only read: a job runs from a read-only DictConfig (a plain job, a task mixture given as
`task=[a,b]`, a prompt transfer, every fold of cv.mode=all) and leaves it as Hydra composed it; what the run resolved
(precision, mixture, transfer source) is in the parsed job and in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from softprompt.training.cv import run_job
from softprompt.training.job_config import parse_job
from softprompt.training.run import run

STEPS = ["backbone=tiny_random", "method.num_virtual_tokens=3", "trainer.max_steps=2", "trainer.val_check_interval=2",
         "data.batch_size=4", "data.eval_batch_size=8"]


def frozen(cfg: DictConfig) -> tuple[DictConfig, dict]:
    """`cfg` made read-only, and its content (unresolved) to compare with after the run."""
    OmegaConf.set_readonly(cfg, True)
    return cfg, OmegaConf.to_container(cfg, resolve=False)


def test_a_job_runs_from_a_read_only_config_and_leaves_it_unchanged(make_cfg, local_task_overrides):
    cfg, before = frozen(make_cfg([*STEPS, *local_task_overrides, "callbacks=default"]))
    summary = run(cfg)
    assert OmegaConf.to_container(cfg, resolve=False) == before
    assert cfg.trainer.precision == "auto" and summary["precision"]["requested"] == "auto"
    assert summary["precision"]["trainer"] == parse_job(cfg).plain["trainer"]["precision"]
    assert summary["steps"] == 2 and json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text()) == summary


@pytest.fixture
def topic_files(write_jsonl, tmp_path) -> dict[str, str]:
    """A tiny dataset with bbc_topic's labels, as local jsonl files (`body`, `topic` columns)."""
    topics = [{"body": text, "topic": topic} for topic in ("business", "entertainment", "politics", "sports", "tech")
              for text in (f"{topic} news today", f"more {topic} here")]
    return {split: write_jsonl(tmp_path / f"{split}.jsonl", topics) for split in ("train", "validation", "test")}


def test_a_task_list_from_the_command_line_runs_as_a_mixture_without_changing_the_config(
        make_cfg, local_task_files, topic_files):
    tasks = [{"task": "rotten_tomatoes", "name": "sentiment", "columns": {"text": "review", "label": "sentiment",
                                                                         "group": None},
              "source": {"asset": None, "data_files": dict(local_task_files)}},
             {"task": "bbc_topic", "name": "topic", "max_length": 32, "columns": {"text": "body", "label": "topic"},
              "source": {"asset": None, "data_files": topic_files}}]
    cfg, before = frozen(make_cfg([*STEPS, "callbacks=none"]))
    summary = run(cfg, tasks)
    assert OmegaConf.to_container(cfg, resolve=False) == before and cfg.tasks is None
    assert cfg.task.name == "rotten_tomatoes"  # the composed task node; the job ran the mixture
    assert summary["task"] == "sentiment+topic" and summary["tasks"] == ["sentiment", "topic"]
    assert summary["selection_metric"] == "val/macro"


def test_a_transfer_job_leaves_its_config_unchanged_and_records_its_source(
        make_cfg, local_task_overrides, topic_files, tmp_path):
    files = topic_files
    source = ["transfer.source_task.name=local_topic", "transfer.source_task.source.asset=null",
              f"transfer.source_task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
              f"test: {files['test']}}}", "transfer.source_task.columns={text: body, label: topic}"]
    cfg, before = frozen(make_cfg([*STEPS, *local_task_overrides, "experiment=prompt_transfer", "callbacks=none",
                                   "cv=none", *source, "transfer.enabled=true",
                                   f"paths.cache_dir={tmp_path / 'cache'}"]))
    summary = run(cfg)
    assert OmegaConf.to_container(cfg, resolve=False) == before
    assert cfg.method.init != "from_artifact" and cfg.method.init_artifact is None
    assert summary["init"] == "from_artifact" and summary["transfer_source"] == "local_topic"
    assert summary["method_config"]["init_artifact"] == str(Path(summary["transfer"]["source_run"]) / "prompt")


def test_every_fold_of_a_cv_all_job_runs_from_a_read_only_config(make_cfg, local_task_overrides, tmp_path):
    cfg, before = frozen(make_cfg([*STEPS, *local_task_overrides, "callbacks=none", "cv=kfold", "cv.num_folds=2",
                                   "cv.mode=all"], output_dir=tmp_path / "job"))
    score = run_job(cfg, run)
    assert OmegaConf.to_container(cfg, resolve=False) == before
    folds = [json.loads((tmp_path / "job" / f"fold_{k}" / "metrics.json").read_text()) for k in (0, 1)]
    assert [fold["fold"] for fold in folds] == [0, 1]
    assert score == pytest.approx(sum(fold["val"]["acc"] for fold in folds) / 2)
