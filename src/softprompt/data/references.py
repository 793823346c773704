"""Several references per source (`task.references: grouped`): evaluation rows that share a source become one
example carrying the targets of all of them, so each source is generated once and scored against all its references
(E2E's test split has one row per human reference of a meaning representation)."""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset

from softprompt.data.task import TARGET

REFERENCES = "references"  # the column (and batch key) holding a grouped example's references, in row order


def source_keys(dataset: Dataset, text_fields: Sequence[str]) -> list[str]:
    """Each row's source: its text fields as written, joined by a separator no text holds."""
    columns = [dataset[name] for name in text_fields]
    return ["\x1f".join(str(value) for value in values) for values in zip(*columns, strict=True)]


def group_references(dataset: Dataset, text_fields: Sequence[str]) -> Dataset:
    """One row per distinct source, in the order sources first appear: the first row that has it (its inputs, its
    target for the loss, its row_index), plus `references`, the targets of all rows with that source in row order."""
    first: dict[str, int] = {}
    references: dict[str, list[str]] = {}
    for index, (key, target) in enumerate(zip(source_keys(dataset, text_fields), dataset[TARGET], strict=True)):
        first.setdefault(key, index)
        references.setdefault(key, []).append(str(target))
    return dataset.select(list(first.values())).add_column(REFERENCES, [references[key] for key in first])


def reference_counts(dataset: Dataset) -> dict[str, int]:
    """What a grouped split scores: its sources and their references, all told."""
    return {"sources": len(dataset), "references": sum(len(refs) for refs in dataset[REFERENCES])}
