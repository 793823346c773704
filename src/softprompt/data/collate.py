"""Dynamic padding: each batch is padded to its own longest example."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def insert_demonstrations(row: dict, demonstration_ids: Sequence[int], at: int) -> dict:
    """The row with `demonstration_ids` inserted at position `at` (after its leading special tokens); its slots
    and answer move along."""
    ids, slots = list(row["input_ids"]), list(row["slot_ids"])
    return {**row, "input_ids": [*ids[:at], *demonstration_ids, *ids[at:]],
            "slot_ids": [*slots[:at], *[-1] * len(demonstration_ids), *slots[at:]],
            "answer_index": len(demonstration_ids) + row["answer_index"]}


class PadCollator:
    """Pads input_ids/slot_ids on the given side and records where each example's answer sits."""

    def __init__(self, pad_token_id: int, padding_side: str, prefix_ids: Sequence[int] = (),
                 target_field: str | None = None, insert_at: int = 0) -> None:
        self.pad_token_id = pad_token_id
        self.padding_side = padding_side
        self.prefix_ids = list(prefix_ids)  # shared by every row (in-context demonstrations)
        self.insert_at = insert_at  # where they go: after the rows' leading special tokens
        self.target_field = target_field  # generation: the raw target text, kept as the metric reference

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        if self.prefix_ids:
            rows = [insert_demonstrations(r, self.prefix_ids, self.insert_at) for r in rows]
        width = max(len(r["input_ids"]) for r in rows)
        size = len(rows)
        input_ids = torch.full((size, width), self.pad_token_id, dtype=torch.long)
        slot_ids = torch.full((size, width), -1, dtype=torch.long)
        attention_mask = torch.zeros((size, width), dtype=torch.long)
        answer_index = torch.empty(size, dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            start = width - n if self.padding_side == "left" else 0
            input_ids[i, start:start + n] = torch.as_tensor(row["input_ids"])
            slot_ids[i, start:start + n] = torch.as_tensor(row["slot_ids"])
            attention_mask[i, start:start + n] = 1
            answer_index[i] = start + row["answer_index"]
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "slot_ids": slot_ids,
            "answer_index": answer_index,
            "row_index": torch.as_tensor([r["row_index"] for r in rows], dtype=torch.long),
        }
        if "task_id" in rows[0]:  # a mixture's examples: which task each row is
            batch["task_ids"] = torch.as_tensor([r["task_id"] for r in rows], dtype=torch.long)
        # New inputs at prediction time carry neither a label nor a target.
        if self.target_field is None and "label" in rows[0]:
            batch["labels"] = torch.as_tensor([r["label"] for r in rows], dtype=torch.long)
        elif self.target_field is not None and "target_ids" in rows[0]:
            batch.update(self._targets(rows))
        return batch

    def _targets(self, rows: Sequence[dict]) -> dict:
        """Target ids, right-padded (the decoder side always grows to the right), and their mask."""
        width = max(len(r["target_ids"]) for r in rows)
        target_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        target_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            target_ids[i, :len(row["target_ids"])] = torch.as_tensor(row["target_ids"])
            target_mask[i, :len(row["target_ids"])] = 1
        targets = {"target_ids": target_ids, "target_mask": target_mask,
                   "target_text": [str(r[self.target_field]) for r in rows]}
        if "references" in rows[0]:  # task.references=grouped: every reference of each row's source
            targets["references"] = [[str(ref) for ref in r["references"]] for r in rows]
        return targets
