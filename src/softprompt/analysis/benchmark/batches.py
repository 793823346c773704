"""The batches every runner of a group takes turns on.

`synthetic`: fixed-length random tokens (seq_len plus the virtual tokens). `real`: the task's training
split as the DataModule serves it (shuffled, padded per batch), with or without `data.group_by_length`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from softprompt.analysis.benchmark.measure import BenchError


def synthetic_batches(job: Any, plain: dict, count: int, batch_size: int, seq_len: int, seed: int) -> list[dict]:
    """Fixed-length random token batches with the answer at the end; input-level methods get their
    virtual-token slots at the front, as the DataModule lays them out."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    vocab = len(job.backbone.tokenizer)
    slots = job.module.num_virtual_tokens if plain["method"].get("slots") == "front" else 0
    num_labels = len(job.module.objective.label_token_ids)
    pad = job.backbone.tokenizer.pad_token_id or 0
    batches = []
    for _ in range(count):
        tokens = torch.randint(min(100, vocab - 1), vocab, (batch_size, seq_len), generator=generator)
        input_ids = torch.cat([torch.full((batch_size, slots), pad), tokens], dim=1)
        slot_ids = torch.cat([torch.arange(slots).expand(batch_size, slots), torch.full((batch_size, seq_len), -1)], 1)
        batches.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "slot_ids": slot_ids,
                        "answer_index": torch.full((batch_size,), slots + seq_len - 1),
                        "labels": torch.randint(0, num_labels, (batch_size,), generator=generator),
                        "row_index": torch.arange(batch_size)})
    return batches


def real_batches(job: Any, count: int, group_by_length: bool = False) -> list[dict]:
    """The first `count` training batches as a run sees them (the seeded shuffle, padding per batch),
    with or without `data.group_by_length`."""
    job.datamodule.data = dataclasses.replace(job.datamodule.data, group_by_length=group_by_length)
    loader = iter(job.datamodule.train_dataloader())
    batches = []
    for _ in range(count):
        try:
            batches.append(next(loader))
        except StopIteration:
            raise BenchError(f"the training split has fewer than {count} batches") from None
    return batches


def to_device(batch: dict, device: Any) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
