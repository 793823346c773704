"""A task mixture's data: each task is its own PromptDataModule (its template, verbalizer, folds and
data.max_samples); their splits are concatenated, every example carrying its task id."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Value, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from softprompt.data.collate import PadCollator
from softprompt.data.datamodule import PromptDataModule, SplitLoaders
from softprompt.data.references import REFERENCES
from softprompt.data.settings import CVSettings, DataSettings, Rendering
from softprompt.data.task import LABEL, TARGET, MixtureTask

log = logging.getLogger("softprompt")

# What batches are made of; a task's own text fields stay with it (tasks name theirs differently).
MODEL_COLUMNS = ("input_ids", "slot_ids", "answer_index", "row_index", "truncated", "task_id")


def mixture_indices(sizes: Sequence[int], weights: Sequence[float], seed: int) -> np.ndarray:
    """One epoch of a weighted mixture, as indices into the concatenated tasks: as many examples as all tasks
    hold, task t's share weight_t / sum(weights) (largest remainder), drawn from a seeded permutation of the
    task's examples, repeated when the share exceeds them."""
    total, weight_sum = sum(sizes), float(sum(weights))
    exact = [total * w / weight_sum for w in weights]
    counts = [int(e) for e in exact]
    for t in sorted(range(len(exact)), key=lambda t: counts[t] - exact[t])[: total - sum(counts)]:
        counts[t] += 1
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0, *sizes[:-1]])
    parts = []
    for size, count, offset in zip(sizes, counts, offsets, strict=True):
        rounds = -(-count // size) if count else 0
        order = np.concatenate([rng.permutation(size) for _ in range(rounds)]) if rounds else np.empty(0, int)
        parts.append(offset + order[:count])
    return np.concatenate(parts)


class MixtureDataModule(SplitLoaders):
    """The tasks of a mixture, in task-id order; loaders, sharding and resuming as for one task."""

    def __init__(self, task: MixtureTask, data: DataSettings, cv: CVSettings, renderings: Mapping[str, Rendering],
                 tokenizer: PreTrainedTokenizerBase, cache_dir: str | Path, seed: int,
                 raw_splits: Mapping[str, Mapping[str, Dataset]] | None = None) -> None:
        """`renderings`: each task's, by name; `raw_splits`: each task's splits as read and checked."""
        super().__init__(data, seed)
        self.task, self.tokenizer = task, tokenizer
        self.generation = task.member_type == "generation"
        self.members = {name: PromptDataModule(member, data, cv, renderings[name], tokenizer, cache_dir, seed,
                                               task_id=task_id, raw_splits=(raw_splits or {}).get(name))
                        for task_id, (name, member) in enumerate(task.members.items())}

    def _model_columns(self, split: Dataset) -> Dataset:
        answer = ["target_ids", TARGET] if self.generation else [LABEL]
        if REFERENCES in split.column_names:  # a grouped task's evaluation split
            answer.append(REFERENCES)
        kept = split.select_columns([*MODEL_COLUMNS, *answer])
        return kept if self.generation else kept.cast_column(LABEL, Value("int64"))  # ClassLabel vs int per task

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for member in self.members.values():
            member.setup()
        for role in ("train", "validation", "test"):
            parts = [self._model_columns(m.splits[role]) for m in self.members.values()]
            if any(REFERENCES in part.column_names for part in parts):
                # One set of columns for all tasks: a single-reference task's rows carry their own target; its
                # objective scores them as before.
                parts = [part if REFERENCES in part.column_names else
                         part.add_column(REFERENCES, [[str(target)] for target in part[TARGET]]) for part in parts]
            self.splits[role] = concatenate_datasets(parts)
        self.split_sizes = {name: m.split_sizes for name, m in self.members.items()}
        counts = {name: m.references for name, m in self.members.items()}
        self.references = counts if any(counts.values()) else None  # per task, where grouped
        self.truncated = {name: m.truncated for name, m in self.members.items()}
        folds = {name: m.fold_split for name, m in self.members.items()}
        self.fold_split = folds if any(folds.values()) else None  # per task, in k-fold runs
        if self.task.weights is not None:
            sizes = [len(m.splits["train"]) for m in self.members.values()]
            weights = [float(self.task.weights[name]) for name in self.members]
            indices = mixture_indices(sizes, weights, self.seed)
            self.splits["train"] = self.splits["train"].select(indices)
            drawn = np.bincount(np.asarray(self.splits["train"]["task_id"]), minlength=len(sizes))
            for name, count in zip(self.members, drawn.tolist(), strict=True):
                self.split_sizes[name]["train"]["drawn_per_epoch"] = count
            log.info("mixture weights %s: each epoch draws %s training examples", dict(zip(self.members, weights,
                     strict=True)), dict(zip(self.members, drawn.tolist(), strict=True)))

    def collator(self) -> PadCollator:
        return PadCollator(self.tokenizer.pad_token_id, self.data.padding_side,
                           target_field=TARGET if self.generation else None)

    def token_counts(self) -> torch.Tensor:
        """Token frequencies over every task's training split (for `init=vocab`)."""
        return sum(m.token_counts() for m in self.members.values())
