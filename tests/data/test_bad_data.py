"""Bad data is refused in one line naming the file (or the key), what is wrong and where, before a backbone
loads; good data reads as before. The CLI table (tests/cli/test_bad_input.py) covers each refusal end to end;
these tests pin down the details: line numbers, example numbers, which files are checked and which are not."""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path

import datasets
import pytest
from datasets import ClassLabel, Dataset, Features

from softprompt.data.sources import load_raw_splits, read_splits, select_and_map
from softprompt.data.validation import (
    DataError,
    check_data_files,
    check_folds,
    check_labels,
    check_texts,
    malformed_line,
    quiet_datasets,
)

ROWS = [{"review": t, "sentiment": s} for t, s in (("great fun", "positive"), ("a chore", "negative"))] * 4


@pytest.fixture
def local(task_config, tmp_path, write_jsonl):
    """`local(train_rows, **task)`: the local sentiment task on `train_rows` (validation and test: ROWS)."""

    def task(train_rows: list[dict], **changes):
        files = {split: write_jsonl(tmp_path / f"{split}.jsonl", rows)
                 for split, rows in (("train", train_rows), ("validation", ROWS), ("test", ROWS))}
        return task_config(**{"source": {"path": "json", "data_files": files, "asset": None},
                              "columns": {"text": "review", "label": "sentiment"}, "text_fields": ["text"],
                              "labels": ["negative", "positive"], "template": "Review: {text}\nSentiment:",
                              "verbalizer": {"negative": " bad", "positive": " good"}, "max_length": 64, **changes})

    return task


def test_data_is_read_and_checked_before_the_backbone_loads(make_cfg, tiny_overrides, local_task_overrides,
                                                            monkeypatch, tmp_path):
    import softprompt.training.job as job
    from softprompt.training.run import run

    calls = []
    real_read = job.read_splits

    def read(*args):
        calls.append("read")
        return real_read(*args)

    def load(*args):
        calls.append("load")
        raise RuntimeError("stop here")

    monkeypatch.setattr(job, "read_splits", read)
    monkeypatch.setattr(job.BACKBONES, "get_for_job", load)
    with pytest.raises(RuntimeError, match="stop here"):
        run(make_cfg([*tiny_overrides, *local_task_overrides]))
    assert calls == ["read", "load"]
    calls.clear()
    (tmp_path / "empty.jsonl").write_text("")
    bad = make_cfg([*tiny_overrides, *local_task_overrides, f"task.source.data_files.train={tmp_path}/empty.jsonl"])
    with pytest.raises(DataError, match=r"^task\.source\.data_files\.train='.*empty\.jsonl' is invalid: the file"):
        run(bad)
    assert calls == ["read"]


def test_good_data_reads_into_the_same_label_indices(local):
    task = local(ROWS)
    splits = read_splits(task, {"num_folds": 2, "fold": 0, "seed": 0}, Path("/nonexistent-cache"))
    assert list(splits["train"]["label"]) == [1, 0] * 4 and list(splits["train"]["text"]) == [r["review"] for r in ROWS]
    again = select_and_map(load_raw_splits(task.source, Path("/nonexistent-cache")), task)  # the DataModule's read
    assert again["train"]._fingerprint == splits["train"]._fingerprint


def test_the_datamodule_path_names_the_split_and_file_too(local):
    task = local([*ROWS, {"review": "   ", "sentiment": "positive"}])
    with pytest.raises(DataError, match=r"1 of 9 examples of the train split \([^)]*train\.jsonl\) have an empty or "
                                        r"whitespace-only text \(examples #9, counting from 1\)"):
        select_and_map(load_raw_splits(task.source, Path("/nonexistent-cache")), task)


@pytest.mark.parametrize(("text", "problem"), [
    ('{"a": 1}\n\n{"a": 2\n', r"line 3 is not valid JSON \(Expecting ',' delimiter, column 8\)"),
    ('{"a": 1}\n[1, 2]\n', r"line 2 is a JSON list, not an object"),
    ('[\n {"a": 1},\n {"a": 2}\n {"a": 3}\n]\n', r"line 4 is not valid JSON"),  # one JSON document
])
def test_malformed_json_names_the_line(tmp_path, text, problem):
    path = tmp_path / "data.jsonl"
    path.write_text(text)
    assert re.match(problem, malformed_line("json", path))


@pytest.mark.parametrize(("text", "problem"), [
    ('a,b\n1,2\n"3,4\n5,6\n', "line 3 opens a quoted field that is never closed; fix the CSV quoting"),
    ('a,b\n1,2\n"x"y,3\n', "line 3: ',' expected after '\"'; fix the CSV quoting"),
    ('a,b\n"multi\nline",2\n1,2,3\n', "line 4 has 3 fields where the header (line 1) has 2"),
])
def test_malformed_csv_names_the_line(tmp_path, text, problem):
    path = tmp_path / "data.csv"
    path.write_text(text)
    assert malformed_line("csv", path) == problem


def test_well_formed_files_have_no_malformed_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n\n{"a": "x, \\"y\\""}\n')
    (tmp_path / "a.json").write_text('[{"a": 1},\n {"a": 2}]')
    (tmp_path / "a.csv").write_text('a,b\n"1,5",2\n"multi\nline",3\n')
    assert malformed_line("json", tmp_path / "a.jsonl") is None
    assert malformed_line("json", tmp_path / "a.json") is None
    assert malformed_line("csv", tmp_path / "a.csv") is None
    (tmp_path / "latin.csv").write_bytes("a,b\nx,1\ncaf\xe9,2\n".encode("latin-1"))
    assert malformed_line("csv", tmp_path / "latin.csv") == "line 3 is not UTF-8 text (byte 11); save the file as UTF-8"


def test_file_checks_follow_globs_lists_and_leave_remote_and_compressed_files_alone(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "b.jsonl").write_text("")
    (tmp_path / "c.jsonl.bz2").write_bytes(bz2.compress(b"not json at all\n"))
    check_data_files("json", {"train": str(tmp_path / "a*.jsonl")})
    check_data_files("json", [str(tmp_path / "a.jsonl"), str(tmp_path / "c.jsonl.bz2"), "hf://datasets/x/y.jsonl"])
    check_data_files("json", str(tmp_path / "a.json*"))
    with pytest.raises(DataError, match=r"^task\.source\.data_files\.train='.*/b\.jsonl' is invalid: the file is "
                                        r"empty"):
        check_data_files("json", {"train": str(tmp_path / "*.jsonl")})  # b.jsonl among the matches
    with pytest.raises(DataError, match=r"^task\.source\.data_files='.*/z\*\.jsonl' is invalid: no such file"):
        check_data_files("json", [str(tmp_path / "z*.jsonl")])
    with pytest.raises(DataError, match=r"relative paths start from "):
        check_data_files("json", "no/such/file.jsonl")
    check_data_files("parquet", {"train": str(tmp_path / "c.jsonl.bz2")})  # compressed: left to datasets
    with pytest.raises(DataError, match=r"expects a Parquet file .* it looks like JSON: set task\.source\.path=json"):
        check_data_files("parquet", {"train": str(tmp_path / "a.jsonl")})  # a Parquet file is judged by its magic


def test_a_csv_with_an_empty_label_cell_has_a_missing_label(tmp_path):
    (tmp_path / "train.csv").write_text("review,sentiment\ngreat fun,1\na chore,\nboring,0\n")
    source = {"path": "csv", "data_files": {"train": str(tmp_path / "train.csv")}, "asset": None}
    raw = load_raw_splits(source, Path("/nonexistent-cache"))
    with pytest.raises(DataError, match=r"^task\.columns\.label='sentiment' is invalid: 1 of 3 examples of the train "
                                        r"split \(x\) have no label \(examples #2, counting from 1\)"):
        check_labels(raw["train"].rename_columns({"sentiment": "label"}), "sentiment", ["negative", "positive"],
                     "train split (x)")


def test_label_kinds():
    names = ["negative", "positive"]
    check_labels(Dataset.from_dict({"label": [True, False]}), "y", names, "s")  # booleans index the labels
    check_labels(Dataset.from_dict({"label": [0, 1]}, features=Features({"label": ClassLabel(names=names)})),
                 "y", names, "s")
    with pytest.raises(DataError, match=r"1 of 2 examples of the s have no label \(examples #2"):
        check_labels(Dataset.from_dict({"label": [0, -1]}, features=Features({"label": ClassLabel(names=names)})),
                     "y", names, "s")
    with pytest.raises(DataError, match=r"the s has float labels \(e\.g\. 0\.0, 1\.0\); a label is one of "):
        check_labels(Dataset.from_dict({"label": [0.0, 1.0]}), "y", names, "s")
    with pytest.raises(DataError, match=r"examples #1, counting from 1"):
        check_labels(Dataset.from_dict({"label": [float("nan"), 1.0]}), "y", names, "s")


def test_empty_texts_are_counted_with_the_first_example_numbers():
    texts = ["fine", "", " ", "ok", None, "\t\n", "x", "", "\u3000", ""]
    with pytest.raises(DataError) as raised:
        check_texts(Dataset.from_dict({"text": texts}), {"text": "review"}, "train split (f)")
    assert str(raised.value) == ("task.columns.text='review' is invalid: 7 of 10 examples of the train split (f) have "
                                 "an empty or whitespace-only text (examples #2, #3, #5, #6, #8, ..., counting "
                                 "from 1); fill or remove them")
    check_texts(Dataset.from_dict({"text": [0, 12]}), {"text": "n"}, "s")  # numbers render as text
    with pytest.raises(DataError, match=r"holds list<item: string> values, not text"):
        check_texts(Dataset.from_dict({"text": [["a"], ["b"]]}), {"text": "review"}, "s")


def test_fold_sizes():
    train = Dataset.from_dict({"label": [0, 0, 0, 1, 1, 1]})
    check_folds(train, {"num_folds": 3}, "s", ["negative", "positive", "neutral"])  # an absent label is no stratum
    check_folds(train, {"num_folds": None}, "s", ["negative", "positive"])
    with pytest.raises(DataError, match=r"^cv\.num_folds=4 is invalid: label 'negative' has 3 examples in the s"):
        check_folds(train, {"num_folds": 4}, "s", ["negative", "positive"])
    check_folds(Dataset.from_dict({"target": ["a"] * 6}), {"num_folds": 6}, "s", None)  # generation: sizes only
    with pytest.raises(DataError, match=r"^cv\.num_folds=7 is invalid: the s has 6 examples, fewer than the 7 folds"):
        check_folds(Dataset.from_dict({"target": ["a"] * 6}), {"num_folds": 7}, "s", None)


def test_reading_quietly_restores_progress_bars_and_verbosity():
    datasets.enable_progress_bars()
    level = datasets.logging.get_verbosity()
    with quiet_datasets():
        assert datasets.are_progress_bars_disabled()
        assert datasets.logging.get_verbosity() == datasets.logging.CRITICAL
    assert not datasets.are_progress_bars_disabled() and datasets.logging.get_verbosity() == level


def test_a_json_document_loads_like_json_lines(tmp_path, local):
    (tmp_path / "train.json").write_text(json.dumps(ROWS))
    task = local(ROWS)
    source = {**task.source, "data_files": {**task.source["data_files"], "train": str(tmp_path / "train.json")}}
    raw = load_raw_splits(source, Path("/nonexistent-cache"))
    assert raw["train"]["review"] == [r["review"] for r in ROWS]


def test_files_with_a_byte_order_mark_load(tmp_path):
    (tmp_path / "train.jsonl").write_bytes(b'\xef\xbb\xbf{"review": "a", "sentiment": "positive"}\n')
    (tmp_path / "train.csv").write_bytes(b"\xef\xbb\xbfreview,sentiment\na,positive\n")
    for path_format, name in (("json", "train.jsonl"), ("csv", "train.csv")):
        raw = load_raw_splits({"path": path_format, "data_files": {"train": str(tmp_path / name)}},
                              Path("/nonexistent-cache"))
        assert raw["train"].column_names == ["review", "sentiment"] and raw["train"]["review"] == ["a"]
