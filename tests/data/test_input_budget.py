"""task.max_length budgets the task's own tokens: virtual tokens, prefixes and demonstrations come on top,
so compared configurations read the same text."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from softprompt.config.compose import compose_train
from softprompt.data import CVSettings, DataSettings, PromptDataModule, Rendering
from softprompt.data.task import TaskConfig
from softprompt.methods import MethodConfig, method_config
from softprompt.methods.layout import prompt_template

TASK_TEMPLATE = "Review: {text}\nSentiment:"
LONG_REVIEW = "an overlong review that rambles on " * 20
DATA = {"batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "padding_side": "right", "max_samples": {}}
NO_CV = {"num_folds": None, "fold": 0, "seed": 0}
METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "hard_prompt")


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone()


@pytest.fixture(scope="module")
def long_task(tmp_path_factory, task_config, write_jsonl) -> TaskConfig:
    """One long review per split, the rest short; max_length cuts only the long ones."""
    root = tmp_path_factory.mktemp("long_task")
    rows = [{"review": LONG_REVIEW, "sentiment": "positive"}] + \
        [{"review": f"short {i}", "sentiment": ("negative", "positive")[i % 2]} for i in range(7)]
    files = {split: write_jsonl(root / f"{split}.jsonl", rows) for split in ("train", "validation", "test")}
    return task_config(name="local", source={"path": "json", "data_files": files, "asset": None},
                       columns={"text": "review", "label": "sentiment"}, text_fields=["text"],
                       labels=["negative", "positive"], template=TASK_TEMPLATE,
                       verbalizer={"negative": " bad", "positive": " good"}, max_length=48)


def method_settings(name: str, length: int) -> MethodConfig:
    """The method preset as softprompt-train composes it, at prompt length `length`."""
    overrides = [f"method={name}", *([f"method.num_virtual_tokens={length}"] if name != "hard_prompt" else [])]
    return method_config(OmegaConf.to_container(compose_train(overrides).method, resolve=True))


def text_tokens(module: PromptDataModule, split: str, index: int) -> list[int]:
    row = module.splits[split][index]
    return [token for token, slot in zip(row["input_ids"], row["slot_ids"], strict=True) if slot < 0]


def datamodule(backbone, task: dict, template: str, **options) -> PromptDataModule:
    module = PromptDataModule(task, DataSettings.from_config(DATA), CVSettings.from_config(NO_CV),
                              Rendering(template, **options), backbone.tokenizer, "/unused", seed=0)
    module.setup()
    return module


def test_a_long_example_keeps_the_same_text_for_every_prompt_length_and_method(backbone, long_task):
    seen = {}
    for name in METHODS:
        for length in (1, 20, 100):
            module = datamodule(backbone, long_task, prompt_template(method_settings(name, length), TASK_TEMPLATE))
            seen[name, length] = text_tokens(module, "train", 0)
            row = module.splits["train"][0]
            slots = sum(1 for s in row["slot_ids"] if s >= 0)
            assert len(row["input_ids"]) == 48 + slots  # the slots come on top of the budget
    reference = seen["hard_prompt", 1]
    assert len(reference) == 48
    assert backbone.tokenizer.decode(reference).endswith("\nSentiment:")
    assert all(tokens == reference for tokens in seen.values()), sorted(k for k, v in seen.items() if v != reference)


def test_truncated_examples_are_counted_per_split(backbone, long_task):
    module = datamodule(backbone, long_task, "[P:100]" + TASK_TEMPLATE)
    assert module.truncated == {"train": 1, "validation": 1, "test": 1}
    assert [bool(t) for t in module.splits["train"]["truncated"]] == [True] + [False] * 7


def test_demonstrations_do_not_shrink_the_query(backbone, long_task):
    plain = datamodule(backbone, long_task, TASK_TEMPLATE)
    shown = datamodule(backbone, long_task, TASK_TEMPLATE, num_demonstrations=2)
    assert shown.demonstration_ids
    assert text_tokens(shown, "test", 0) == text_tokens(plain, "test", 0)
    batch = shown.collator()([shown.splits["test"][0]])
    query = plain.splits["test"][0]["input_ids"]
    assert batch["input_ids"][0].tolist() == shown.demonstration_ids + query


def test_split_sizes_record_a_shrunken_validation_fold(backbone, long_task):
    data = {**DATA, "max_samples": {"validation": 2}}
    module = PromptDataModule(long_task, DataSettings.from_config(data),
                              CVSettings.from_config({"num_folds": 2, "fold": 0, "seed": 0}), Rendering(TASK_TEMPLATE),
                              backbone.tokenizer, "/unused", seed=0)
    module.setup()
    assert module.split_sizes["validation"] == {"available": 4, "used": 2}
    assert module.split_sizes["train"] == {"available": 4, "used": 4}
    assert len(module.splits["validation"]) == 2
