"""Bad data in one line, before the backbone loads.

Each refusal is a DataError naming the file (by its config key) or the config key to fix and what is wrong:
a data file that is missing, unreadable, empty, malformed (with its line number) or in another format than
`task.source.path` says; a mapped column that is not there; labels that are missing, of the wrong type or not
in `task.labels`; empty texts or targets; missing groups; a train split too small for `cv.num_folds`. Rule
for empty texts and targets: refused, with their count and first example numbers (a prompt trained on an empty
input learns nothing from it, and an empty target trains only the closing eos). The cheap file checks run before
`datasets.load_dataset`; a load that still fails is diagnosed by reading the file line by line.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from softprompt.errors import ConfigError

# task.source.path values whose files are text we can read line by line: datasets' json and csv builders, and
# tsv (the csv builder with tabs).
LINE_FORMATS = ("csv", "tsv", "json")
DELIMITERS = {"csv": ",", "tsv": "\t"}  # the delimited formats and their field separators
PARQUET_MAGIC = b"PAR1"  # a Parquet file's first (and last) four bytes
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4", ".tar")
HEAD_BYTES = 1 << 16  # enough to judge a file's format and whether it holds anything
SHOWN_ROWS = 5  # example numbers quoted in a message


class DataError(ConfigError):
    """A data file, or what it holds, cannot serve the task: names the key (a file's or a column's), the value
    and what is wrong."""


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """No progress bars or log lines from datasets meanwhile, so that a refusal is the one line on stderr."""
    bars_were_off, level = datasets.are_progress_bars_disabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()
        datasets.logging.set_verbosity(level)


def file_entries(data_files: Any, key: str = "task.source.data_files") -> list[tuple[str, str]]:
    """(config key, file) pairs of `task.source.data_files`: a file, a list of files, or split -> file(s)."""
    if isinstance(data_files, str | os.PathLike):
        return [(key, str(data_files))]
    if isinstance(data_files, Mapping):
        return [pair for split, files in data_files.items() for pair in file_entries(files, f"{key}.{split}")]
    if isinstance(data_files, Sequence):
        return [(key, str(file)) for file in data_files]
    return []


def read_head(path: Path, limit: int = HEAD_BYTES) -> bytes:
    """The first `limit` bytes of a file (OSError when it cannot be read)."""
    with path.open("rb") as stream:
        return stream.read(limit)


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) of the non-blank lines."""
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _looks_like_json(line: str) -> bool:
    return line.lstrip().startswith(("{", "["))


def check_data_files(path_format: str, data_files: Any) -> None:
    """Every local file of `task.source.data_files` exists, can be read, holds something, and is in the format
    `task.source.path` names (csv, tsv or json; a Parquet file by its first bytes); remote and compressed files
    are left to `datasets`."""
    for key, file in file_entries(data_files):
        if "://" in file:
            continue
        matches = sorted(glob.glob(os.path.expanduser(file))) if glob.has_magic(file) else [os.path.expanduser(file)]
        if not matches or not Path(matches[0]).exists():
            where = "" if os.path.isabs(file) else f" (relative paths start from {os.getcwd()})"
            raise DataError(key, file, f"no such file{where}; point it at an existing data file")
        for match in matches:
            check_data_file(path_format, key, Path(match))


def check_data_file(path_format: str, key: str, path: Path) -> None:
    if path.is_dir():
        raise DataError(key, str(path), "it is a folder; point it at a data file (or a glob such as folder/*.jsonl)")
    try:
        head = read_head(path)
    except OSError as error:
        raise DataError(key, str(path), f"it cannot be read ({error.strerror or error}); make it readable "
                        "(chmod a+r) or point at a copy") from None
    if not head:
        raise DataError(key, str(path), "the file is empty (0 bytes)")
    if path.suffix.lower() in COMPRESSED:
        return
    if path_format == "parquet" or head.startswith(PARQUET_MAGIC):
        _check_parquet(path_format, key, path, head)
    if path_format not in LINE_FORMATS:
        return
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(key, str(path), "it is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8")
    whole = len(head) < HEAD_BYTES
    text = head.decode("utf-8-sig", errors="replace")  # a byte-order mark (Excel's CSV) is no content
    lines = _lines(text)
    if not lines and whole:
        raise DataError(key, str(path), "the file holds only whitespace, no examples")
    if not lines:
        return
    number, first = lines[0]
    if path_format in DELIMITERS:
        _check_delimited(path_format, key, path, (number, first), text, whole)
    elif not _looks_like_json(first):
        shown = first if len(first) <= 60 else first[:57] + "..."
        guess = _looks_like(first)
        like = f"; it looks like {guess.upper()}: set task.source.path={guess}" if guess in DELIMITERS else ""
        raise DataError(key, str(path), f"task.source.path=json expects JSON Lines (one JSON object per line), but "
                        f"line {number} is {shown!r}{like}")


def _looks_like(first_line: str) -> str | None:
    """The text format a file's first line suggests: json, csv (a comma), tsv (a tab), or None."""
    if _looks_like_json(first_line):
        return "json"
    return "csv" if "," in first_line else "tsv" if "\t" in first_line else None


def _check_parquet(path_format: str, key: str, path: Path, head: bytes) -> None:
    """A Parquet file where task.source.path says parquet, and only there (its first bytes say which)."""
    if path_format != "parquet":
        raise DataError(key, str(path), f"task.source.path={path_format} expects text, but this is a Parquet file; "
                        "set task.source.path=parquet")
    if not head.startswith(PARQUET_MAGIC):
        guess = _looks_like(head.decode("utf-8-sig", errors="replace").lstrip().split("\n", 1)[0])
        like = f"{guess.upper()}: set task.source.path={guess}" if guess else \
            "another format: set task.source.path to it (csv, tsv, json)"
        raise DataError(key, str(path), f"task.source.path=parquet expects a Parquet file (it starts with PAR1), but "
                        f"this one starts with {head[:4]!r}; it looks like {like}")


def first_record(lines: Iterable[str], delimiter: str) -> tuple[int, list[str]] | None:
    """(line number, fields) of the first CSV record that is not blank (pandas skips blank lines), or None where
    there is none or the quoting is broken. `lines`: a file opened with newline="", or a StringIO."""
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    with contextlib.suppress(csv.Error):
        for record in reader:
            if len(record) > 1 or any(field.strip() for field in record):
                return reader.line_num, record
    return None


def _check_delimited(path_format: str, key: str, path: Path, first: tuple[int, str], text: str, whole: bool) -> None:
    """A CSV or TSV file (`text`: its head, all of it where `whole`) has a header row in its own format and at
    least one example."""
    number, line = first
    name = path_format.upper()
    other = "tsv" if path_format == "csv" else "csv"
    if _looks_like_json(line):
        raise DataError(key, str(path), f"task.source.path={path_format} expects {name} with a header row, but line "
                        f"{number} is JSON; set task.source.path=json for JSON Lines")
    header = first_record(io.StringIO(text, newline=""), DELIMITERS[path_format])
    if header is not None and len(header[1]) == 1 and DELIMITERS[other] in header[1][0]:
        separated = "tab-separated" if other == "tsv" else "comma-separated"
        raise DataError(key, str(path), f"task.source.path={path_format} expects {name}, but the header (line "
                        f"{header[0]}) is {separated}; set task.source.path={other}")
    with contextlib.suppress(csv.Error):  # broken quoting: datasets fails, then malformed_line finds the line
        if whole and len(list(csv.reader(io.StringIO(text, newline=""), delimiter=DELIMITERS[path_format]))) < 2:
            raise DataError(key, str(path), f"the {name} file has a header row but no examples")


def malformed_line(path_format: str, path: Path) -> str | None:
    """What is wrong with a CSV, TSV or JSON Lines file and where (`line N ...`), or None where nothing is found."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        return f"line {line} is not UTF-8 text (byte {error.start}); save the file as UTF-8"
    except OSError:
        return None
    if path_format == "json":
        if text.lstrip().startswith("["):  # one JSON document (a list of objects) rather than JSON Lines
            try:
                json.loads(text)
            except json.JSONDecodeError as error:
                return f"line {error.lineno} is not valid JSON ({error.msg}, column {error.colno})"
            return None
        for number, line in _lines(text):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                return (f"line {number} is not valid JSON ({error.msg}, column {error.colno}); each line must be one "
                        "JSON object")
            if not isinstance(row, dict):
                return f"line {number} is a JSON {type(row).__name__}, not an object with the columns as keys"
        return None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, delimiter=DELIMITERS[path_format])
    header, start = None, 1
    try:
        for record in reader:
            if header is None:
                header = record
            elif record and len(record) != len(header):
                return f"line {start} has {len(record)} fields where the header (line 1) has {len(header)}"
            start = reader.line_num + 1
    except csv.Error as error:
        if "end of data" in str(error):
            return f"line {start} opens a quoted field that is never closed; fix the CSV quoting"
        return f"line {reader.line_num}: {error}; fix the CSV quoting"
    return None


def load_failure(source: Mapping, data_files: Any, error: Exception) -> ConfigError:
    """One line for a `datasets.load_dataset` call that raised `error`."""
    path_format = str(source["path"])
    reason = " ".join(str(error).split()) or type(error).__name__
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause).strip():
        reason = f"{reason}: {' '.join(str(cause).split())}"
    entries = file_entries(data_files)
    if not entries:
        if isinstance(error, ConnectionError) or "offline" in reason.lower() or "connect" in reason.lower():
            reason = ("it could not be fetched from the Hugging Face hub (no network, or HF_HUB_OFFLINE=1) and is "
                      "not in the local cache; set task.source.path=json (or csv) and task.source.data_files to "
                      "local files, or use a task with an offline asset")
        return DataError("task.source.path", path_format, reason)
    if path_format in LINE_FORMATS:
        for key, file in entries:
            for match in sorted(glob.glob(os.path.expanduser(file))) if glob.has_magic(file) else [file]:
                path = Path(match).expanduser()
                if path.suffix.lower() not in COMPRESSED and (problem := malformed_line(path_format, path)):
                    return DataError(key, str(path), problem)
    files = ", ".join(file for _, file in entries)
    hint = ""
    if any(word in reason for word in ("as a scalar of type", "Couldn't cast", "schema")):
        hint = "; the splits' files must hold the same columns with the same types (numbers in one, text in another?)"
    elif "changed from" in reason:
        hint = "; a column must hold one type in every row (numbers in some rows, text in others?)"
    return DataError("task.source.data_files", files, f"datasets could not read them as {path_format} "
                     f"({reason}){hint}")


def split_origin(source: Mapping, split_name: str) -> str:
    """Where a split comes from, for messages: its files, the offline asset or the hub dataset."""
    data_files = source.get("data_files")
    if source.get("asset"):
        return f"offline asset {source['asset'].get('builder')}"
    if isinstance(data_files, Mapping) and split_name in data_files:
        return ", ".join(file for _, file in file_entries(data_files[split_name]))
    if data_files:
        return ", ".join(file for _, file in file_entries(data_files))
    return f"{source['path']}, split {split_name!r}"


def _column(dataset: Dataset, name: str) -> pa.ChunkedArray:
    return dataset.with_format("arrow")[name]


def _examples(mask: np.ndarray) -> str:
    """`#3, #7, ...` (counting from 1) of the rows `mask` marks."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(f"#{i + 1}" for i in rows[:SHOWN_ROWS])
    return f"examples {shown}{', ...' if len(rows) > SHOWN_ROWS else ''}, counting from 1"


def _json_values(column: pa.ChunkedArray) -> list | None:
    """The values of a JSON Lines column whose rows hold different types (datasets' Json feature: text in some,
    numbers in others), decoded; None for any other column."""
    if getattr(column.type, "extension_name", None) != "arrow.json":
        return None
    return [None if v is None else json.loads(v) for chunk in column.chunks for v in chunk.storage.to_pylist()]


def _empty_mask(column: pa.ChunkedArray) -> np.ndarray:
    """Rows whose value is missing, or a string that is empty or only whitespace."""
    if (values := _json_values(column)) is not None:
        return np.array([v is None or (isinstance(v, str) and not v.strip()) for v in values], dtype=bool)
    missing = pc.is_null(column)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)
        missing = pc.or_(missing, pc.fill_null(blank, True))
    return np.asarray(missing.to_numpy(zero_copy_only=False), dtype=bool)


def check_texts(dataset: Dataset, fields: Mapping[str, str], where: str) -> None:
    """Every mapped text (and target) field holds text in every example: refused otherwise, with the count and
    the first example numbers."""
    for field, column_name in fields.items():
        column = _column(dataset, field)
        kind = "target" if field == "target" else "text"
        if pa.types.is_nested(column.type):
            raise DataError(f"task.columns.{field}", column_name, f"the {where} holds {column.type} values, not "
                            f"{kind}; map the field to a column of strings (nested columns as parent.child)")
        nested = [v for v in _json_values(column) or [] if isinstance(v, list | dict)]
        if nested:  # some rows text, others lists or records
            raise DataError(f"task.columns.{field}", column_name, f"the {where} holds lists or records in some "
                            f"examples (e.g. {nested[0]!r}), not {kind}; map the field to a column of strings (nested "
                            "columns as parent.child)")
        empty = _empty_mask(column)
        if empty.any():
            raise DataError(f"task.columns.{field}", column_name,
                            f"{int(empty.sum())} of {len(empty)} examples of the {where} have an empty or "
                            f"whitespace-only {kind} ({_examples(empty)}); fill or remove them")


def check_labels(dataset: Dataset, column_name: str, label_names: list[str], where: str) -> None:
    """Labels of one kind a classification task can use: present, names or integer indices (not floats, lists)."""
    key = "task.columns.label"
    feature = dataset.features["label"]
    column = _column(dataset, "label")
    missing = np.asarray(pc.is_null(column).to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or _json_values(column) is not None:
        missing |= _empty_mask(column)  # an empty cell, "" or only whitespace
    if pa.types.is_floating(column.type):
        missing |= np.asarray(pc.fill_null(pc.is_nan(column), False).to_numpy(zero_copy_only=False), dtype=bool)
    if isinstance(feature, datasets.ClassLabel):
        missing |= np.asarray(pc.fill_null(pc.less(column, 0), False).to_numpy(zero_copy_only=False), dtype=bool)
    if missing.any():
        raise DataError(key, column_name, f"{int(missing.sum())} of {len(missing)} examples of the {where} have no "
                        f"label ({_examples(missing)}); fill or remove them")
    if isinstance(feature, datasets.ClassLabel) or pa.types.is_string(column.type) \
            or pa.types.is_large_string(column.type) or pa.types.is_integer(column.type) \
            or pa.types.is_boolean(column.type):
        return
    kind = "list" if pa.types.is_nested(column.type) else "float" if pa.types.is_floating(column.type) \
        else str(column.type)
    shown = ", ".join(repr(v) for v in column.slice(0, 2).to_pylist())
    if (values := _json_values(column)) is not None:  # one value of each type
        kind = "mixed-type"
        first: dict[type, object] = {}
        for value in values:
            first.setdefault(type(value), value)
        shown = ", ".join(repr(v) for v in first.values())
    raise DataError(key, column_name, f"the {where} has {kind} labels (e.g. {shown}); a label is one of "
                    f"task.labels {label_names} or its integer index (one label per example)")


def check_groups(dataset: Dataset, column_name: str, where: str) -> None:
    """Every example names its group (the `group` field, task.columns.group): a name or a number, never missing."""
    column = _column(dataset, "group")
    if pa.types.is_nested(column.type) or any(isinstance(v, list | dict) for v in _json_values(column) or []):
        raise DataError("task.columns.group", column_name, f"the {where} holds lists or records there, not group "
                        "names; map the group to a column of names or numbers")
    empty = _empty_mask(column)
    if empty.any():
        raise DataError("task.columns.group", column_name, f"{int(empty.sum())} of {len(empty)} examples of the "
                        f"{where} have no group ({_examples(empty)}); fill or remove them")


def check_folds(train: Dataset, cv: Mapping, where: str, label_names: list[str] | None) -> None:
    """The train split can be cut into `cv.num_folds` folds, stratified: at least one example per fold, and each
    label (of a classification task) at least once per fold."""
    num_folds = cv.get("num_folds")
    if not num_folds:
        return
    if len(train) < num_folds:
        raise DataError("cv.num_folds", num_folds, f"the {where} has {len(train)} examples, fewer than the "
                        f"{num_folds} folds; lower cv.num_folds or add examples")
    if label_names is None:
        return
    labels = _column(train, "label").to_numpy(zero_copy_only=False).astype(np.int64)
    counts = np.bincount(labels, minlength=len(label_names))
    for index, count in enumerate(counts):
        if 0 < count < num_folds:
            raise DataError("cv.num_folds", num_folds, f"label {label_names[index]!r} has {count} examples in the "
                            f"{where}, fewer than the {num_folds} folds, so some folds would hold none of it "
                            "(folds are stratified by label); lower cv.num_folds or add examples of it")
