"""softprompt-bench: training-step time and memory of each method against PEFT, the frozen forward pass
and full fine-tuning, on the same backbone, batches and data.

    softprompt-bench                                   # every method on the offline default, CPU
    softprompt-bench --methods prompt_tuning --data real --steps 9 --out logs/bench
    softprompt-bench --backbone tiny_random --steps 2 --warmup 1 -- task.max_length=64   # smoke
    (also: python scripts/benchmark.py ...)

For each method, one group of runners takes turns on the same batch, round after round (A, B, C, A,
B, C, ...), so machine drift hits every runner alike; the first `--warmup` rounds are not counted:
- ours (Trainer): our LightningModule inside a Lightning Trainer built from the run's trainer config
  (precision, gradient clipping), timed from batch start to batch end (forward, backward, optimizer);
- ours (loop): the same module's loss, backward, clipping and AdamW step in a bare loop;
- PEFT: PEFT's equivalent adapter on a copy of the backbone in a plain PyTorch loop, as its docs train
  it: full-vocabulary logits, cross-entropy on the label word at the answer position;
- frozen forward: the backbone alone under `inference_mode`, over our batch's positions (virtual
  tokens included for input-level methods), logits over the whole vocabulary;
- full fine-tuning (first group only): every weight trainable, PEFT's loss, AdamW.

Data: `synthetic` is fixed-length random tokens (`--seq-len` plus the virtual tokens); `real` is the
task's training split as the DataModule serves it (shuffled, padded per batch). PEFT gets the very
same batches, minus our placeholder columns for virtual tokens (PEFT adds its own). On real data one
more runner, ours (loop, length-grouped), trains on the same epoch with `data.group_by_length=true`
(other examples per batch, less padding); tokens/s counts real tokens, so it shows the gain.

Memory: the peak a step adds on top of what was resident before it (CPU: resident set size sampled
every 2 ms after returning freed memory to the OS; CUDA: `max_memory_allocated`), so runners that
share one process are measured apart. Writes a markdown table (stdout and bench.md) and bench.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2")
DATA_KINDS = ("synthetic", "real")
PROG = "softprompt-bench"


@dataclass
class Runner:
    """One way of doing a training step (or a forward pass) on a batch."""

    name: str
    step: Callable[[dict], None]
    batches: list[dict] | None = None  # its own batches (else the group's)
    seconds: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


@dataclass
class Row:
    data: str
    method: str
    runner: str
    median_s: float
    min_s: float
    max_s: float
    steps_per_s: float
    tokens_per_s: float
    peak_step_mib: float
    vs_peft: float | None = None
    vs_frozen_forward: float | None = None
    seconds: list[float] = field(default_factory=list)


# -- measuring -------------------------------------------------------------------------------------
class MemoryProbe:
    """Peak memory a step adds above what was resident before it."""

    def __init__(self, device: Any) -> None:
        import torch

        self.torch = torch
        self.cuda = device.type == "cuda"
        self._libc = None
        if not self.cuda:
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")

    def _rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[float]]:
        result: list[float] = []
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
            base = self.torch.cuda.memory_allocated()
            yield result
            self.torch.cuda.synchronize()
            result.append((self.torch.cuda.max_memory_allocated() - base) / 2**20)
            return
        if self._libc is not None:
            self._libc.malloc_trim(0)  # freed activations of the last step go back to the OS
        base = peak = self._rss()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.002):
                peak = max(peak, self._rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield result
        finally:
            done.set()
            sampler.join()
            result.append((max(peak, self._rss()) - base) / 2**20)


def timed(runner: Runner, batch: dict, probe: MemoryProbe, tokens: int, counted: bool) -> None:
    import torch

    cuda = probe.cuda
    with probe.measure() as peak:
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        runner.step(batch)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    if counted:
        runner.seconds.append(seconds)
        runner.peak_mib.append(peak[0])
        runner.tokens.append(tokens)


# -- the runners -----------------------------------------------------------------------------------
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
        raise SystemExit(f"{PROG}: error: the PEFT comparison needs the virtual tokens at the front "
                         "(method.slots=front)")
    return {"input_ids": batch["input_ids"][:, num_slots:], "attention_mask": batch["attention_mask"][:, num_slots:],
            "answer_index": batch["answer_index"] - num_slots, "labels": batch["labels"]}


def lm_loss_step(model: Any, parameters: list, optimizer: Any, clip: float | None, words: Any,
                 num_slots: int, logits_before_input: int) -> Callable[[dict], None]:
    """A plain-PyTorch training step as HF/PEFT users write it: whole-vocabulary logits at every position,
    cross-entropy on the label word at the answer position. `logits_before_input`: positions the model
    puts in front of the input (PEFT's virtual tokens for prompt and P-tuning)."""
    import torch
    import torch.nn.functional as F

    def step(batch: dict) -> None:
        inputs = without_virtual_slots(batch, num_slots)
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        rows = torch.arange(len(logits), device=logits.device)
        answer = logits[rows, inputs["answer_index"] + logits_before_input].float()
        loss = F.cross_entropy(answer, words.to(logits.device)[inputs["labels"]])
        _optimizer_step(loss, parameters, optimizer, clip)

    return step


def peft_config(method: dict, num_virtual_tokens: int) -> Any:
    """PEFT's adapter for our method with the same shape (encoder type and widths)."""
    from peft import (
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptEncoderReparameterizationType,
        PromptTuningConfig,
        TaskType,
    )

    task = TaskType.CAUSAL_LM
    if method["name"] == "prompt_tuning":
        return PromptTuningConfig(task_type=task, num_virtual_tokens=num_virtual_tokens)
    if method["name"] == "p_tuning":
        kind = {"mlp": PromptEncoderReparameterizationType.MLP, "lstm": PromptEncoderReparameterizationType.LSTM}
        if method["encoder"] not in kind:
            raise SystemExit(f"{PROG}: error: method.encoder={method['encoder']} has no PEFT counterpart; "
                             "use mlp or lstm")
        extra = {"encoder_hidden_size": method["encoder_hidden"]} if method.get("encoder_hidden") else {}
        return PromptEncoderConfig(task_type=task, num_virtual_tokens=num_virtual_tokens,
                                   encoder_reparameterization_type=kind[method["encoder"]], **extra)
    projection = method.get("reparam") == "mlp"
    extra = {"encoder_hidden_size": int(method["reparam_hidden"])} if projection else {}
    return PrefixTuningConfig(task_type=task, num_virtual_tokens=num_virtual_tokens, prefix_projection=projection,
                              **extra)


def peft_runner(job: Any, plain: dict, clip: float | None, device: Any) -> Runner:
    import torch
    from peft import get_peft_model

    config = peft_config(plain["method"], job.module.num_virtual_tokens)
    model = get_peft_model(copy.deepcopy(job.backbone.model), config)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=float(plain["optimizer"]["lr"]))
    slots = job.module.num_virtual_tokens if plain["method"].get("slots") == "front" else 0
    ahead = job.module.num_virtual_tokens if config.peft_type.value in ("PROMPT_TUNING", "P_TUNING") else 0
    return Runner("PEFT", lm_loss_step(model, parameters, optimizer, clip, label_word_ids(job.module), slots, ahead))


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


# -- batches ---------------------------------------------------------------------------------------
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
    job.datamodule.data_cfg["group_by_length"] = group_by_length
    loader = iter(job.datamodule.train_dataloader())
    batches = []
    for _ in range(count):
        try:
            batches.append(next(loader))
        except StopIteration:
            raise SystemExit(f"{PROG}: error: the training split has fewer than {count} batches") from None
    return batches


def to_device(batch: dict, device: Any) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


# -- one method's group ----------------------------------------------------------------------------
def build_job_for(method: str, args: argparse.Namespace, out: Path) -> tuple[Any, dict]:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from softprompt.config_checks import check_config
    from softprompt.config_dir import compose_train
    from softprompt.train import build_job, resolved_config

    overrides = [f"backbone={args.backbone}", f"method={method}",
                 f"method.num_virtual_tokens={args.num_virtual_tokens}", f"data.batch_size={args.batch_size}",
                 f"trainer={args.device}", "trainer.devices=1", "logger=none", "callbacks=none", *args.overrides]
    cfg = compose_train(overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out / method)
    HydraConfig.instance().set_config(cfg)
    plain = resolved_config(cfg)
    check_config(plain)
    return build_job(plain, Path(plain["paths"]["cache_dir"]).expanduser()), plain


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


def summarise(data: str, method: str, runners: Sequence[Runner]) -> list[Row]:
    rows = []
    for runner in runners:
        if not runner.seconds:
            continue
        median = statistics.median(runner.seconds)
        tokens = statistics.median(t / s for t, s in zip(runner.tokens, runner.seconds, strict=True))
        rows.append(Row(data, method, runner.name, round(median, 4), round(min(runner.seconds), 4),
                        round(max(runner.seconds), 4), round(1 / median, 3), round(tokens, 1),
                        round(statistics.median(runner.peak_mib), 1), seconds=[round(s, 4) for s in runner.seconds]))
    by_name = {row.runner: row for row in rows}
    for row in rows:
        if "PEFT" in by_name and row.runner.startswith("ours"):
            row.vs_peft = round(row.median_s / by_name["PEFT"].median_s, 3)
        if "frozen forward" in by_name and row.runner != "frozen forward":
            row.vs_frozen_forward = round(row.median_s / by_name["frozen forward"].median_s, 3)
    return rows


def bench_method(method: str, data: str, args: argparse.Namespace, out: Path, with_full_ft: bool) -> list[Row]:
    import torch

    job, plain = build_job_for(method, args, out)
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    job.module.to(device)
    clip = plain["trainer"].get("gradient_clip_val")
    count = args.warmup + args.steps
    others = [our_loop_runner(job, plain, clip)]
    if data == "synthetic":
        batches = synthetic_batches(job, plain, count, args.batch_size, args.seq_len, int(plain["seed"]))
    else:
        grouped = our_loop_runner(job, plain, clip)
        grouped.name = "ours (loop, length-grouped)"
        grouped.batches = [to_device(b, device) for b in real_batches(job, count, group_by_length=True)]
        others.append(grouped)
        batches = real_batches(job, count)
    batches = [to_device(b, device) for b in batches]
    probe = MemoryProbe(device)
    others += [peft_runner(job, plain, clip, device), frozen_forward_runner(job)]
    if with_full_ft:
        others.append(full_finetuning_runner(job, plain, clip, device))

    def tokens(batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    ours, fit = trainer_runner(job, plain, batches, others, probe, args.warmup, tokens)
    print(f"[{PROG}] {data} {method}: {count} rounds of {', '.join(r.name for r in [ours, *others])} ...",
          file=sys.stderr, flush=True)
    fit()
    rows = summarise(data, method, [ours, *others])
    if data == "real":
        steps = math.ceil(len(job.datamodule.splits["train"]) / args.batch_size)
        for row in rows:
            if row.runner == "ours (Trainer)":
                row_epoch = {"data": data, "method": method, "steps_per_epoch": steps,
                             "epoch_minutes_estimate": round(steps * row.median_s / 60, 1)}
                args.epochs.append(row_epoch)
    return rows


# -- report ----------------------------------------------------------------------------------------
def markdown(rows: Sequence[Row], epochs: Sequence[dict], header: str) -> str:
    lines = [header, "",
             "| data | method | runner | step s (median, min–max) | steps/s | tokens/s | step peak MiB | "
             "vs PEFT | vs frozen fwd |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.vs_peft:.2f}" if r.vs_peft is not None else ""
        frozen = f"{r.vs_frozen_forward:.2f}x" if r.vs_frozen_forward is not None else ""
        lines.append(f"| {r.data} | {r.method} | {r.runner} | {r.median_s:.3f} ({r.min_s:.3f}–{r.max_s:.3f}) | "
                     f"{r.steps_per_s:.2f} | {r.tokens_per_s:.0f} | {r.peak_step_mib:.0f} | {ratio} | {frozen} |")
    if epochs:
        lines += ["", "| method | steps per epoch | one epoch, est. (min) |", "|---|---|---|"]
        lines += [f"| {e['method']} | {e['steps_per_epoch']} | {e['epoch_minutes_estimate']} |" for e in epochs]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     epilog="Arguments after `--` are softprompt-train overrides for every job.")
    parser.add_argument("--backbone", default="smollm2_135m", help="backbone preset (default: the offline default)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--data", default=",".join(DATA_KINDS), help="synthetic, real or both")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64, help="synthetic tokens per example, before the prompt")
    parser.add_argument("--num-virtual-tokens", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5, help="counted rounds")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--no-full-ft", action="store_true", help="skip full fine-tuning")
    parser.add_argument("--out", type=Path, help="write DIR/bench.json and DIR/bench.md")
    parser.add_argument("overrides", nargs="*", help="softprompt-train overrides (after --)")
    args = parser.parse_args(argv)
    for name, values, allowed in (("--methods", args.methods, METHODS), ("--data", args.data, DATA_KINDS)):
        unknown = [v for v in values.split(",") if v not in allowed]
        if unknown:
            parser.error(f"{name}: unknown {unknown}; allowed: {', '.join(allowed)}")
    for name in ("batch_size", "seq_len", "num_virtual_tokens", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0, got {args.warmup}")
    args.epochs = []
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    from softprompt.errors import SoftPromptError

    if args.device == "gpu" and not torch.cuda.is_available():
        print(f"{PROG}: error: --device gpu, but CUDA is not available (torch {torch.__version__})", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="softprompt_bench_"))
    rows: list[Row] = []
    try:
        for data in args.data.split(","):
            for index, method in enumerate(args.methods.split(",")):
                rows += bench_method(method, data, args, work, with_full_ft=index == 0 and not args.no_full_ft)
    except SoftPromptError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    device = torch.cuda.get_device_name() if args.device == "gpu" else f"CPU, {torch.get_num_threads()} threads"
    header = (f"softprompt-bench on {args.backbone} ({device}; torch {torch.__version__}), batch {args.batch_size}, "
              f"{args.num_virtual_tokens} virtual tokens, synthetic length {args.seq_len}; median of {args.steps} "
              f"interleaved rounds after {args.warmup} warm-up")
    table = markdown(rows, args.epochs, header)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        report = {"header": header, "device": device, "args": {k: str(v) for k, v in vars(args).items()
                                                             if k != "epochs"},
                  "rows": [asdict(r) for r in rows], "epochs": args.epochs}
        (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "bench.md").write_text(table)
        print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
