"""The DataModule's typed settings: the `data` group, the `cv` group, and how a task's examples are rendered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DataSettings:
    """The `data` group (checked by data.checks.check_data). A DataModule that only renders new inputs (a loaded
    prompt's) builds no loaders and needs only `padding_side`; the rest is None there."""

    batch_size: int | None
    eval_batch_size: int | None
    num_workers: int | None
    padding_side: str
    group_by_length: bool
    length_group_batches: int | None
    max_samples: Mapping[str, int | None]

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> DataSettings:
        return cls(batch_size=data.get("batch_size"), eval_batch_size=data.get("eval_batch_size"),
                   num_workers=data.get("num_workers"), padding_side=data["padding_side"],
                   group_by_length=bool(data.get("group_by_length")),
                   length_group_batches=data.get("length_group_batches"),
                   max_samples=dict(data.get("max_samples") or {}))


@dataclass(frozen=True)
class CVSettings:
    """The `cv` group (checked by data.checks.check_cv): fold `fold` of `num_folds` (None: the task's own validation
    split), folds drawn with `seed`; `mode` all runs every fold in one job."""

    num_folds: int | None
    fold: int | None
    seed: int | None
    mode: str

    @classmethod
    def from_config(cls, cv: Mapping[str, Any]) -> CVSettings:
        return cls(num_folds=cv.get("num_folds"), fold=cv.get("fold"), seed=cv.get("seed"),
                   mode=cv.get("mode", "single"))


@dataclass(frozen=True)
class Rendering:
    """How a task's examples become model inputs: the prompt template (the task's text, the answer and the method's
    virtual-token slots), `num_demonstrations` solved training examples before each query (each followed by
    `demonstration_separator`), and the family adapter's answer: the token that stands at it (masked LMs' mask,
    else None) and whether it must end the input (causal LMs: the answer is the next token)."""

    template: str
    num_demonstrations: int = 0
    demonstration_separator: str = "\n\n"
    answer_token_id: int | None = None
    answer_must_end: bool = True
