"""Templates, truncation, dynamic padding, label order and the tokenization cache."""

from __future__ import annotations

import pytest
import torch

from softprompt.data import CVSettings, DataSettings, PromptDataModule, Rendering
from softprompt.data.task import TaskConfig
from softprompt.data.templates import Template

TASK_TEMPLATE = "Review: {text}\nSentiment:"


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone()


@pytest.fixture(scope="module")
def local_task(task_config, local_task_files):
    """`local_task(**changes)`: the local sentiment task (conftest's local_task_files) as a typed task config."""

    def task(**changes) -> TaskConfig:
        return task_config(**{"name": "local", "source": {"path": "json", "data_files": local_task_files,
                                                          "asset": None},
                              "splits": {"train": "train", "validation": "validation", "test": "test"},
                              "columns": {"text": "review", "label": "sentiment"}, "text_fields": ["text"],
                              "labels": ["negative", "positive"], "template": TASK_TEMPLATE,
                              "verbalizer": {"negative": " bad", "positive": " good"}, "max_length": 64, **changes})

    return task


DATA = DataSettings.from_config({"batch_size": 4, "eval_batch_size": 5, "num_workers": 0, "padding_side": "right",
                                 "max_samples": {}})
NO_CV = CVSettings.from_config({"num_folds": None, "fold": 0, "seed": 0})


def test_template_slots_and_fields(backbone):
    template = Template.parse("[P:2] {text} [P:1] It was{answer}", ["text"])
    rendered = template.render({"text": "fine"}, backbone.tokenizer, 64)
    ids, slots = rendered.input_ids, rendered.slot_ids
    assert slots[:2] == [0, 1] and slots.count(2) == 1 and template.num_virtual_tokens == 3
    assert rendered.answer_index == len(ids) - 1
    rendered = backbone.tokenizer.decode([i for i, s in zip(ids, slots, strict=True) if s < 0])
    assert rendered == " fine  It was"


def test_truncation_cuts_the_text_and_keeps_the_template_tail(backbone):
    template = Template.parse("[P:3]" + TASK_TEMPLATE, ["text"])
    rendered = template.render({"text": "x" * 500 + "é" * 50}, backbone.tokenizer, 40)
    ids = rendered.input_ids
    assert rendered.num_text_tokens == 40 and len(ids) == 43 == len(rendered.slot_ids)  # the 3 slots come on top
    assert rendered.truncated
    assert backbone.tokenizer.decode(ids[-11:]).endswith("\nSentiment:")


def test_batches_are_dynamically_padded_and_keep_label_order(backbone, local_task, negative_reviews,
                                                             positive_reviews):
    module = PromptDataModule(local_task(), DATA, NO_CV, Rendering("[P:2]" + TASK_TEMPLATE),
                              backbone.tokenizer, "/unused", seed=0)
    module.setup()
    labels, rows, widths = [], [], []
    for batch in module.val_dataloader():
        lengths = batch["attention_mask"].sum(-1)
        widths.append(batch["input_ids"].shape[1])
        assert widths[-1] == int(lengths.max())
        assert torch.equal(batch["answer_index"], lengths - 1)
        labels += batch["labels"].tolist()
        rows += batch["row_index"].tolist()
    assert widths == sorted(widths, reverse=True)  # longest first: little padding per batch
    texts = module.splits["validation"]["text"]
    assert sorted(rows) == list(range(len(texts)))  # every example once
    assert labels == [1 if texts[r] in positive_reviews else 0 for r in rows] and set(labels) == {0, 1}
    assert all(t in positive_reviews + negative_reviews for t in module.splits["test"]["text"])


def test_second_setup_reuses_cached_tokenization(backbone, local_task, monkeypatch):
    task = local_task()
    first = PromptDataModule(task, DATA, NO_CV, Rendering(TASK_TEMPLATE), backbone.tokenizer, "/unused", seed=0)
    first.setup()

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenised although a cached tokenization exists")

    monkeypatch.setattr(Template, "render", fail)
    again = PromptDataModule(task, DATA, NO_CV, Rendering(TASK_TEMPLATE), backbone.tokenizer, "/unused", seed=0)
    again.setup()
    assert list(again.splits["train"]["input_ids"]) == list(first.splits["train"]["input_ids"])
    changed = PromptDataModule(local_task(max_length=63), DATA, NO_CV, Rendering(TASK_TEMPLATE),
                               backbone.tokenizer, "/unused", seed=0)
    with pytest.raises(AssertionError, match="re-tokenised"):
        changed.setup()  # a different setting must not hit the cache


def test_token_counts_come_from_the_training_text(backbone, local_task):
    module = PromptDataModule(local_task(), DATA, NO_CV, Rendering(TASK_TEMPLATE), backbone.tokenizer,
                              "/unused", seed=0)
    module.setup()
    counts = module.token_counts()
    text = "".join(module.splits["train"]["text"])
    assert int(counts.sum()) == len(backbone.tokenizer(text, add_special_tokens=False).input_ids)
    colon = backbone.tokenizer(":", add_special_tokens=False).input_ids[0]
    assert counts[colon] == 0  # template text is not counted


def test_demonstrations_are_stratified_seeded_and_prepended(backbone, local_task):
    task = local_task()

    def module(seed, k=4):
        m = PromptDataModule(task, DATA, NO_CV, Rendering(TASK_TEMPLATE, num_demonstrations=k),
                             backbone.tokenizer, "/unused", seed=seed)
        m.setup()
        return m

    first = module(0)
    text = backbone.tokenizer.decode(first.demonstration_ids)
    assert text.count("Sentiment:") == 4 and text.count(" good\n\n") == 2 and text.count(" bad\n\n") == 2
    assert module(0).demonstration_ids == first.demonstration_ids
    assert module(1).demonstration_ids != first.demonstration_ids
    batch = next(iter(first.test_dataloader()))
    prefix = torch.tensor(first.demonstration_ids)
    assert torch.equal(batch["input_ids"][:, : len(prefix)], prefix.expand(len(batch["input_ids"]), -1))
    assert (batch["slot_ids"][:, : len(prefix)] == -1).all()
    train_texts = set(first.splits["train"]["text"])
    demos = [line.split("Review: ")[1] for line in text.split("\n") if line.startswith("Review: ")]
    assert len(demos) == 4 and set(demos) <= train_texts  # drawn from the training fold
