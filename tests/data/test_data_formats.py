"""Your own data on the first try: labels read the same from every local format softprompt reads (CSV, TSV,
JSON Lines, Parquet) whatever their type (label names as text, integer indices, a Parquet ClassLabel). The splits
softprompt-train reads (`read_splits`) hold int64 label indices and the texts as written, and a run on each format
trains. CSV and TSV headers name each column once and keep every cell's text as written."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import ClassLabel, Dataset, Features, Value

from softprompt.data.sources import read_splits
from softprompt.data.validation import DataError

LABELS = ["negative", "positive"]
TEXTS = ["great fun", "a chore", "a joy, and \"smart\"", "boring", "superb\nand warm", "tedious"] * 2
INDICES = [1, 0, 1, 0, 1, 0] * 2
FORMATS = {"csv": "csv", "tsv": "tsv", "json": "jsonl", "parquet": "parquet"}  # task.source.path -> file suffix
KINDS = ("names", "indices", "class_label")  # how the file gives a label; class_label: Parquet's own type
CELLS = [(path, kind) for path in FORMATS for kind in KINDS if kind != "class_label" or path == "parquet"]
NO_FOLDS = {"num_folds": None}


def write(path: Path, path_format: str, kind: str, texts: list[str] = TEXTS, indices: list[int] = INDICES) -> str:
    """The examples as one file in `path_format`, labels as `kind`: names (text), indices (integers; digits in
    CSV and TSV) or a ClassLabel whose names run in another order than task.labels."""
    labels = [LABELS[i] for i in indices] if kind == "names" else list(indices)
    if path_format in ("csv", "tsv"):
        with path.open("w", newline="") as stream:
            writer = csv.writer(stream, delimiter="," if path_format == "csv" else "\t")
            writer.writerows([["review", "sentiment"], *zip(texts, labels, strict=True)])
    elif path_format == "json":
        path.write_text("".join(json.dumps({"review": t, "sentiment": s}) + "\n" for t, s in zip(texts, labels,
                                                                                               strict=True)))
    elif kind == "class_label":
        names = LABELS[::-1]  # positive is 0 here, 1 in task.labels: labels map by name, not by number
        Dataset.from_dict({"review": texts, "sentiment": [names.index(LABELS[i]) for i in indices]},
                          features=Features({"review": Value("string"),
                                             "sentiment": ClassLabel(names=names)})).to_parquet(str(path))
    else:  # large_string columns, as pandas (with pyarrow strings) and polars write them
        pq.write_table(pa.table({"review": pa.array(texts, pa.large_string()),
                                 "sentiment": pa.array(labels, pa.large_string() if kind == "names" else pa.int32())}),
                       path)
    return str(path)


@pytest.fixture
def own_task(task_config, tmp_path):
    """`own_task(path_format, train=..., validation=..., test=...)`: the sentiment task on the given files."""

    def task(path_format: str, **files: str):
        return task_config(source={"path": path_format, "data_files": files, "asset": None},
                           splits={role: role if role in files else None for role in ("train", "validation", "test")},
                           columns={"text": "review", "label": "sentiment"}, text_fields=["text"], labels=LABELS,
                           template="Review: {text}\nSentiment:",
                           verbalizer={"negative": " bad", "positive": " good"}, max_length=64)

    return task


@pytest.mark.parametrize(("path_format", "kind"), CELLS, ids=[f"{p}-{k}" for p, k in CELLS])
def test_labels_of_every_type_read_as_int64_indices_from_every_format(own_task, tmp_path, path_format, kind):
    files = {split: write(tmp_path / f"{split}.{FORMATS[path_format]}", path_format, kind)
             for split in ("train", "validation", "test")}
    splits = read_splits(own_task(path_format, **files), NO_FOLDS, tmp_path / "cache")
    for split in splits.values():
        assert split.features["label"] == Value("int64")
        assert split["label"] == INDICES and split["text"] == TEXTS


TRAINED = {"csv": "names", "tsv": "names", "json": "names", "parquet": "class_label"}


@pytest.mark.parametrize("path_format", list(TRAINED))
def test_a_run_trains_on_labels_read_from_each_format(make_cfg, tmp_path, path_format):
    from softprompt.training.run import run

    files = {split: write(tmp_path / f"{split}.{FORMATS[path_format]}", path_format, TRAINED[path_format])
             for split in ("train", "validation", "test")}
    cfg = make_cfg(["backbone=tiny_random", "callbacks=none", "trainer.max_steps=2", "data.batch_size=4",
                    "task.name=own", "task.source.asset=null", f"task.source.path={path_format}",
                    "task.source.data_files={" + ", ".join(f"{s}: '{f}'" for s, f in files.items()) + "}",
                    "task.columns={text: review, label: sentiment}"])
    summary = run(cfg)
    assert summary["steps"] == 2 and 0 <= summary["test"]["acc"] <= 1
    predictions = [json.loads(line) for line in
                   (Path(cfg.paths.output_dir) / "test_predictions.jsonl").read_text().splitlines()]
    assert [p["label"] for p in predictions] == INDICES


@pytest.mark.parametrize("path_format", ["csv", "tsv"])
def test_csv_and_tsv_cells_keep_their_text_as_written(own_task, tmp_path, path_format):
    texts = ["007", "1.50", "NA", "None", "null", "True", "nan", "#N/A", " padded ", "1e5", "-", "0"]
    file = write(tmp_path / f"train.{path_format}", path_format, "names", texts)
    splits = read_splits(own_task(path_format, train=file, test=file), NO_FOLDS, tmp_path / "cache")
    assert splits["train"]["text"] == texts and splits["train"]["label"] == INDICES


def test_digit_labels_in_a_csv_are_indices_and_digit_label_names_are_names(task_config, tmp_path):
    (tmp_path / "stars.csv").write_text("review,stars\ngood,5\nbad,1\nfine,3\n")  # labels named by digits
    (tmp_path / "index.csv").write_text("review,stars\ngood,2\nbad,0\nfine,1\n")  # the same, as indices

    def task(file: str, labels: list[str]):
        return task_config(source={"path": "csv", "data_files": {"train": file, "test": file}, "asset": None},
                           splits={"train": "train", "validation": None, "test": "test"},
                           columns={"text": "review", "label": "stars"}, text_fields=["text"], labels=labels,
                           template="{text}:", verbalizer={label: f" {label}" for label in labels}, max_length=16)

    stars, index = str(tmp_path / "stars.csv"), str(tmp_path / "index.csv")
    assert read_splits(task(stars, ["1", "3", "5"]), NO_FOLDS, tmp_path)["train"]["label"] == [2, 0, 1]
    assert read_splits(task(index, ["bad", "fine", "good"]), NO_FOLDS, tmp_path)["train"]["label"] == [2, 0, 1]
    # Digits that are partly label names and partly not are neither: refused, never guessed.
    with pytest.raises(DataError, match=r"^task\.labels=\['1', '3', '5'\] is invalid: the train split .* has labels "
                                        r"\['0', '2'\] that are not listed"):
        read_splits(task(index, ["1", "3", "5"]), NO_FOLDS, tmp_path)


@pytest.mark.parametrize(("path_format", "header"), [("csv", "review,sentiment,review"),
                                                     ("tsv", "review\tsentiment\treview")])
def test_a_header_naming_a_column_twice_is_refused_naming_the_file_and_the_column(own_task, tmp_path, path_format,
                                                                                header):
    good = write(tmp_path / f"good.{path_format}", path_format, "names")
    separator = "," if path_format == "csv" else "\t"
    (tmp_path / f"dup.{path_format}").write_text(f"\n{header}\n" + f"great fun{separator}positive{separator}x\n" * 4)
    with pytest.raises(DataError) as refused:
        read_splits(own_task(path_format, train=good, validation=str(tmp_path / f"dup.{path_format}"), test=good),
                    NO_FOLDS, tmp_path / "cache")
    assert str(refused.value) == (f"task.source.data_files.validation='{tmp_path}/dup.{path_format}' is invalid: "
                                  "the header (line 2) names column 'review' twice; give each column a unique name")


def test_files_whose_headers_name_other_columns_are_refused(own_task, tmp_path):
    good = write(tmp_path / "good.csv", "csv", "names")
    (tmp_path / "other.csv").write_text("text,sentiment\ngreat fun,positive\n")
    with pytest.raises(DataError, match=r"^task\.source\.data_files\.test='[^']*other\.csv' is invalid: the header "
                                        r"\(line 1\) names the columns \['text', 'sentiment'\], but [^ ]*good\.csv "
                                        r"names \['review', 'sentiment'\]; every file needs the same columns"):
        read_splits(own_task("csv", train=good, test=str(tmp_path / "other.csv")), NO_FOLDS, tmp_path / "cache")
    (tmp_path / "reordered.csv").write_text("sentiment,review\npositive,great fun\nnegative,a chore\n")
    splits = read_splits(own_task("csv", train=good, test=str(tmp_path / "reordered.csv")), NO_FOLDS, tmp_path)
    assert splits["test"]["text"] == ["great fun", "a chore"] and splits["test"]["label"] == [1, 0]


def test_rows_with_more_fields_than_the_header_are_refused_not_shifted(own_task, tmp_path):
    # Every row one field longer: pandas would read the first field as an index and shift the others left.
    (tmp_path / "train.csv").write_text("review,sentiment\ngreat,fun,positive\na,chore,negative\n")
    with pytest.raises(DataError, match=r"^task\.source\.data_files\.train='[^']*train\.csv' is invalid: line 2 has "
                                        r"3 fields where the header \(line 1\) has 2$"):
        read_splits(own_task("csv", train=str(tmp_path / "train.csv"), test=str(tmp_path / "train.csv")),
                    NO_FOLDS, tmp_path / "cache")


def test_a_blank_label_is_a_missing_label(own_task, tmp_path):
    file = write(tmp_path / "train.jsonl", "json", "names")
    rows = [json.loads(line) for line in Path(file).read_text().splitlines()]
    rows[2]["sentiment"] = " "
    Path(file).write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DataError, match=r"^task\.columns\.label='sentiment' is invalid: 1 of 12 examples of the train "
                                        r"split .* have no label \(examples #3, counting from 1\)"):
        read_splits(own_task("json", train=file, test=file), NO_FOLDS, tmp_path / "cache")


@pytest.mark.parametrize(("path_format", "file", "message"), [
    ("csv", "train.tsv", r"task\.source\.path=csv expects CSV, but the header \(line 1\) is tab-separated; set "
                         r"task\.source\.path=tsv$"),
    ("tsv", "train.csv", r"task\.source\.path=tsv expects TSV, but the header \(line 1\) is comma-separated; set "
                         r"task\.source\.path=csv$"),
    ("json", "train.tsv", r"task\.source\.path=json expects JSON Lines .* it looks like TSV: set task\.source\.path="
                          r"tsv$"),
    ("parquet", "train.csv", r"task\.source\.path=parquet expects a Parquet file \(it starts with PAR1\), but this one "
                             r"starts with b'revi'; it looks like CSV: set task\.source\.path=csv$"),
    ("csv", "train.parquet", r"task\.source\.path=csv expects text, but this is a Parquet file; set "
                             r"task\.source\.path=parquet$"),
])
def test_a_file_in_another_format_than_the_path_says_is_refused_with_the_right_one(own_task, tmp_path, path_format,
                                                                                   file, message):
    suffix = Path(file).suffix.lstrip(".")
    path = write(tmp_path / file, {"jsonl": "json"}.get(suffix, suffix), "names")
    with pytest.raises(DataError, match=rf"^task\.source\.data_files\.train='[^']*{file}' is invalid: {message}"):
        read_splits(own_task(path_format, train=path, test=path), NO_FOLDS, tmp_path / "cache")


def test_a_class_label_index_outside_its_names_is_refused(own_task, tmp_path):
    features = Features({"review": Value("string"), "sentiment": ClassLabel(names=LABELS)})
    table = pa.table({"review": ["great fun", "a chore"], "sentiment": pa.array([1, 5], pa.int64())})
    pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features":
                                                                                      features.to_dict()}})}),
                   tmp_path / "train.parquet")
    file = str(tmp_path / "train.parquet")
    with pytest.raises(DataError, match=r"^task\.columns\.label='sentiment' is invalid: the train split .* has label "
                                        r"indices \[5\] outside its ClassLabel's names \['negative', 'positive'\]$"):
        read_splits(own_task("parquet", train=file, test=file), NO_FOLDS, tmp_path / "cache")


def test_a_csv_with_old_mac_line_ends_loads(own_task, tmp_path):
    (tmp_path / "train.csv").write_bytes(b"review,sentiment\rgreat fun,positive\ra chore,negative\r")
    file = str(tmp_path / "train.csv")
    splits = read_splits(own_task("csv", train=file, test=file), NO_FOLDS, tmp_path / "cache")
    assert splits["train"]["text"] == ["great fun", "a chore"] and splits["train"]["label"] == [1, 0]


@pytest.mark.parametrize("path_format", ["csv", "json"])
def test_a_utf16_file_is_refused_as_not_utf8(own_task, tmp_path, path_format):
    path = tmp_path / f"train.{FORMATS[path_format]}"
    text = Path(write(path, path_format, "names")).read_text()
    path.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError, match=r"^task\.source\.data_files\.train='[^']*' is invalid: it is UTF-16 text "
                                        r"\(it starts with a UTF-16 byte-order mark\); save it as UTF-8$"):
        read_splits(own_task(path_format, train=str(path), test=str(path)), NO_FOLDS, tmp_path / "cache")


def test_a_json_label_column_of_names_and_numbers_is_refused_in_one_line(own_task, tmp_path):
    file = write(tmp_path / "train.jsonl", "json", "names")
    lines = Path(file).read_text().splitlines()
    lines[1] = lines[1].replace('"negative"', "0.5")
    Path(file).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"^task\.columns\.label='sentiment' is invalid: the train split .* has "
                                        r"mixed-type labels \(e\.g\. 'positive', 0\.5\); a label is one of "):
        read_splits(own_task("json", train=file, test=file), NO_FOLDS, tmp_path / "cache")
    Path(file).write_text("\n\n".join(lines) + "\n")  # blank lines: datasets fails to read it instead
    with pytest.raises(DataError, match=r"datasets could not read them as json \(.*changed from .*\); a column must "
                                        r"hold one type in every row \(numbers in some rows, text in others\?\)$"):
        read_splits(own_task("json", train=file, test=file), NO_FOLDS, tmp_path / "cache")


def test_a_json_text_column_of_text_and_numbers_still_refuses_blank_texts_and_lists(own_task, tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"review": text, "sentiment": "positive"} for text in ("great fun", 7, "ok")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    splits = read_splits(own_task("json", train=str(path), test=str(path)), NO_FOLDS, tmp_path / "cache")
    assert splits["train"]["text"] == ["great fun", 7, "ok"]  # numbers render as text
    for bad, message in ((" ", r"1 of 3 examples of the train split .* have an empty or whitespace-only text "
                               r"\(examples #3, counting from 1\)"),
                         (["x"], r"holds lists or records in some examples \(e\.g\. \['x'\]\), not text")):
        rows[2]["review"] = bad
        path = tmp_path / f"bad{len(message)}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        with pytest.raises(DataError, match=rf"^task\.columns\.text='review' is invalid: .*{message}"):
            read_splits(own_task("json", train=str(path), test=str(path)), NO_FOLDS, tmp_path / "cache")
