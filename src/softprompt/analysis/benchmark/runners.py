"""The runners besides PEFT's: ours inside a Lightning Trainer and in a bare loop, the frozen forward
pass, and full fine-tuning; plus the plain-PyTorch training step that PEFT and full fine-tuning share.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from softprompt.analysis.benchmark.measure import BenchError, MemoryProbe, Runner, timed


def _optimizer_step(loss: Any, parameters: list, optimizer: Any, clip: float | None) -> None:
    import torch

    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(parameters, clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def label_word_ids(module: Any) -> Any:
    """The first token of each label's first verbalizer word: what a PEFT user's LM loss targets."""
    import torch

    return torch.tensor([words[0][0] for words in module.objective.label_token_ids])


def without_virtual_slots(batch: dict, num_slots: int) -> dict:
    """Our batch as PEFT takes it: PEFT prepends its own virtual tokens, so our placeholder columns go."""
    if num_slots and not bool((batch["slot_ids"][:, :num_slots] >= 0).all()):
        raise BenchError("the PEFT comparison needs the virtual tokens at the front (method.slots=front)")
    return {"input_ids": batch["input_ids"][:, num_slots:], "attention_mask": batch["attention_mask"][:, num_slots:],
            "answer_index": batch["answer_index"] - num_slots, "labels": batch["labels"],
            **({"task_ids": batch["task_ids"]} if "task_ids" in batch else {})}


def lm_loss_step(model: Any, parameters: list, optimizer: Any, clip: float | None, words: Any,
                 num_slots: int, logits_before_input: int, task_ids: bool = False) -> Callable[[dict], None]:
    """A plain-PyTorch training step as HF/PEFT users write it: whole-vocabulary logits at every position,
    cross-entropy on the label word at the answer position. `logits_before_input`: positions the model
    puts in front of the input (PEFT's virtual tokens for prompt and P-tuning). `task_ids`: the model's forward
    takes each row's task (the batch's, or task 0)."""
    import torch
    import torch.nn.functional as F

    def step(batch: dict) -> None:
        inputs = without_virtual_slots(batch, num_slots)
        extra = {}
        if task_ids:  # a single task's batch carries none: task 0
            first = torch.zeros(len(inputs["input_ids"]), dtype=torch.long, device=inputs["input_ids"].device)
            extra["task_ids"] = inputs.get("task_ids", first)
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **extra).logits
        rows = torch.arange(len(logits), device=logits.device)
        answer = logits[rows, inputs["answer_index"] + logits_before_input].float()
        loss = F.cross_entropy(answer, words.to(logits.device)[inputs["labels"]])
        _optimizer_step(loss, parameters, optimizer, clip)

    return step


def full_finetuning_runner(job: Any, plain: dict, clip: float | None, device: Any) -> Runner:
    import torch

    model = copy.deepcopy(job.backbone.model).to(device).requires_grad_(True)
    model.train()
    model.config.use_cache = False
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-5)
    slots = job.module.num_virtual_tokens if plain["method"].get("slots") == "front" else 0
    return Runner("full fine-tuning", lm_loss_step(model, parameters, optimizer, clip, label_word_ids(job.module),
                                                   slots, 0))


def frozen_forward_runner(job: Any) -> Runner:
    import torch

    model = job.backbone.model

    def step(batch: dict) -> None:
        with torch.inference_mode():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    return Runner("frozen forward", step)


def our_loop_runner(job: Any, plain: dict, clip: float | None) -> Runner:
    import torch

    module = job.module
    parameters = module.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=float(plain["optimizer"]["lr"]))

    def step(batch: dict) -> None:
        module.train()
        _optimizer_step(module.objective.loss(module, batch), parameters, optimizer, clip)

    return Runner("ours (loop)", step)


def trainer_runner(job: Any, plain: dict, batches: list[dict], others: list[Runner], probe: MemoryProbe,
                   warmup: int, tokens: Callable[[dict], int]) -> tuple[Runner, Callable[[], None]]:
    """Ours inside a Lightning Trainer; the Trainer drives the rounds and lets the other runners take
    their turn on the same batch at the start of each of its steps."""
    import lightning as L
    from hydra.utils import instantiate

    runner = Runner("ours (Trainer)", lambda batch: None)
    state: dict[str, Any] = {}

    class Rounds(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                 batch_idx: int) -> None:
            for other in others:
                own = (other.batches or batches)[batch_idx]
                timed(other, own, probe, tokens(own), batch_idx >= warmup)
            state["memory"] = probe.measure()
            state["peak"] = state["memory"].__enter__()
            if probe.cuda:
                import torch

                torch.cuda.synchronize()
            state["started"] = time.perf_counter()

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            if probe.cuda:
                import torch

                torch.cuda.synchronize()
            seconds = time.perf_counter() - state["started"]
            state["memory"].__exit__(None, None, None)
            if batch_idx >= warmup:
                runner.seconds.append(seconds)
                runner.peak_mib.append(state["peak"][0])
                runner.tokens.append(tokens(batch))

    trainer = instantiate(plain["trainer"], max_steps=len(batches), max_epochs=-1, logger=False, callbacks=[Rounds()],
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          limit_val_batches=0, num_sanity_val_steps=0, val_check_interval=None)

    def run() -> None:
        from torch.utils.data import DataLoader

        # batch_size=None: the loader hands over our ready batches one by one, in order.
        trainer.fit(job.module, train_dataloaders=DataLoader(batches, batch_size=None, collate_fn=_same))

    return runner, run


def _same(batch: dict) -> dict:
    return batch
