"""Generation tasks in the DataModule: targets end with eos and are cut to max_target_length; demonstrations
carry their (cut) target, without eos."""

from __future__ import annotations

from softprompt.data import CVSettings, DataSettings, PromptDataModule, Rendering


def test_targets_end_with_eos_are_cut_and_demonstrations_carry_them(headline_files, headlines, tiny_backbone,
                                                                     task_config, tmp_path):
    task = task_config(name="local_headlines", type="generation", metric="rougeL",
                       source={"path": "json", "data_files": headline_files, "asset": None},
                       splits={"train": "train", "validation": "validation", "test": "test"},
                       columns={"text": "pair.body", "target": "pair.title"}, text_fields=["text"],
                       template="Article: {text}\nHeadline:", target_prefix=" ", max_length=64, max_target_length=6,
                       generation={"max_new_tokens": 8, "num_beams": 1})
    backbone = tiny_backbone()
    tokenizer = backbone.tokenizer
    data = {"batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "padding_side": "left", "max_samples": {}}
    cv = {"num_folds": None, "fold": 0, "seed": 0}
    rendering = Rendering("Article: {text}\nHeadline:", num_demonstrations=1)
    module = PromptDataModule(task, DataSettings.from_config(data), CVSettings.from_config(cv), rendering, tokenizer,
                              tmp_path, seed=0)
    module.setup()
    eos = tokenizer.eos_token_id
    row = module.splits["test"][1]
    assert row["target_ids"] == [*tokenizer(" Team wins cup", add_special_tokens=False).input_ids[:5], eos]
    batch = next(iter(module.test_dataloader()))
    assert set(batch) >= {"target_ids", "target_mask", "target_text"} and "labels" not in batch
    assert batch["target_mask"].sum(1).tolist() == [6] * len(batch["target_ids"])
    demo = tokenizer.decode(module.demonstration_ids)
    assert demo.startswith("Article: ") and "\nHeadline: " in demo and demo.endswith("\n\n")
    assert any(f"Headline: {title[:4]}\n\n" in demo for title, _ in headlines)  # the cut target, no eos
