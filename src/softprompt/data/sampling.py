"""Samplers that shard across processes and resume mid-epoch exactly.

Training visits a seeded permutation per epoch (seed + epoch). Process r of W takes every W-th index
of it, so W processes at batch B see, step by step, the same examples as one process at batch W*B:
a multi-process run reproduces a one-process run with the same global batch. With length grouping
(`data.group_by_length`), each window of the permutation is sorted by length and cut into global
batches, whose order is then shuffled: batches pad to similar lengths, and every example is still
visited once per epoch. Evaluation visits
examples longest first (each batch pads to similar lengths); each process takes its share without
padding, and torchmetrics sums the shares exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.utils.data import DataLoader, Sampler


class ShuffledShardSampler(Sampler[int]):
    """This process's share of a seeded per-epoch permutation; can start part-way into an epoch."""

    def __init__(self, size: int, seed: int, num_replicas: int = 1, rank: int = 0,
                 lengths: Sequence[int] | None = None, batch_size: int = 1, group_batches: int = 50) -> None:
        self.size, self.seed, self.num_replicas, self.rank = size, seed, num_replicas, rank
        self.lengths = lengths  # given: group by length, `group_batches` global batches per window
        self.global_batch = batch_size * num_replicas
        self.group_batches = group_batches
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, indices to skip) after a restore

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        """The next pass over `epoch` starts after its first `skip` indices (already trained on)."""
        self._resume = (epoch, skip)

    def epoch_indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is not None:
            order = self._grouped(order, generator)
        usable = self.size - self.size % self.num_replicas  # equal shares: every process steps together
        return order[:usable][self.rank::self.num_replicas]

    def _grouped(self, order: list[int], generator: torch.Generator) -> list[int]:
        """Windows of the permutation sorted longest first, cut into global batches, batches shuffled."""
        window = self.global_batch * self.group_batches
        lengths = self.lengths
        ranked = [i for start in range(0, len(order), window)
                  for i in sorted(order[start:start + window], key=lambda i: -lengths[i])]
        batches = [ranked[start:start + self.global_batch] for start in range(0, len(ranked), self.global_batch)]
        # The short last batch keeps its place at the end, as in the ungrouped order.
        full = len(ranked) // self.global_batch
        shuffled = [batches[i] for i in torch.randperm(full, generator=generator).tolist()] + batches[full:]
        return [i for batch in shuffled for i in batch]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1]:]
        self._resume = None
        return iter(indices)

    def __len__(self) -> int:
        return self.size // self.num_replicas


def longest_first_shard(lengths: Sequence[int], num_replicas: int = 1, rank: int = 0) -> list[int]:
    """Evaluation order: longest first, ties by index; process r takes every W-th (shares differ by <= 1)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return order[rank::num_replicas]


class ResumableLoader(DataLoader):
    """A training DataLoader whose position Lightning saves in checkpoints and restores before iterating
    (its `state_dict` / `load_state_dict` protocol), so a resumed run continues with the next batch."""

    sampler: ShuffledShardSampler

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_served = 0  # batches of the current epoch handed to the training loop
        self._resumed_batches = 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first batch, after Lightning set the epoch and restored state.
        self.batches_served, self._resumed_batches = self._resumed_batches, 0
        for batch in super().__iter__():
            self.batches_served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.batches_served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resumed_batches = int(state["batches"])
        self.sampler.resume(int(state["epoch"]), self._resumed_batches * int(self.batch_size))


def evaluates_whole_splits(trainer: Any) -> bool:
    """Under FSDP every forward pass gathers shards from every rank, so ranks must run the same number of
    forwards (uneven evaluation shares or decoding loops that stop early would deadlock): every rank
    evaluates the whole split instead. Synced metric states then hold each example once per rank, which
    leaves every ratio (accuracy, F1, mean loss, ROUGE, BLEU) as it is."""
    return trainer is not None and isinstance(trainer.strategy, FSDPStrategy) and trainer.world_size > 1
