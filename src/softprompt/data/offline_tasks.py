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


BUILDERS: dict[str, Callable[[Path, Path, Mapping], None]] = {"rotten_tomatoes": build_rotten_tomatoes}
