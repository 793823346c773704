"""A property test of the data readers. Generated CSV, TSV and JSON Lines files vary their headers, quoting, line
ends, encodings, byte-order marks, label types, blank lines and missing cells. Each is read as softprompt-train
reads a task's splits (`read_splits`: the file checks, datasets, then the column, text and label checks). A file
whose examples a run can use loads into exactly the rows written: the same texts, and each label's index in
task.labels. Any other file is refused with one SoftPromptError line, and nothing else is raised."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt.data.sources import read_splits
from softprompt.errors import SoftPromptError

# Text without the characters arrow and Python disagree on as whitespace (only space, tab and line ends).
CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")) | st.sampled_from(' \t\n\r,;"\'.é€')
WORDS = st.text(CHARS, min_size=1, max_size=12).filter(lambda s: bool(s.strip()))
TRICKY = st.sampled_from(["007", "1.50", "NA", "N/A", "None", "null", "nan", "True", "#N/A", " padded ", "-1",
                          "a,b", 'say "hi"', "line\nbreak", "crlf\r\nend", "tab\there"])
NAMES = st.sampled_from(["text", "label", "review", "sentiment", "a", "Unnamed: 0", "x.y", " spaced "]) | WORDS
LABEL_NAMES = st.sampled_from([["negative", "positive"], ["no", "yes", "maybe"]]) | \
    st.lists(WORDS.filter(lambda s: not re.fullmatch(r"\s*-?[0-9]+\s*", s) and s == s.strip()),
             min_size=2, max_size=3, unique=True)
MISSING = object()  # a cell left out: a JSON key not written, or a short CSV row


@dataclass
class File:
    path_format: str  # csv, tsv or json
    header: list[str]  # column names; text in `text_at`, the label in `label_at`, maybe one more column
    text_at: int
    label_at: int
    rows: list[list[object]]
    labels: list[str]  # task.labels
    encoding: str
    line_end: str
    quoting: int
    blank_lines: list[int]  # blank lines go before these rows

    def content(self) -> str:
        if self.path_format == "json":
            lines = [json.dumps({name: value for name, value in zip(self.header, row, strict=True)
                                 if value is not MISSING}, ensure_ascii=False) for row in self.rows]
            lines = [*itertools.chain.from_iterable(["", line] if i in self.blank_lines else [line]
                                                    for i, line in enumerate(lines))]
            return "".join(line + self.line_end for line in lines)
        out = io.StringIO(newline="")
        # csv.writer quotes a field holding its line end's characters only: with "\n" a lone "\r" would end a line.
        bare_cr = self.line_end == "\n" and any("\r" in str(v) for v in itertools.chain(self.header, *self.rows))
        writer = csv.writer(out, delimiter="," if self.path_format == "csv" else "\t", lineterminator=self.line_end,
                            quoting=csv.QUOTE_ALL if bare_cr else self.quoting)
        writer.writerow(self.header)
        for i, row in enumerate(self.rows):
            if i in self.blank_lines:
                out.write(self.line_end)
            while len(row) > 2 and row[-1] is MISSING:  # a short row: its last cells are missing (one field
                row = row[:-1]  # alone could be a whitespace-only line, which CSV readers skip as blank)
            writer.writerow([None if value is MISSING else value for value in row])
        return out.getvalue()

    def expected(self) -> tuple[list[str], list[int]] | None:
        """The (texts, label indices) a run reads from this file, or None where it must be refused."""
        if self.path_format != "json" and len(set(self.header)) < len(self.header):
            return None  # a column named twice
        texts = [row[self.text_at] for row in self.rows]
        labels = [row[self.label_at] for row in self.rows]
        if not all(isinstance(t, str) and t.strip() for t in texts):
            return None  # a missing or blank text
        if all(isinstance(v, str) and v in self.labels for v in labels):
            return texts, [self.labels.index(v) for v in labels]
        if all(type(v) is int and 0 <= v < len(self.labels) for v in labels):
            return texts, list(labels)
        return None  # a missing label, one not listed, an index out of range, a float, names mixed with indices


LABEL_VALUES = ("name", "index", "unknown", "out_of_range", "float", "missing", "empty")


@st.composite
def files(draw) -> File:
    path_format = draw(st.sampled_from(["csv", "tsv", "json"]))
    width = draw(st.integers(2, 3))
    unique = path_format == "json" or draw(st.integers(0, 7)) > 0  # JSON objects cannot name a key twice
    header = draw(st.lists(NAMES, min_size=width, max_size=width, unique=unique))
    text_at, label_at = draw(st.permutations(range(width)))[:2]
    labels = draw(LABEL_NAMES)
    kind = draw(st.sampled_from(["name", "index"]))  # what most labels are; some may be broken below
    broken = draw(st.integers(0, 2)) == 0  # a third of the files have bad texts or labels
    rows = []
    for _ in range(draw(st.integers(1, 5))):
        row: list[object] = [draw(st.one_of(WORDS, TRICKY, st.just(MISSING))) for _ in range(width)]
        row[text_at] = draw(st.one_of(WORDS, TRICKY) if not broken or draw(st.booleans()) else
                            st.sampled_from([None, "", "  ", MISSING]))
        value = draw(st.sampled_from(LABEL_VALUES)) if broken and draw(st.booleans()) else kind
        row[label_at] = {"name": draw(st.sampled_from(labels)), "index": draw(st.integers(0, len(labels) - 1)),
                         "unknown": "neutral", "out_of_range": len(labels), "float": 0.5, "missing": MISSING,
                         "empty": ""}[value]
        rows.append(row)
    return File(path_format, header, text_at, label_at, rows, labels,
                encoding=draw(st.sampled_from(["utf-8"] * 4 + ["utf-8-sig", "latin-1", "utf-16"])),
                line_end=draw(st.sampled_from(["\n", "\r\n"])),
                quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC])),
                blank_lines=draw(st.lists(st.integers(0, len(rows) - 1), max_size=2)))


@pytest.fixture(scope="module")
def read(tmp_path_factory, task_config):
    """`read(file)`: the file written and read as a task's train and test splits: (texts, labels), or a
    SoftPromptError."""
    folder = tmp_path_factory.mktemp("generated")
    counter = itertools.count()

    def read_file(file: File) -> tuple[list[str], list[int]] | SoftPromptError:
        text = file.content()
        try:
            data = text.encode(file.encoding)
        except UnicodeEncodeError:  # latin-1 cannot hold this text
            data = text.encode("utf-8")
        path = folder / f"{next(counter)}.{file.path_format}"  # a new name: datasets caches by path
        path.write_bytes(data)
        task = task_config(
            source={"path": file.path_format, "data_files": {"train": str(path)}, "asset": None},
            splits={"train": "train", "validation": None, "test": "train"},
            columns={"text": file.header[file.text_at], "label": file.header[file.label_at]},
            text_fields=["text"], labels=file.labels, template="{text} =",
            verbalizer={label: f" {i}" for i, label in enumerate(file.labels)}, max_length=64)
        try:
            train = read_splits(task, {"num_folds": None}, Path(folder))["train"]
        except SoftPromptError as error:
            return error
        return list(train["text"]), list(train["label"])

    return read_file


def _readable(file: File) -> bool:
    """Whether the bytes written are the UTF-8 text meant (latin-1 of ASCII is; UTF-16 never is)."""
    text = file.content()
    if file.encoding in ("utf-8", "utf-8-sig"):
        return True
    if file.encoding == "utf-16":
        return False
    try:
        return text.encode(file.encoding).decode("utf-8") == text
    except UnicodeError:
        return file.encoding == "latin-1" and not _encodable(text)  # written as UTF-8 instead


def _encodable(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(file=files())
def test_a_generated_file_loads_exactly_as_written_or_is_refused_in_one_line(read, file):
    outcome = read(file)
    expected = file.expected() if _readable(file) else None
    if isinstance(outcome, SoftPromptError):
        message = str(outcome)
        assert "\n" not in message and " is invalid: " in message, message
        assert expected is None, f"refused a good file: {message}\n{file.content()!r}"
    else:
        assert expected is not None, f"loaded a bad file as {outcome}:\n{file.content()!r}"
        assert outcome == expected, file.content()
