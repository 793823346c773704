"""Prompt transfer (SPoT) as experiment=prompt_transfer runs it: the source prompt is trained once on the source
task, every transfer job starts from exactly its tensors, the baseline arm runs the same folds from the usual init,
and what cannot be a transfer is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import softprompt.training.job
from softprompt.errors import ConfigError
from softprompt.training.run import run

TOPICS = {"business": ["Shares fell as profits slipped", "The bank raised rates again"],
          "entertainment": ["The film topped the box office", "A singer released a new album"],
          "politics": ["The minister faced questions in parliament", "Voters go to the polls on Friday"],
          "sports": ["The striker scored twice in the final", "She won the tennis title in straight sets"],
          "tech": ["A new chip makes phones faster", "The software update fixes a security flaw"]}
RUN = ["experiment=prompt_transfer", "backbone=tiny_random", "callbacks=none", "trainer.max_steps=2",
       "trainer.val_check_interval=2", "data.batch_size=4", "data.eval_batch_size=8", "method.num_virtual_tokens=3"]


@pytest.fixture(scope="module")
def source_overrides(tmp_path_factory, write_jsonl) -> list[str]:
    root = tmp_path_factory.mktemp("topic_source")
    rows = [{"body": text, "topic": topic} for topic, texts in TOPICS.items() for text in texts]
    files = {split: write_jsonl(root / f"{split}.jsonl", rows) for split in ("train", "validation", "test")}
    return ["transfer.source_task.name=local_topic", "transfer.source_task.source.asset=null",
            f"transfer.source_task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
            f"test: {files['test']}}}", "transfer.source_task.columns={text: body, label: topic}"]


@pytest.fixture
def starts(monkeypatch) -> list[torch.Tensor]:
    """The prompt each job's module starts from (before training)."""
    found: list[torch.Tensor] = []
    build = softprompt.training.job.build_method

    def recording_build(*args, **kwargs):
        module = build(*args, **kwargs)
        found.append(module.prompt.detach().clone())
        return module

    monkeypatch.setattr(softprompt.training.job, "build_method", recording_build)
    return found


def test_every_fold_starts_from_the_one_source_prompt_and_the_baseline_from_the_usual_init(
        make_cfg, local_task_overrides, source_overrides, starts, tmp_path):
    common = [*RUN, *local_task_overrides, *source_overrides, f"paths.cache_dir={tmp_path / 'cache'}"]
    fold0 = run(make_cfg([*common, "transfer.enabled=true", "cv.fold=0"], output_dir=tmp_path / "t0"))
    assert len(starts) == 2  # the source job, then the target
    source_run = Path(fold0["transfer"]["source_run"])
    assert source_run.parent == tmp_path / "cache" / "prompt_transfer"
    source = json.loads((source_run / "metrics.json").read_text())
    assert source["task"] == "local_topic" and source["fold"] is None  # its own validation split
    assert source["init"] == "class_labels" and source["transfer"] is None
    source_prompt = load_file(source_run / "prompt" / "softprompt.safetensors")["prompt"]
    assert torch.equal(starts[1], source_prompt)  # the target starts exactly from the source's tensors
    assert fold0["transfer_source"] == "local_topic" and fold0["init"] == "from_artifact"
    assert fold0["transfer"]["source_val"] == source["val"]

    fold1 = run(make_cfg([*common, "transfer.enabled=true", "cv.fold=1"], output_dir=tmp_path / "t1"))
    assert len(starts) == 3 and torch.equal(starts[2], source_prompt)  # reused, not trained again
    assert fold1["transfer"]["source_run"] == str(source_run)
    baseline = run(make_cfg([*common, "transfer.enabled=false", "cv.fold=0"], output_dir=tmp_path / "b0"))
    assert baseline["transfer"] is None and baseline["transfer_source"] is None
    assert baseline["init"] == "class_labels" and not torch.equal(starts[3], source_prompt)
    assert baseline["split_sizes"] == fold0["split_sizes"]  # the same fold of the same data


@pytest.mark.parametrize(("overrides", "message"), [
    (["transfer.source_task.name=local"], r"transfer.source_task.name='local' is invalid: the source task must "
                                          r"differ from the target task"),
    (["method.init=from_artifact", "method.init_artifact=/nowhere"],
     r"method.init='from_artifact' is invalid: transfer.enabled=true sets the target's start"),
    (["+trainer.strategy=ddp"], r"transfer.enabled=True is invalid: trains its source prompt inside the job"),
])
def test_what_cannot_be_a_transfer_is_refused_before_anything_loads(overrides, message, make_cfg,
                                                                    local_task_overrides, source_overrides):
    cfg = make_cfg([*RUN, *local_task_overrides, *source_overrides, "transfer.enabled=true", "cv.fold=0",
                    *overrides])
    with pytest.raises(ConfigError, match=message):
        run(cfg)
