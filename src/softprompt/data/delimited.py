"""CSV and TSV files (`task.source.path=csv` or `tsv`): their header rows, checked before `datasets` reads them,
and how it reads them.

Every column is read as text, exactly as written. Left to itself, pandas guesses each column's type in every chunk
of 10,000 rows: `007` becomes 7, `1.50` becomes 1.5, and `NA`, `null` or `None` become missing values. Only an
empty cell is a missing value here. A label cell of digits is a label index (sources.py). A row with more fields
than its header is refused: pandas would quietly take its first fields as an index, or drop its last ones.
"""

from __future__ import annotations

import contextlib
import glob
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets import Features, Value
from pandas.errors import ParserWarning

from softprompt.data.validation import COMPRESSED, DELIMITERS, DataError, file_entries, first_record


def header_row(path: Path, delimiter: str) -> tuple[int, list[str]] | None:
    """(line number, column names) of a file's header row, as pandas reads it: the first record that is not blank,
    without a byte-order mark, an empty name as `Unnamed: i`. None where it cannot be read as UTF-8 CSV."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as stream:
            found = first_record(stream, delimiter)
    except (OSError, UnicodeDecodeError):
        return None
    return None if found is None else (found[0], [name or f"Unnamed: {i}" for i, name in enumerate(found[1])])


def _local_files(file: str) -> list[Path] | None:
    """The local, uncompressed files `file` (a path or a glob) names; None where any is remote or compressed."""
    if "://" in file:
        return None
    paths = [Path(p) for p in sorted(glob.glob(os.path.expanduser(file)))] if glob.has_magic(file) \
        else [Path(file).expanduser()]
    return None if any(p.suffix.lower() in COMPRESSED for p in paths) else paths


def check_headers(path_format: str, data_files: Any) -> list[str] | None:
    """Each local file's header names each column once, and every file names the same columns (`datasets` reads
    all splits with one set of columns). Returns those columns, or None where some file's header is out of
    reach (remote, compressed, or not UTF-8 text: datasets reports that one)."""
    first: tuple[str, list[str]] | None = None
    complete = True
    for key, file in file_entries(data_files):
        paths = _local_files(file)
        complete = complete and paths is not None
        for path in paths or []:
            found = header_row(path, DELIMITERS[path_format])
            if found is None:
                complete = False
                continue
            number, names = found
            repeated = [(name, count) for name, count in Counter(names).items() if count > 1]
            if repeated:
                name, count = repeated[0]
                times = "twice" if count == 2 else f"{count} times"
                raise DataError(key, str(path), f"the header (line {number}) names column {name!r} {times}; give each "
                                "column a unique name")
            if first is None:
                first = (str(path), names)
            elif set(names) != set(first[1]):
                raise DataError(key, str(path), f"the header (line {number}) names the columns {names}, but "
                                f"{first[0]} names {first[1]}; every file needs the same columns (in any order)")
    return first[1] if first is not None and complete else None


def read_options(path_format: str, columns: list[str] | None) -> dict[str, Any]:
    """`datasets.load_dataset("csv", ...)` keywords: the delimiter; every column as text (where the columns are
    known), only an empty cell missing; and never a row's first fields as an index."""
    options: dict[str, Any] = {"sep": DELIMITERS[path_format], "keep_default_na": False, "na_values": [""],
                               "index_col": False}
    if columns is not None:
        options["features"] = Features({name: Value("string") for name in columns})
    return options


@contextlib.contextmanager
def strict_rows() -> Iterator[None]:
    """pandas' warning that a row has more fields than the header (it drops them) is an error meanwhile."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "Length of header or names does not match", ParserWarning)
        yield
