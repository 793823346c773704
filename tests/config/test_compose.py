"""Composing conf/train.yaml: every group option, the experiment and sweep presets, the resolvers."""

from __future__ import annotations

import pytest
import torch

from softprompt.config.compose import compose_train
from softprompt.errors import ConfigError
from softprompt.training.checks import check_config
from softprompt.training.job import resolved_config

GROUP_OPTIONS = {
    "backbone": ["smollm2_135m", "tiny_random", "tiny_random_bert", "splade_tiny", "gpt2", "qwen2_5_0_5b",
                 "smollm2_135m_hub", "llama3_2_1b", "bert_base", "roberta_large", "t5_base_lm_adapt", "flan_t5_base",
                 "bart_base", "tiny_random_t5", "tiny_random_bart"],
    "method": ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "hard_prompt"],
    "task": ["rotten_tomatoes", "rotten_tomatoes_hub", "bbc_topic", "sst2", "rte", "boolq", "cb", "ag_news",
             "bbc_headline", "xsum", "e2e_nlg", "wmt16_ro_en"],
    "optimizer": ["adamw", "adafactor"],
    "trainer": ["default", "cpu", "gpu", "ddp", "ddp_cpu", "fsdp", "fsdp_cpu"],
    "logger": ["csv", "wandb", "tensorboard", "many_loggers", "none"],
    "callbacks": ["default", "none"],
    "cv": ["none", "kfold"],
    "hparams_search": ["optuna"],
    "experiment": ["lester_prompt_tuning", "zero_shot"],
    "debug": ["default", "fast"],
}


def test_default_composition_follows_template_conventions(make_cfg):
    cfg = make_cfg()
    assert cfg.backbone.name == "smollm2_135m" and cfg.method.name == "prompt_tuning"
    assert cfg.task.name == "rotten_tomatoes" and cfg.cv.num_folds is None
    assert {"seed", "tags", "task_name", "paths", "data"} <= set(cfg)
    check_config(resolved_config(cfg))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes_and_passes_checks(make_cfg, group, option):
    needs_folds = option in ("sst2", "rte", "boolq", "cb", "ag_news")  # no labelled validation split
    cfg = make_cfg([f"{group}={option}", *(["cv.num_folds=5"] if needs_folds else [])])
    plain = resolved_config(cfg)
    if group == "trainer" and option in ("gpu", "ddp", "fsdp") and not torch.cuda.is_available():
        with pytest.raises(ConfigError) as raised:  # refused in one line before anything loads
            check_config(plain)
        assert str(raised.value).startswith("trainer.accelerator='gpu'") and "use trainer=" in str(raised.value)
        return
    check_config(plain)
    if group in ("backbone", "method", "task", "optimizer"):
        assert cfg[group]  # the group really was selected


@pytest.mark.parametrize("task", ["bbc_headline", "xsum", "e2e_nlg", "wmt16_ro_en"])
@pytest.mark.parametrize("method", GROUP_OPTIONS["method"])
def test_every_method_composes_with_every_generation_task(make_cfg, task, method):
    cfg = make_cfg([f"task={task}", f"method={method}"])
    check_config(resolved_config(cfg))
    assert cfg.task.type == "generation" and cfg.callbacks.model_checkpoint.monitor == f"val/{cfg.task.metric}"
    if method == "prompt_tuning":
        assert cfg.method.init == "vocab"  # the task's prompt_init: it has no class labels


def test_common_overrides_reach_the_composed_config(make_cfg):
    cfg = make_cfg(["method.num_virtual_tokens=7", "method.init=vocab", "optimizer.lr=0.1", "cv.num_folds=4",
                    "cv.fold=3", "seed=5", "trainer.max_steps=9", "backbone=tiny_random", "task=sst2"])
    assert (cfg.method.num_virtual_tokens, cfg.method.init, cfg.optimizer.lr) == (7, "vocab", 0.1)
    assert (cfg.cv.num_folds, cfg.cv.fold, cfg.seed, cfg.trainer.max_steps) == (4, 3, 5, 9)
    assert (cfg.backbone.name, cfg.task.name) == ("tiny_random", "sst2")


def test_wandb_groups_a_sweep_and_names_the_fold():
    from softprompt.config.resolvers import fold_name, sweep_group

    assert sweep_group("RunMode.MULTIRUN", "train", "/logs/train/multiruns/2026-11-26_14-00") == \
        "train/2026-11-26_14-00"
    assert sweep_group("RunMode.RUN", "train", "/logs/x") is None
    assert (fold_name(5, 2), fold_name(None, 0)) == ("fold2", "no_cv")


def test_wandb_logger_config_resolves(make_cfg):
    cfg = make_cfg(["logger=wandb", "cv.num_folds=5", "cv.fold=3", "experiment=lester_prompt_tuning"])
    wandb = resolved_config(cfg)["logger"]["wandb"]
    assert (wandb["job_type"], wandb["group"], wandb["tags"]) == ("fold3", None, ["lester"])


def test_experiment_overrides_defaults(make_cfg):
    cfg = make_cfg(["experiment=lester_prompt_tuning"])
    assert cfg.optimizer.lr == 0.3 and "Adafactor" in cfg.optimizer._target_


def test_lester_prompt_tuning_trains_with_the_lm_loss_at_adafactor_lr_0_3():
    cfg = compose_train(["experiment=lester_prompt_tuning"])
    assert cfg.task.loss == "lm" and cfg.optimizer.lr == 0.3 and "Adafactor" in cfg.optimizer._target_


@pytest.mark.parametrize(("method", "lr"), [("prompt_tuning", 0.03), ("prefix_tuning", 1e-4), ("p_tuning", 0.003)])
def test_adafactor_follows_each_methods_preset_lr(method, lr):
    cfg = compose_train(["optimizer=adafactor", f"method={method}"])
    assert cfg.optimizer.lr == pytest.approx(lr)
