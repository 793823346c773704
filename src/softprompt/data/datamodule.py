"""The DataModule shared by every method: load, fold, render templates, tokenize (cached), collate."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from datasets import Dataset
from filelock import FileLock
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from softprompt.data.collate import PadCollator
from softprompt.data.folds import stratified_sample, train_val_indices
from softprompt.data.references import group_references, reference_counts, source_keys
from softprompt.data.sampling import (
    ResumableLoader,
    ShuffledShardSampler,
    evaluates_whole_splits,
    longest_first_shard,
)
from softprompt.data.settings import CVSettings, DataSettings, Rendering
from softprompt.data.sources import load_raw_splits, select_and_map
from softprompt.data.task import GROUP, LABEL, TARGET, TaskConfig
from softprompt.data.templates import Template, as_written, special_tokens_around
from softprompt.data.verbalizer import label_token_ids, label_words
from softprompt.errors import ConfigError

log = logging.getLogger("softprompt")

TOKENIZATION_VERSION = 4  # bump when rendering changes, to invalidate cached tokenizations


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable hash of the tokenizer's vocabulary and rules (the name alone is not enough)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _tokenization_lock(dataset: Dataset, fingerprint: str) -> contextlib.AbstractContextManager:
    """Runs sharing a datasets cache tokenise a split one at a time: the second one waits, then reads the first
    one's cache file (datasets writes it under a temporary name and renames it). In-memory datasets and read-only
    caches (datasets writes no cache file there): no lock."""
    folder = Path(dataset.cache_files[0]["filename"]).parent if dataset.cache_files else None
    if folder is None or not os.access(folder, os.W_OK):
        return contextlib.nullcontext()
    return FileLock(str(folder / f"softprompt-tokenize-{fingerprint}.lock"))


class SplitLoaders(L.LightningDataModule):
    """Train/validation/test loaders over `splits` (set by `setup`): seeded, resumable, sharded across processes,
    shuffled for training and longest-first for evaluation; batches made by `collator()`."""

    def __init__(self, data: DataSettings, seed: int) -> None:
        super().__init__()
        if data.padding_side not in ("left", "right"):
            raise ConfigError("data.padding_side", data.padding_side, "allowed: left, right")
        self.data, self.seed = data, seed
        self.splits: dict[str, Dataset] = {}
        # Per split: examples whose text was cut to fit task.max_length, and sizes before and after
        # data.max_samples (recorded in metrics.json, so a shrunken validation fold is never silent).
        self.truncated: dict[str, Any] = {}
        self.split_sizes: dict[str, Any] = {}
        # k-fold runs: what the folds are stratified and grouped by, and the groups on each side (metrics.json).
        self.fold_split: dict[str, Any] | None = None
        # task.references=grouped: per evaluation split, the sources scored and their references (metrics.json).
        self.references: dict[str, Any] | None = None
        self.demonstration_ids: list[int] = []

    def collator(self) -> PadCollator:
        raise NotImplementedError

    def _shard(self, role: str) -> tuple[int, int]:
        """(processes, this process's rank): each process loads its own share of a split."""
        trainer = self.trainer
        if trainer is None or (role != "train" and evaluates_whole_splits(trainer)):
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(self, role: str, shuffle: bool) -> DataLoader:
        batch_size = self.data.batch_size if role == "train" else self.data.eval_batch_size
        num_replicas, rank = self._shard(role)
        options = {
            "batch_size": int(batch_size),
            "num_workers": int(self.data.num_workers),
            "collate_fn": self.collator(),
            # Its own generator for the loader's worker seed, drawn at every iteration: the global one then serves
            # only the model (dropout), so a resumed run's restored random state gives the uninterrupted run's masks.
            "generator": torch.Generator().manual_seed(self.seed),
        }
        dataset = self.splits[role].with_format(None)
        if shuffle:
            grouping = {}
            if self.data.group_by_length:
                grouping = {"lengths": [len(ids) for ids in self.splits[role]["input_ids"]],
                            "batch_size": int(batch_size), "group_batches": int(self.data.length_group_batches)}
            sampler = ShuffledShardSampler(len(dataset), self.seed, num_replicas, rank, **grouping)
            return ResumableLoader(dataset, sampler=sampler, **options)
        # Scores do not depend on batch-mates, and predictions carry their row index back to dataset order.
        lengths = [len(ids) for ids in self.splits[role]["input_ids"]]
        return DataLoader(dataset, sampler=longest_first_shard(lengths, num_replicas, rank), **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


class PromptDataModule(SplitLoaders):
    """Knows tasks, templates, verbalizers and folds; nothing about how a method injects prompts. `task_id`: the
    task's index in a mixture (its examples carry it), None for a single task."""

    def __init__(self, task: TaskConfig, data: DataSettings, cv: CVSettings, rendering: Rendering,
                 tokenizer: PreTrainedTokenizerBase, cache_dir: str | Path, seed: int, task_id: int | None = None,
                 raw_splits: Mapping[str, Dataset] | None = None) -> None:
        super().__init__(data, seed)
        self.raw_splits = raw_splits  # the task's splits as read and checked before the backbone loaded
        self.task_id = task_id
        self.answer_token_id = rendering.answer_token_id  # masked LMs: the mask token stands at the answer
        leading, trailing = special_tokens_around(tokenizer)
        # Causal LMs: nothing may follow the answer position (the answer or target comes next).
        self.specials = (leading, [] if rendering.answer_must_end else trailing)
        self.generation = task.is_generation
        self.grouped_references = task.grouped_references
        self.num_demonstrations = rendering.num_demonstrations
        self.demonstration_separator = rendering.demonstration_separator
        self.task, self.cv = task, cv
        template = rendering.template
        self.template = Template.parse(template, task.text_fields, key="template")
        if rendering.answer_must_end and not self.template.answer_at_end:
            raise ConfigError(*as_written(template, task.template), "{answer} must end the template for causal LMs "
                              "(the answer is the next token)")
        self.tokenizer = tokenizer
        self.cache_dir = Path(cache_dir)

    @property
    def label_names(self) -> list[str]:
        return self.task.label_names

    def _strata(self, dataset: Dataset) -> list[int]:
        """What folds and demonstrations are stratified by: the label, or nothing for generation."""
        return [0] * len(dataset) if self.generation else list(dataset[LABEL])

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        num_folds = self.cv.num_folds
        raw = self.raw_splits if self.raw_splits is not None else \
            select_and_map(load_raw_splits(self.task.source, self.cache_dir), self.task, keep_group=bool(num_folds))
        tokenized = {role: self._tokenize(ds, role) for role, ds in raw.items()}
        test = tokenized.get("test", tokenized.get("validation"))
        if num_folds:
            train, validation = self._fold(tokenized["train"], int(num_folds))
        else:  # config checks guarantee a separate validation split here
            train, validation = tokenized["train"], tokenized["validation"]
        self.splits = {"train": train, "validation": validation, "test": test}
        self.demonstration_ids = self._demonstration_ids()
        if self.grouped_references:  # training keeps every (source, reference) pair
            for role in ("validation", "test"):
                self.splits[role] = group_references(self.splits[role], self.task.text_fields)
        self.split_sizes = {role: {"available": len(split), "used": len(split)} for role, split in self.splits.items()}
        limits = self.data.max_samples
        for role, limit in limits.items():
            if limit is not None and len(self.splits[role]) > int(limit):
                order = np.random.default_rng(int(self.cv.seed)).permutation(len(self.splits[role]))
                self.splits[role] = self.splits[role].select(np.sort(order[: int(limit)]))
                self.split_sizes[role]["used"] = int(limit)
                in_fold = role == "validation" and num_folds
                where = f"fold {self.cv.fold} of train" if in_fold else f"the {role} split"
                log.info("data.max_samples.%s=%s: %s uses %d of the %d examples of %s", role, limit, role, int(limit),
                         self.split_sizes[role]["available"], where)
        self.truncated = {role: int(sum(split["truncated"])) for role, split in self.splits.items()}
        if self.grouped_references:
            self.references = {role: reference_counts(self.splits[role]) for role in ("validation", "test")}
            log.info("task.references=grouped: %s", ", ".join(
                f"{role} {n['sources']} sources, {n['references']} references" for role, n in self.references.items()))
        log.info("examples whose text was cut to task.max_length=%s: %s", self.task.max_length,
                 ", ".join(f"{role} {n} of {len(self.splits[role])}" for role, n in self.truncated.items()))

    def _fold(self, split: Dataset, num_folds: int) -> tuple[Dataset, Dataset]:
        """The training part and validation fold `cv.fold` of the train split: stratified by label, and whole groups
        where the task names a group column (the `group` field, dropped here: the model never sees it), or, with
        grouped references, whole sources (a source's references never sit on both sides)."""
        groups = list(split[GROUP]) if GROUP in split.column_names else None
        if groups is None and self.grouped_references:
            groups = source_keys(split, self.task.text_fields)
        train_idx, val_idx = train_val_indices(self._strata(split), num_folds, int(self.cv.fold),
                                               int(self.cv.seed), groups)
        grouped_by = self.task.group_column or ("source" if self.grouped_references else None)
        self.fold_split = {"stratified_by": None if self.generation else LABEL,
                           "grouped_by": grouped_by if groups is not None else None, "groups": None}
        if groups is not None:
            if GROUP in split.column_names:
                split = split.remove_columns(GROUP)
            self.fold_split["groups"] = {"train": len({groups[i] for i in train_idx}),
                                         "validation": len({groups[i] for i in val_idx})}
            log.info("folds grouped by %s: %d groups train, %d validate (fold %s), none in both",
                     grouped_by, self.fold_split["groups"]["train"],
                     self.fold_split["groups"]["validation"], self.cv.fold)
        return split.select(train_idx), split.select(val_idx)

    def _demonstration_ids(self) -> list[int]:
        """k solved examples from the training fold (seeded, stratified), shared by every input, each followed by
        the separator. They go after the query's leading special tokens (see `collator`)."""
        if not self.num_demonstrations:
            return []
        train = self.splits["train"]
        separator = self.tokenizer(self.demonstration_separator, add_special_tokens=False).input_ids
        words = None if self.generation else label_token_ids(
            label_words(self.label_names, self.task.verbalizer), self.tokenizer)
        ids: list[int] = []
        for i in stratified_sample(self._strata(train), self.num_demonstrations, self.seed):
            ids += self.solved_example(train[int(i)], words) + separator
        return ids

    def solved_example(self, row: Mapping, words: Sequence[Sequence[Sequence[int]]] | None) -> list[int]:
        """A demonstration's tokens: the template with the example's answer in place (its label's first word, or
        its target), within task.max_length like any input; no mask, no virtual-token slots, no special tokens."""
        max_length = self.task.max_length
        if self.generation:
            text = self.template.render(row, self.tokenizer, max_length, with_slots=False).input_ids
            return text + self._target_ids(str(row[TARGET]))[:-1]  # the target without its closing eos
        answer = words[row[LABEL]][0]
        return self.template.render(row, self.tokenizer, max_length, answer_ids=answer, with_slots=False).input_ids

    def _target_ids(self, text: str) -> list[int]:
        """The target's tokens, cut to `task.max_target_length` including the closing eos."""
        ids = self.tokenizer(self.task.target_prefix + text, add_special_tokens=False).input_ids
        return [*ids[: self.task.max_target_length - 1], self.tokenizer.eos_token_id]

    def renderer(self, with_targets: bool = True) -> Callable[[Mapping, int], dict]:
        """Renders one example (its text fields, and the target when `with_targets` on a generation task)
        into model inputs: the splits are tokenised with it, and so are new inputs at prediction time."""
        template, tokenizer, max_length = self.template, self.tokenizer, self.task.max_length
        answer_ids = [] if self.answer_token_id is None else [self.answer_token_id]
        specials, task_id = self.specials, self.task_id
        target_ids = self._target_ids if self.generation and with_targets else None

        def render(row: Mapping, index: int) -> dict:
            rendered = template.render(row, tokenizer, max_length, answer_ids, specials)
            out = {"input_ids": rendered.input_ids, "slot_ids": rendered.slot_ids,
                   "answer_index": rendered.answer_index, "row_index": index, "truncated": rendered.truncated}
            if target_ids is not None:
                out["target_ids"] = target_ids(str(row[TARGET]))
            if task_id is not None:
                out["task_id"] = task_id
            return out

        return render

    def encode(self, examples: Sequence[Mapping[str, str]]) -> list[dict]:
        """Model inputs for new examples (dicts with the text fields), rendered as the splits are; no labels or
        targets. Batch them with `collator()`, which inserts the demonstrations."""
        render = self.renderer(with_targets=False)
        return [render(example, index) for index, example in enumerate(examples)]

    def collator(self) -> PadCollator:
        """Pads batches; in-context demonstrations go after the leading special tokens ([CLS], BOS) and before the
        query, virtual-token slots included: [specials] demonstrations [query with its slots]."""
        return PadCollator(self.tokenizer.pad_token_id, self.data.padding_side, self.demonstration_ids,
                           target_field=TARGET if self.generation else None, insert_at=len(self.specials[0]))

    def _tokenize(self, dataset: Dataset, role: str) -> Dataset:
        fields = list(self.task.text_fields)
        target_spec = [self.task.target_prefix, self.task.max_target_length] if self.generation else None
        spec = json.dumps([TOKENIZATION_VERSION, dataset._fingerprint, tokenizer_identity(self.tokenizer),
                           self.template.text, fields, self.task.max_length, self.answer_token_id,
                           self.specials, target_spec, self.task_id])
        fingerprint = hashlib.sha256(spec.encode()).hexdigest()[:32]
        with _tokenization_lock(dataset, fingerprint):
            return dataset.map(self.renderer(), with_indices=True, new_fingerprint=fingerprint,
                               desc=f"tokenizing {role}")

    def token_counts(self) -> torch.Tensor:
        """Token frequencies over the training split's text fields (for `init=vocab`)."""
        table = torch.zeros(len(self.tokenizer), dtype=torch.long)
        train = self.splits["train"]
        for field in self.task.text_fields:
            encoded = self.tokenizer(list(train[field]), add_special_tokens=False).input_ids
            flat = torch.as_tensor([t for ids in encoded for t in ids], dtype=torch.long)
            table += torch.bincount(flat, minlength=len(table))
        return table
