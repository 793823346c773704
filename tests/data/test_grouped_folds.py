"""Grouped k-fold folds (`task.columns.group`): no group on both sides of a fold (on the real rotten_tomatoes
asset's movies), labels still stratified, deterministic in every process; tasks without a group keep their folds
exactly; a group the data cannot serve is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from softprompt.config.compose import config_dir
from softprompt.data import CVSettings, DataSettings, PromptDataModule, Rendering
from softprompt.data.folds import grouped_folds, stratified_folds, train_val_indices
from softprompt.data.sources import read_splits
from softprompt.data.task import parse_task
from softprompt.data.validation import DataError
from softprompt.errors import ConfigError

CACHE = Path.home() / ".cache" / "softprompt"  # where the offline assets are prepared (as test_offline_tasks)
KFOLD = {"num_folds": 5, "fold": 0, "seed": 0}
DATA = {"batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "padding_side": "right", "max_samples": {}}
TEMPLATE = "Review: {text}\nSentiment:"


@pytest.fixture(scope="module")
def movies():
    """The real asset's rotten_tomatoes task and its train split: labels and movies, read as a k-fold run does."""
    task = parse_task(OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "task" / "rotten_tomatoes.yaml")))
    train = read_splits(task, KFOLD, CACHE)["train"]
    return task, np.asarray(train["label"]), np.asarray(train["group"])


def test_rotten_tomatoes_groups_by_movie_and_its_hub_copy_by_nothing(make_cfg):
    def preset(name: str):
        return parse_task(OmegaConf.to_container(make_cfg([f"task={name}"]).task, resolve=True))

    assert preset("rotten_tomatoes").group_column == "movie_name"
    hub = preset("rotten_tomatoes_hub")
    assert hub.group_column is None and dict(hub.columns) == {"text": "text", "label": "label", "group": None}
    assert preset("sst2").group_column is None


def test_grouped_folds_keep_each_movie_on_one_side_and_stay_stratified(movies):
    _, labels, groups = movies
    share = labels.mean()
    for num_folds in (5, 10):
        folds = grouped_folds(labels, groups, num_folds, seed=0)
        assert sorted(np.concatenate(folds).tolist()) == list(range(len(labels)))  # disjoint and covering
        sizes = [len(f) for f in folds]
        assert max(sizes) - min(sizes) <= 0.01 * len(labels) / num_folds
        for fold in range(num_folds):
            train, val = train_val_indices(labels, num_folds, fold, 0, groups)
            assert not set(groups[train]) & set(groups[val])
            assert abs(labels[val].mean() - share) < 0.02  # within two points of the overall positive share
    # What grouping fixes: label-only folds put every validation movie in training too.
    for fold in range(5):
        train, val = train_val_indices(labels, 5, fold, 0)
        assert len(set(groups[train]) & set(groups[val])) > 0.9 * len(set(groups[val]))


def test_a_k_fold_datamodule_on_the_real_asset_splits_by_movie_and_hides_the_movie(movies, tiny_backbone):
    task, _, groups = movies
    module = PromptDataModule(task, DataSettings.from_config(DATA), CVSettings.from_config({**KFOLD, "fold": 1}),
                              Rendering(TEMPLATE), tiny_backbone().tokenizer, CACHE, seed=0)
    module.setup()
    train, val = (set(groups[module.splits[role]["row_index"]]) for role in ("train", "validation"))
    assert not train & val and len(train | val) == len(set(groups))
    assert module.fold_split == {"stratified_by": "label", "grouped_by": "movie_name",
                                 "groups": {"train": len(train), "validation": len(val)}}
    assert all("group" not in split.column_names for split in module.splits.values())  # never fed to the model


def test_grouped_folds_are_deterministic_in_cv_seed_and_in_every_process(tmp_path):
    labels = [0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0]
    groups = ["b", "a", "c", "a", "d", "b", "c", "d", "e", "f", "e", "f"]
    folds = [f.tolist() for f in grouped_folds(labels, groups, 3, seed=0)]
    assert folds == [f.tolist() for f in grouped_folds(labels, groups, 3, seed=0)]
    assert folds == [[4, 7, 8, 10], [1, 2, 3, 6], [0, 5, 9, 11]]  # pinned: the same on every platform and version
    assert folds != [f.tolist() for f in grouped_folds(labels, groups, 3, seed=1)]
    # Another process with another hash seed (a DDP rank, a resumed job) cuts the same folds.
    script = ("import json, sys; from softprompt.data.folds import grouped_folds; "
              "labels, groups = json.load(sys.stdin); "
              "print(json.dumps([f.tolist() for f in grouped_folds(labels, groups, 3, 0)]))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", script], input=json.dumps([labels, groups]), env=env,
                           capture_output=True, text=True, check=True)
    assert json.loads(other.stdout) == folds


@pytest.fixture
def local(task_config, write_jsonl, tmp_path, positive_reviews, negative_reviews):
    """`local(train_rows, group=...)`: a local sentiment task on `train_rows` (fields review, sentiment, movie)."""

    def task(train_rows: list[dict], group: str | None = "movie", **changes):
        plain = [{"review": r["review"], "sentiment": r["sentiment"]} for r in train_rows[:4]]
        files = {"train": write_jsonl(tmp_path / "train.jsonl", train_rows),
                 "validation": write_jsonl(tmp_path / "validation.jsonl", plain),
                 "test": write_jsonl(tmp_path / "test.jsonl", plain)}  # only the train split needs movies
        return task_config(**{"source": {"path": "json", "data_files": files, "asset": None},
                              "columns": {"text": "review", "label": "sentiment", "group": group},
                              "text_fields": ["text"], "labels": ["negative", "positive"], "template": TEMPLATE,
                              "verbalizer": {"negative": " bad", "positive": " good"}, "max_length": 64, **changes})

    return task


def reviews(movies: list[str], labels: list[str]) -> list[dict]:
    return [{"review": f"review {i}", "sentiment": label, "movie": movie}
            for i, (movie, label) in enumerate(zip(movies, labels, strict=True))]


# 8 movies, 3 reviews each, both labels in every movie
EIGHT_MOVIES = reviews([f"m{i // 3}" for i in range(24)], ["positive", "negative", "positive"] * 4 +
                       ["negative", "positive", "negative"] * 4)


def test_tasks_without_a_group_keep_their_folds_exactly(local_task_files, task_config, tiny_backbone):
    # Fold 1 of 3 of conftest's local train split, as the label-only folds cut it before groups existed.
    before = [2, 3, 9, 13, 20, 23, 24, 26, 27, 32, 33, 35, 36, 41, 42, 44]
    labels = [1, 0] * 24
    assert train_val_indices(labels, 3, 1, 0)[1].tolist() == before
    assert np.array_equal(train_val_indices(labels, 3, 1, 0, None)[1], stratified_folds(labels, 3, 0)[1])
    for columns in ({"text": "review", "label": "sentiment"}, {"text": "review", "label": "sentiment", "group": None}):
        task = task_config(source={"path": "json", "data_files": local_task_files, "asset": None}, columns=columns,
                           text_fields=["text"], labels=["negative", "positive"], template=TEMPLATE,
                           verbalizer={"negative": " bad", "positive": " good"}, max_length=64)
        module = PromptDataModule(task, DataSettings.from_config(DATA),
                                  CVSettings.from_config({"num_folds": 3, "fold": 1, "seed": 0}), Rendering(TEMPLATE),
                                  tiny_backbone().tokenizer, CACHE, seed=0)
        module.setup()
        assert list(module.splits["validation"]["row_index"]) == before
        assert module.fold_split == {"stratified_by": "label", "grouped_by": None, "groups": None}


def test_a_group_column_that_is_not_there_is_refused_only_where_folds_need_it(local):
    task = local(EIGHT_MOVIES, group="film")
    with pytest.raises(ConfigError) as raised:
        read_splits(task, {"num_folds": 2, "fold": 0, "seed": 0}, CACHE)
    assert str(raised.value) == (
        f"task.columns.group='film' is invalid: dataset columns are ['review', 'sentiment', 'movie'] in the train "
        f"split ({task.source['data_files']['train']}); map it to one of them, or set task.columns.group=null (folds "
        "by label only)")
    splits = read_splits(task, {"num_folds": None}, CACHE)  # no folds: nothing is grouped, nothing refused
    assert splits["train"].column_names == ["text", "label"]


@pytest.mark.parametrize(("train", "num_folds", "message"), [
    (reviews([f"m{i % 3}" for i in range(12)], ["positive", "negative"] * 6), 4,
     r"^cv\.num_folds=4 is invalid: the train split \(.*\) has 3 groups, fewer than the 4 folds \(folds are grouped "
     r"by task\.columns\.group\); lower cv\.num_folds or add groups$"),
    (reviews(["a", "a", "b", "b", "c", "d"], ["negative", "negative", "negative", "positive", "positive", "positive"]),
     3, r"^cv\.num_folds=3 is invalid: label 'negative' occurs in 2 groups of the train split \(.*\), fewer than the 3 "
        r"folds, so some folds would hold none of it \(folds are grouped by task\.columns\.group\); lower "
        r"cv\.num_folds to 2 or less, or add groups with that label$"),
    (reviews(["a", "a", "b", "b", "b", "c", "c", "d", "d"], ["positive", "positive", "negative", "negative",
                                                               "positive", "negative", "negative", "negative",
                                                               "positive"]),
     3, r"^cv\.num_folds=3 is invalid: label '\w+' occurs in 3 groups of the train split \(.*\), but the grouped "
        r"folds leave fold \d without it \(whole groups cannot spread it wider\); lower cv\.num_folds or add groups "
        r"with that label$"),
    ([{**r, "movie": None if i in (1, 4) else r["movie"]} for i, r in enumerate(EIGHT_MOVIES)], 2,
     r"^task\.columns\.group='movie' is invalid: 2 of 24 examples of the train split \(.*\) have no group "
     r"\(examples #2, #5, counting from 1\); fill or remove them$"),
    ([{**r, "movie": [r["movie"]]} for r in EIGHT_MOVIES], 2,
     r"^task\.columns\.group='movie' is invalid: the train split \(.*\) holds lists or records there, not group "
     r"names"),
], ids=["fewer groups than folds", "a label in fewer groups than folds", "a fold left without a label",
        "missing groups", "list groups"])
def test_groups_the_folds_cannot_use_are_refused_in_one_line(local, train, num_folds, message):
    with pytest.raises(DataError, match=message):
        read_splits(local(train), {"num_folds": num_folds, "fold": 0, "seed": 0}, CACHE)


@pytest.mark.parametrize(("changes", "message"), [
    ({"columns": {"text": "review", "label": "sentiment", "group": "review"}},
     r"^task\.columns\.group='review' is invalid: the field 'text' maps that column too"),
    ({"columns": {"text": "review", "label": "sentiment", "group": 3}},
     r"^task\.columns\.group=3 is invalid: must be a dataset column name, or null"),
    ({"columns": {"text": "review", "group": "movie", "label": "sentiment"}, "text_fields": ["group"],
      "template": "{group}"}, r"^task\.text_fields=\['group'\] is invalid: 'group' is the field task\.columns\.group"),
])
def test_a_group_key_that_cannot_work_is_refused_when_the_task_is_parsed(task_config, changes, message):
    task = {"source": {"path": "json", "data_files": {}, "asset": None}, "text_fields": ["text"],
            "labels": ["negative", "positive"], "template": TEMPLATE,
            "verbalizer": {"negative": " bad", "positive": " good"}, "max_length": 64, **changes}
    with pytest.raises(ConfigError, match=message):
        task_config(**task)


def test_a_k_fold_run_on_a_grouped_local_task_records_its_grouping(make_cfg, tiny_overrides, write_jsonl, tmp_path):
    from softprompt.training.run import run

    files = {"train": write_jsonl(tmp_path / "train.jsonl", EIGHT_MOVIES),
             "validation": write_jsonl(tmp_path / "validation.jsonl", EIGHT_MOVIES[:4]),
             "test": write_jsonl(tmp_path / "test.jsonl", [{k: r[k] for k in ("review", "sentiment")}
                                                           for r in EIGHT_MOVIES[:6]])}
    task = ["task.name=grouped", "task.source.path=json", "task.source.asset=null",
            f"+task.source.data_files={{train: {files['train']}, validation: {files['validation']}, "
            f"test: {files['test']}}}", "task.columns={text: review, label: sentiment, group: movie}"]
    summary = run(make_cfg([*tiny_overrides, *task, "cv=kfold", "cv.num_folds=3", "cv.fold=1", "trainer.max_steps=2",
                            "trainer.val_check_interval=2"]))
    split = summary["fold_split"]
    assert split["stratified_by"] == "label" and split["grouped_by"] == "movie"
    assert split["groups"]["train"] + split["groups"]["validation"] == 8  # no movie on both sides
    assert summary["split_sizes"]["validation"]["available"] % 3 == 0  # whole movies of 3 reviews each
    assert summary["fold"] == 1 and summary["steps"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["fold_split"] == split
