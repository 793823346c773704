"""Config checks of a training job: a bad setting is one clear line naming the key, before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from softprompt.errors import ConfigError
from softprompt.training.checks import check_optimizer
from softprompt.training.run import run


@pytest.mark.parametrize(
    ("overrides", "key", "allowed"),
    [
        (["method.init=glove"], "method.init", "random_uniform, random_normal, vocab, text, class_labels"),
        (["method.num_virtual_tokens=0"], "method.num_virtual_tokens", ">= 1"),
        (["task.template='Sentiment of the review:'"], "task.template", "{text}"),
        (["cv.num_folds=5", "cv.fold=5"], "cv.fold", "[0, 5)"),
        (["cv.mode=each"], "cv.mode", "allowed: single (one fold per job), all"),
        (["trainer=fsdp", "trainer.accelerator=cpu"], "trainer.accelerator", "on CPU use trainer=fsdp_cpu"),
        (["trainer=fsdp_cpu", "trainer.accelerator=gpu"], "trainer.accelerator", "on GPUs use trainer=fsdp"),
        (["+trainer.strategy=fsdp"], "trainer.accelerator", "on CPU use trainer=fsdp_cpu"),  # Lightning's alias
        (["cv.mode=all"], "cv.mode", "set cv.num_folds=K"),
        (["+task.verbalizer.neutral=' meh'"], "task.verbalizer.neutral", "labels are ['negative', 'positive']"),
        (["task.labels=[negative,positive,neutral]"], "task.verbalizer.neutral", "every label needs a word"),
        (["backbone.dtype=float8"], "backbone.dtype", "float32, bfloat16, float16"),
        (["optimizer.scheduler.name=wavy"], "optimizer.scheduler.name", "linear"),
        (["data.padding_side=middle"], "data.padding_side", "left, right"),
        (["task=sst2"], "task.splits.validation", "never serves model selection"),
    ],
)
def test_bad_config_is_one_clear_line(make_cfg, tiny_overrides, overrides, key, allowed):
    cfg = make_cfg([*tiny_overrides, *overrides])
    with pytest.raises(ConfigError) as raised:
        run(cfg)
    message = str(raised.value)
    assert message.startswith(key) and allowed in message and "\n" not in message
    assert not (Path(cfg.paths.output_dir) / "metrics.json").exists()


def test_missing_dataset_column_is_reported_before_training(make_cfg, tiny_overrides, local_task_overrides):
    overrides = [*tiny_overrides, *local_task_overrides, "task.columns={text: body, label: sentiment}"]
    cfg = make_cfg(overrides)
    with pytest.raises(ConfigError, match=r"^task.columns.text='body' is invalid: dataset columns are \["):
        run(cfg)


def test_a_warmup_the_scheduler_would_ignore_is_refused():
    with pytest.raises(ConfigError, match=r"warmup_steps=10 is invalid: scheduler constant has no warmup"):
        check_optimizer({"lr": 0.1, "scheduler": {"name": "constant", "warmup_steps": 10}})
    check_optimizer({"lr": 0.1, "scheduler": {"name": "constant_with_warmup", "warmup_steps": 10}})
    check_optimizer({"lr": 0.1, "scheduler": {"name": "constant", "warmup_steps": 0}})
    with pytest.raises(ConfigError, match=r"warmup_steps=-1 is invalid: must be an integer >= 0"):
        check_optimizer({"lr": 0.1, "scheduler": {"name": "linear", "warmup_steps": -1}})
