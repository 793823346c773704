"""Multi-task runs: a mixture of tasks, each with its own template, verbalizer, folds and metrics; metrics per task
and their macro mean, selection on val/macro; mixing weights; artifacts that predict for one task of the mixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import softprompt
from softprompt.artifacts.format import ArtifactError
from softprompt.config.mixture import task_list_override, tasks_from_overrides, with_task_mixture
from softprompt.data.mixture import mixture_indices
from softprompt.errors import ConfigError
from softprompt.training.job import build_job
from softprompt.training.job_config import parse_job, resolved_config
from softprompt.training.run import run

TOPICS = {"business": ["shares fell", "profits rose", "bank merger", "oil prices"],
          "entertainment": ["film awards", "pop star", "new album", "tv show"],
          "politics": ["election call", "minister quits", "new law", "vote today"],
          "sports": ["cup final", "team wins", "match drawn", "new coach"],
          "tech": ["new phone", "chip maker", "web browser", "robot arm"]}


@pytest.fixture(scope="module")
def topic_files(tmp_path_factory, write_jsonl) -> dict[str, str]:
    """A small 5-topic dataset (bbc_topic's labels) as local jsonl files with a `body` and a `topic` column."""
    root = tmp_path_factory.mktemp("topics")
    rows = [{"body": texts[i], "topic": topic} for i in range(4) for topic, texts in TOPICS.items()]
    return {"train": write_jsonl(root / "train.jsonl", rows * 2),
            "validation": write_jsonl(root / "val.jsonl", rows[:10]),
            "test": write_jsonl(root / "test.jsonl", rows[10:])}


def _files(files: dict[str, str]) -> str:
    return "{" + ", ".join(f"{role}: {path}" for role, path in files.items()) + "}"


@pytest.fixture(scope="module")
def entries(local_task_files, topic_files) -> dict[str, str]:
    """`tasks` entries (override syntax) for the local sentiment task and the local topic task."""
    sentiment = ("task: rotten_tomatoes, name: sentiment, columns: {text: review, label: sentiment, group: null}, "
                 f"source: {{asset: null, data_files: {_files(local_task_files)}}}")
    topic = ("task: bbc_topic, name: topic, max_length: 32, columns: {text: body, label: topic}, "
             f"source: {{asset: null, data_files: {_files(topic_files)}}}")
    return {"sentiment": "{" + sentiment + "}", "topic": "{" + topic + "}"}


def _weighted(entry: str, weight: float) -> str:
    return entry.replace("{task:", f"{{weight: {weight}, task:", 1)


STEPS = ["backbone=tiny_random", "callbacks=default", "method.num_virtual_tokens=3", "trainer.max_steps=4",
         "trainer.val_check_interval=2"]


@pytest.fixture(scope="module")
def mixture_run(run_job, entries, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("mixture") / "run"
    return run_job([*STEPS, "logger=none", f"tasks=[{entries['sentiment']},{entries['topic']}]"], out), out


def test_weighted_mixing_draws_each_task_its_share_without_repeats_until_exhausted():
    indices = mixture_indices([10, 30], [3.0, 1.0], seed=0)
    assert len(indices) == 40
    first, second = indices[indices < 10], indices[indices >= 10]
    assert len(first) == 30 and len(second) == 10
    assert sorted(first[:10]) == list(range(10)) and len(set(first[10:20])) == 10  # whole rounds, then again
    assert len(set(second.tolist())) == 10  # under its share: distinct examples
    assert np.array_equal(indices, mixture_indices([10, 30], [3.0, 1.0], seed=0))
    assert not np.array_equal(indices, mixture_indices([10, 30], [3.0, 1.0], seed=1))


def test_task_list_on_the_command_line_reads_as_a_tasks_list(make_cfg):
    assert task_list_override(["backbone=tiny_random", "task=[rotten_tomatoes,bbc_topic]"]) == \
        ["rotten_tomatoes", "bbc_topic"]
    assert task_list_override(["task=bbc_topic"]) is None
    shorthand = make_cfg(["task=[rotten_tomatoes,bbc_topic]"])
    shorthand = with_task_mixture(shorthand, tasks_from_overrides(shorthand, ["task=[rotten_tomatoes,bbc_topic]"]))
    listed = with_task_mixture(make_cfg(["tasks=[rotten_tomatoes,bbc_topic]"]))
    assert OmegaConf.to_container(shorthand.task) == OmegaConf.to_container(listed.task)
    task = listed.task
    assert task.name == "rotten_tomatoes+bbc_topic" and task.type == "mixture" and task.weights is None
    assert task.tasks.bbc_topic.template == "Article: {text}\nTopic:"  # each task keeps its own config
    assert task.tasks.rotten_tomatoes.verbalizer.positive == " positive"
    assert task.max_length == 256 and task.prompt_init == "class_labels"
    assert resolved_config(listed)["callbacks"]["model_checkpoint"]["monitor"] == "val/macro"


@pytest.mark.parametrize(("tasks", "key", "message"), [
    ("[rotten_tomatoes,bbc_headline]", "tasks", "mixes task types classification, generation"),
    ("[{task: rotten_tomatoes, weight: 2},bbc_topic]", r"tasks\[1\]\.weight", "give every task a weight"),
    ("[rotten_tomatoes,no_such_task]", r"tasks\[1\]\.task", "not a task config"),
    ("[rotten_tomatoes,rotten_tomatoes]", r"tasks\[1\]\.task", "listed twice"),
    ("[{task: rotten_tomatoes, weight: 1},{task: bbc_topic, weight: -1}]", r"tasks\[bbc_topic\]\.weight",
     "must be a number > 0"),
    ("[rotten_tomatoes,{task: bbc_topic, max_length: 0}]", r"tasks\[bbc_topic\]\.max_length", ">= 1"),
    ("[rotten_tomatoes]", "tasks", "at least two"),
])
def test_bad_task_lists_are_one_line_naming_the_entry(make_cfg, tasks, key, message):
    from softprompt.training.checks import check_config

    cfg = make_cfg([f"tasks={tasks}"])
    with pytest.raises(ConfigError, match=rf"{key}=.*{message}"):
        check_config(resolved_config(with_task_mixture(cfg)))


def test_task_keys_beside_a_task_list_are_refused(make_cfg):
    overrides = ["task=[rotten_tomatoes,bbc_topic]", "task.max_length=64"]
    with pytest.raises(ConfigError, match=r"task='task\.max_length=64'.*per task"):
        tasks_from_overrides(make_cfg(overrides), overrides)


def test_mixture_run_reports_each_task_and_their_macro_mean(mixture_run):
    summary, out = mixture_run
    assert summary["task"] == "sentiment+topic" and summary["tasks"] == ["sentiment", "topic"]
    assert summary["selection_metric"] == "val/macro"
    for stage in ("val", "test"):
        metrics = summary[stage]
        assert {"sentiment/acc", "sentiment/f1", "topic/acc", "topic/f1", "macro"} <= set(metrics)
        assert metrics["macro"] == pytest.approx((metrics["sentiment/acc"] + metrics["topic/acc"]) / 2)
    assert summary["split_sizes"]["topic"]["test"]["used"] == 10
    assert summary["split_sizes"]["sentiment"]["test"]["used"] == 10
    predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    by_task = {task: [p for p in predictions if p["task"] == task] for task in ("sentiment", "topic")}
    assert [len(by_task["sentiment"][0]["probabilities"]), len(by_task["topic"][0]["probabilities"])] == [2, 5]
    accuracy = np.mean([p["prediction"] == p["label"] for p in by_task["topic"]])
    assert summary["test"]["topic/acc"] == pytest.approx(accuracy)
    # the validation pass behind metrics.json's val: one file, each row naming its task, as the test predictions
    rows = [json.loads(line) for line in (out / "val_predictions.jsonl").read_text().splitlines()]
    assert [row["task"] for row in rows] == sorted(row["task"] for row in rows)
    for task in ("sentiment", "topic"):
        mine = [row for row in rows if row["task"] == task]
        assert [row["row_index"] for row in mine] == sorted(row["row_index"] for row in mine)
        assert summary["val"][f"{task}/acc"] == pytest.approx(np.mean([r["prediction"] == r["label"] for r in mine]))


def test_each_task_renders_its_own_template_and_keeps_its_own_folds(make_cfg, entries, local_task_files):
    tasks = f"tasks=[{entries['sentiment']},{entries['topic']}]"
    cfg = make_cfg([*STEPS, tasks, "cv=kfold", "cv.num_folds=2", "cv.fold=1"])
    job = build_job(parse_job(cfg))
    mixture = job.datamodule
    tokenizer = job.backbone.tokenizer
    validation = mixture.splits["validation"]
    for task_id, (name, member) in enumerate(mixture.members.items()):
        rows = [r for r in validation if r["task_id"] == task_id]
        assert [r["row_index"] for r in rows] == list(member.splits["validation"]["row_index"])
        text = tokenizer.decode(rows[0]["input_ids"])
        assert ("Topic:" in text) == (name == "topic") and ("Sentiment:" in text) == (name == "sentiment")
    # The sentiment task's folds are the ones it has when trained alone.
    single = make_cfg([*STEPS, "cv=kfold", "cv.num_folds=2", "cv.fold=1", "task.name=sentiment",
                       "task.source.asset=null", f"+task.source.data_files={_files(local_task_files)}",
                       "task.columns={text: review, label: sentiment, group: null}"])
    alone = build_job(parse_job(single)).datamodule
    assert list(alone.splits["validation"]["row_index"]) == \
        list(mixture.members["sentiment"].splits["validation"]["row_index"])
    batch = next(iter(mixture.train_dataloader()))
    assert set(batch["task_ids"].tolist()) <= {0, 1}


def test_mixture_scores_equal_each_task_scored_alone(make_cfg, entries):
    import torch

    cfg = make_cfg([*STEPS, f"tasks=[{entries['sentiment']},{entries['topic']}]"])
    job = build_job(parse_job(cfg))
    module, objective = job.module.eval(), job.module.objective
    batch = job.datamodule.collator()([*job.datamodule.splits["test"].select(range(8, 13))])  # both tasks
    assert sorted(set(batch["task_ids"].tolist())) == [0, 1]
    with torch.no_grad():
        joint = objective.loss(module, batch)
        parts = [(member.loss(module, part), len(part["task_ids"])) for _, member, part in objective.parts(batch)]
        alone = [objective.member(int(row["task_id"])).outputs(module, job.datamodule.collator()([row]))
                 for row in job.datamodule.splits["test"].select(range(8, 13))]
        together = {name: member.outputs(module, part) for name, member, part in objective.parts(batch)}
    assert joint.item() == pytest.approx(sum(loss.item() * n for loss, n in parts) / 5, abs=1e-6)
    rows = [*together["sentiment"], *together["topic"]]
    for mine, own in zip(rows, alone, strict=True):
        assert torch.allclose(mine, own[0], atol=1e-5)


def test_weighted_mixture_draws_each_epoch_by_weight(make_cfg, entries):
    cfg = make_cfg([*STEPS, f"tasks=[{_weighted(entries['sentiment'], 1)},{_weighted(entries['topic'], 3)}]"])
    job = build_job(parse_job(cfg))
    sizes = job.datamodule.split_sizes
    total = sizes["sentiment"]["train"]["used"] + sizes["topic"]["train"]["used"]
    assert sizes["topic"]["train"]["drawn_per_epoch"] == round(total * 3 / 4)
    assert sizes["sentiment"]["train"]["drawn_per_epoch"] == total - round(total * 3 / 4)


def test_mixture_prompt_predicts_for_the_task_it_is_asked(mixture_run, topic_files, run_as_main, tmp_path):
    _, out = mixture_run
    with pytest.raises(ArtifactError, match=r"task=None: .*task mixture sentiment\+topic; give task=NAME, one of: "
                                            r"sentiment, topic"):
        softprompt.load(out / "prompt")
    predictor = softprompt.load(out / "prompt", task="topic")
    assert predictor.task.name == "topic" and predictor.labels == list(TOPICS)
    inputs = [json.loads(line) for line in Path(topic_files["test"]).read_text().splitlines()]
    records = predictor.predict_records(inputs)
    run_predictions = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    topic = sorted((p for p in run_predictions if p["task"] == "topic"), key=lambda p: p["row_index"])
    assert len(topic) == len(records) == 10
    for mine, theirs in zip(records, topic, strict=True):
        assert list(mine["probabilities"].values()) == pytest.approx(theirs["probabilities"], abs=1e-5)
    output = tmp_path / "preds.jsonl"
    assert run_as_main("softprompt.cli.predict", f"prompt={out / 'prompt'}", f"input={topic_files['test']}",
                       f"output={output}", "task=topic") == 0
    assert [json.loads(line)["prediction"] for line in output.read_text().splitlines()] == \
        [r["prediction"] for r in records]


def test_inspect_reads_a_mixture_prompt_without_a_task(mixture_run, run_as_main, capsys):
    _, out = mixture_run
    assert run_as_main("softprompt.cli.inspect", f"prompt={out / 'prompt'}", "top_k=2") == 0
    printed = capsys.readouterr().out
    assert printed.startswith("prompt_tuning on tiny_random") and "task mixture sentiment+topic: 3 virtual" in printed


def test_prompt_transfer_from_a_source_mixture_starts_the_target_from_its_prompt(
        run_job, entries, local_task_overrides, tmp_path):
    from safetensors.torch import load_file

    overrides = [*STEPS, "logger=none", "experiment=prompt_transfer", "callbacks=none", *local_task_overrides,
                 "transfer.enabled=true", f"transfer.source_tasks=[{entries['topic']},{entries['sentiment']}]",
                 f"paths.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    summary = run_job(overrides, tmp_path / "target")
    assert summary["transfer_source"] == "topic+sentiment"
    source_run = Path(summary["transfer"]["source_run"])
    source = json.loads((source_run / "metrics.json").read_text())
    assert source["tasks"] == ["topic", "sentiment"] and source["selection_metric"] == "val/macro"
    assert set(summary["transfer"]["source_val"]) >= {"topic/acc", "sentiment/acc", "macro"}
    spec = json.loads((tmp_path / "target" / "prompt" / "softprompt.json").read_text())
    assert spec["method"]["config"]["init_artifact"] == str(source_run / "prompt")
    assert load_file(source_run / "prompt" / "softprompt.safetensors")["prompt"].shape == (3, 32)
    # The target's artifact loads as any other (the prompt it started from is not read again).
    assert softprompt.load(tmp_path / "target" / "prompt").predict(["great fun"])[0] in ("negative", "positive")


def test_report_ranks_a_mixture_run_by_its_macro_mean(mixture_run, tmp_path):
    from softprompt.analysis.report import collect_runs, default_group_by, summarize
    from softprompt.analysis.report.statistics import default_metric, default_rank_by

    summary, out = mixture_run
    runs = collect_runs([out]).runs
    assert default_metric(runs) == "test/macro" and default_rank_by(runs) == "val/macro"
    table = summarize(runs, default_group_by(runs), "test/macro", "val/macro")
    assert table["test/macro_mean"].iloc[0] == pytest.approx(summary["test"]["macro"])
    # one run: its test and validation predictions rebuild the macro mean, with each stage's example sampling
    assert table["test/macro_interval"].iloc[0] == table["val/macro_interval"].iloc[0] == "examples only"


def test_multitask_prompt_tuning_trains_every_task_factor_even_with_multi_token_label_words(
        make_cfg, entries, tmp_path):
    from safetensors.torch import load_file

    topic = entries["topic"][:-1] + ", verbalizer: {business: ' business news', entertainment: ' entertainment', " \
        "politics: ' politics', sports: ' sports', tech: ' technology'}}"
    overrides = [*STEPS, "method=multitask_prompt_tuning", "method.num_ranks=2", "method.init=random_normal",
                 f"tasks=[{entries['sentiment']},{topic}]"]
    cfg = make_cfg(overrides, output_dir=tmp_path / "run")
    start = build_job(parse_job(cfg)).module
    assert start.objective.member(1).scorer.max_word_length > 1  # scored with the words' later tokens fed in
    cols = start.task_cols.detach().clone()
    summary = run(make_cfg(overrides, output_dir=tmp_path / "run"))
    trained = load_file(tmp_path / "run" / "prompt" / "softprompt.safetensors")
    assert summary["tasks"] == ["sentiment", "topic"] and trained["task_cols"].shape == (2, 3, 2)
    for task in (0, 1):
        assert not np.allclose(trained["task_cols"][task].numpy(), cols[task].numpy())
