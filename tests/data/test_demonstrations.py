"""In-context demonstrations: each is the template with its answer in place (no mask, slots or special tokens),
and they go after the query's leading special tokens, before the query and its virtual-token slots."""

from __future__ import annotations

import pytest
import torch

from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.data import CVSettings, DataSettings, PromptDataModule, Rendering

DATA = DataSettings.from_config({"batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "padding_side": "right",
                                 "max_samples": {}})
NO_CV = CVSettings.from_config({"num_folds": None, "fold": 0, "seed": 0})
MASKED_TEMPLATE = "Review: {text} It was{answer}."
CAUSAL_TEMPLATE = "Review: {text}\nSentiment:"


@pytest.fixture(scope="module")
def datamodule(tiny_backbone, task_config, local_task_files):
    """`datamodule(architecture, template, k=4)`: the local sentiment task with k demonstrations, set up."""

    def make(architecture: str, template: str, k: int = 4) -> PromptDataModule:
        task = task_config(name="local", source={"path": "json", "data_files": local_task_files, "asset": None},
                           splits={"train": "train", "validation": "validation", "test": "test"},
                           columns={"text": "review", "label": "sentiment"}, text_fields=["text"],
                           labels=["negative", "positive"], template=template,
                           verbalizer={"negative": " bad", "positive": " good"}, max_length=64)
        backbone = tiny_backbone(architecture)
        adapter = FAMILY_ADAPTERS[backbone.family]
        rendering = Rendering(template, num_demonstrations=k, answer_token_id=adapter.answer_token_id(
            backbone.tokenizer), answer_must_end=adapter.answer_is_next_token)
        module = PromptDataModule(task, DATA, NO_CV, rendering, backbone.tokenizer, "/unused", seed=0)
        module.setup()
        return module

    return make


def demonstration_span(module: PromptDataModule) -> tuple[dict[str, torch.Tensor], slice]:
    batch = next(iter(module.test_dataloader()))
    start = len(module.specials[0])
    return batch, slice(start, start + len(module.demonstration_ids))


def test_masked_lm_demonstrations_carry_their_label_word_and_follow_cls(datamodule):
    module = datamodule("bert", "[P:2]" + MASKED_TEMPLATE)
    tokenizer = module.tokenizer
    batch, span = demonstration_span(module)
    rows = len(batch["input_ids"])
    assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()  # the query's [CLS] stays first
    assert (batch["input_ids"][:, span] == torch.tensor(module.demonstration_ids)).all()
    demos = tokenizer.decode(module.demonstration_ids)
    assert demos.count("It was good.") + demos.count("It was bad.") == 4
    for special in (tokenizer.mask_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id):
        assert special not in module.demonstration_ids
    assert ((batch["input_ids"] == tokenizer.mask_token_id).sum(-1) == 1).all()  # the query's own mask only
    assert (batch["input_ids"][torch.arange(rows), batch["answer_index"]] == tokenizer.mask_token_id).all()
    assert (batch["slot_ids"][:, span] == -1).all()
    after = batch["slot_ids"][:, span.stop:span.stop + 2]
    assert (after == torch.tensor([0, 1])).all()  # the query's virtual tokens follow the demonstrations


def test_causal_lm_demonstrations_end_with_their_answer_and_hold_no_slots(datamodule):
    module = datamodule("llama", "[P:3]" + CAUSAL_TEMPLATE)
    tokenizer = module.tokenizer
    demos = tokenizer.decode(module.demonstration_ids)
    assert demos.count("Sentiment: good\n\n") == 2 and demos.count("Sentiment: bad\n\n") == 2
    assert tokenizer.pad_token_id not in module.demonstration_ids
    batch, span = demonstration_span(module)
    assert (batch["slot_ids"][:, span] == -1).all()
    assert ((batch["slot_ids"] >= 0).sum(-1) == 3).all()
    last = batch["answer_index"]
    assert tokenizer.decode(batch["input_ids"][0, last[0] - 9:last[0] + 1]) == "Sentiment:"


@pytest.mark.parametrize("architecture", ["t5", "bart"])
def test_seq2seq_demonstrations_put_the_answer_word_in_the_encoder_input(architecture, datamodule):
    module = datamodule(architecture, CAUSAL_TEMPLATE)
    tokenizer = module.tokenizer
    demos = tokenizer.decode(module.demonstration_ids)
    assert demos.count("Sentiment: good") + demos.count("Sentiment: bad") == 4
    batch, span = demonstration_span(module)
    assert (batch["input_ids"][:, span] == torch.tensor(module.demonstration_ids)).all()
    trailing = module.specials[1]
    if trailing:  # the query keeps its closing special token after its own text, none inside the demonstrations
        assert not set(trailing) & set(module.demonstration_ids)


def test_demonstrations_are_the_same_for_every_method(datamodule):
    plain = datamodule("bert", MASKED_TEMPLATE)
    slotted = datamodule("bert", "[P:5]" + MASKED_TEMPLATE)
    assert plain.demonstration_ids == slotted.demonstration_ids
