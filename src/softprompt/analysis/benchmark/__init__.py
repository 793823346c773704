"""softprompt-bench: training-step time and memory of each method against PEFT, the frozen forward pass
and full fine-tuning, on the same backbone, batches and data.

    softprompt-bench                                   # every method on the offline default, CPU
    softprompt-bench methods=prompt_tuning data=real steps=9 out=logs/bench
    softprompt-bench backbone=tiny_random steps=2 warmup=1 -- task.max_length=64   # smoke
    (also: python scripts/benchmark.py ...)

For each method, one group of runners takes turns on the same batch, round after round (A, B, C, A,
B, C, ...), so machine drift hits every runner alike; the first `warmup` rounds are not counted:
- ours (Trainer): our LightningModule inside a Lightning Trainer built from the run's trainer config
  (precision, gradient clipping), timed from batch start to batch end (forward, backward, optimizer);
- ours (loop): the same module's loss, backward, clipping and AdamW step in a bare loop;
- PEFT: PEFT's equivalent adapter on a copy of the backbone in a plain PyTorch loop, as its docs train
  it: full-vocabulary logits, cross-entropy on the label word at the answer position;
- frozen forward: the backbone alone under `inference_mode`, over our batch's positions (virtual
  tokens included for input-level methods), logits over the whole vocabulary;
- full fine-tuning (first group only): every weight trainable, PEFT's loss, AdamW.

Data: `synthetic` is fixed-length random tokens (`seq_len` plus the virtual tokens); `real` is the
task's training split as the DataModule serves it (shuffled, padded per batch). PEFT gets the very
same batches, minus our placeholder columns for virtual tokens (PEFT adds its own). On real data one
more runner, ours (loop, length-grouped), trains on the same epoch with `data.group_by_length=true`
(other examples per batch, less padding); tokens/s counts real tokens, so it shows the gain.

Memory: the peak a step adds on top of what was resident before it (CPU: resident set size sampled
every 2 ms after returning freed memory to the OS; CUDA: `max_memory_allocated`), so runners that
share one process are measured apart. Writes a markdown table (stdout and bench.md) and bench.json.

Quantisation (`quantization=none,nf4,...`) is one more dimension: every group runs once per
`backbone.quantization`, PEFT and the frozen forward on the same quantised backbone (the frozen forward is the
floor at each quantisation); full fine-tuning runs on the unquantised backbone only. Quantised rows give their step
time and step peak against the same runner unquantised (`vs none`), and a second table the backbone's resident
weights (linear layers, embeddings, the rest) and the process's resident memory once the job is built.

The modules: measure (timing, the memory probe, per-runner medians), batches, runners (ours, the
frozen forward, full fine-tuning), peft_baseline (everything PEFT-specific). The command line is
softprompt.cli.bench.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from softprompt.analysis.benchmark.batches import real_batches, synthetic_batches, to_device
from softprompt.analysis.benchmark.measure import PROG, BenchError, MemoryProbe, Row, summarise
from softprompt.analysis.benchmark.peft_baseline import peft_runners
from softprompt.analysis.benchmark.runners import (
    frozen_forward_runner,
    full_finetuning_runner,
    our_loop_runner,
    trainer_runner,
)

DATA_KINDS = ("synthetic", "real")
# softprompt-bench precision= -> softprompt-train overrides (auto: the run's rule, softprompt.config.precision)
PRECISION_OVERRIDES = {"fp32": ["trainer.precision=32-true", "backbone.dtype=float32"],
                       "bf16": ["trainer.precision=32-true", "backbone.dtype=bfloat16"],
                       "auto": ["trainer.precision=auto", "backbone.dtype=float32"]}


def preset_names() -> list[str]:
    """The method presets in conf/method/ (read without importing torch, for argument checks)."""
    from softprompt.config.compose import config_dir

    return sorted(path.stem for path in (Path(config_dir()) / "method").glob("*.yaml"))


def trainable_presets() -> list[str]:
    """The presets whose method trains something (the benchmark's default): hard prompts have no step to time."""
    from softprompt.methods import preset_classes

    return [name for name, cls in preset_classes().items() if cls.trains]


@dataclass(frozen=True)
class Settings:
    """What to benchmark: softprompt-bench's keys (its defaults live there), and the train overrides after `--`."""

    backbone: str
    methods: Sequence[str]  # empty: every preset that trains
    data: Sequence[str]
    batch_size: int
    seq_len: int
    num_virtual_tokens: int
    steps: int
    warmup: int
    device: str  # cpu | gpu
    precision: str  # fp32 | bf16 | auto: the frozen backbone's dtype for every runner (PEFT's copy included)
    full_ft: bool
    overrides: Sequence[str] = ()
    quantizations: Sequence[str] = ("none",)  # backbone.quantization schemes, each a dimension


@dataclass
class Benchmark:
    """The measured rows, the epoch estimates (real data), and the markdown table with its header."""

    header: str
    device: str
    rows: list[Row] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    table: str = ""
    weights: list[dict] = field(default_factory=list)  # per quantisation: the backbone's resident weights


def build_job_for(method: str, settings: Settings, out: Path, quantization: str = "none") -> tuple[Any, dict]:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from softprompt.config.compose import compose_train
    from softprompt.training.job import build_job
    from softprompt.training.job_config import parse_job

    overrides = [f"backbone={settings.backbone}", f"method={method}",
                 f"method.num_virtual_tokens={settings.num_virtual_tokens}", f"data.batch_size={settings.batch_size}",
                 f"trainer={settings.device}", "trainer.devices=1", "logger=none", "callbacks=none",
                 *PRECISION_OVERRIDES[settings.precision], f"backbone.quantization={quantization}",
                 *settings.overrides]
    cfg = compose_train(overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.hydra.runtime.output_dir = str(out / quantization / method)
    HydraConfig.instance().set_config(cfg)
    job = parse_job(cfg)  # precision=auto: what a run on this machine would use
    return build_job(job), dict(job.plain)


def bench_method(method: str, data: str, settings: Settings, out: Path, with_full_ft: bool,
                 quantization: str = "none") -> tuple[list[Row], dict | None, str, dict]:
    """One method's group on one kind of data: its rows, on real data the epoch estimate of ours (Trainer), the
    frozen backbone's dtype, and its resident weights (`weights_record`)."""
    import torch

    job, plain = build_job_for(method, settings, out, quantization)
    device = torch.device("cuda" if settings.device == "gpu" else "cpu")
    job.module.to(device)
    weights = weights_record(job, quantization, MemoryProbe(device).resident_mib())
    clip = plain["trainer"].get("gradient_clip_val")
    count = settings.warmup + settings.steps
    others = [our_loop_runner(job, plain, clip)]
    if data == "synthetic":
        batches = synthetic_batches(job, plain, count, settings.batch_size, settings.seq_len, int(plain["seed"]))
    else:
        grouped = our_loop_runner(job, plain, clip)
        grouped.name = "ours (loop, length-grouped)"
        grouped.batches = [to_device(b, device) for b in real_batches(job, count, group_by_length=True)]
        others.append(grouped)
        batches = real_batches(job, count)
    batches = [to_device(b, device) for b in batches]
    probe = MemoryProbe(device)
    try:
        others += peft_runners(job, plain, clip, device)
    except BenchError as error:  # a method PEFT does not have: measured against the frozen forward only
        print(f"[{PROG}] {method}: {error}", file=sys.stderr, flush=True)
    others.append(frozen_forward_runner(job))
    if with_full_ft:
        others.append(full_finetuning_runner(job, plain, clip, device))

    def tokens(batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    ours, fit = trainer_runner(job, plain, batches, others, probe, settings.warmup, tokens)
    print(f"[{PROG}] {data} {method}: {count} rounds of {', '.join(r.name for r in [ours, *others])} ...",
          file=sys.stderr, flush=True)
    fit()
    rows = summarise(data, method, [ours, *others])
    for row in rows:
        row.quantization = quantization
    epoch = None
    if data == "real":
        steps = math.ceil(len(job.datamodule.splits["train"]) / settings.batch_size)
        for row in rows:
            if row.runner == "ours (Trainer)":
                epoch = {"data": data, "method": method, "steps_per_epoch": steps,
                         "epoch_minutes_estimate": round(steps * row.median_s / 60, 1)}
    return rows, epoch, str(job.backbone.model.dtype).removeprefix("torch."), weights


def weights_record(job: Any, quantization: str, resident_mib: float) -> dict:
    """The backbone's resident weights at `quantization` (MiB by part: softprompt.backbones.quantization), and the
    process's resident memory with the job built."""
    from softprompt.backbones.quantization import weight_memory

    parts = {part: round(size / 2**20, 4) for part, size in weight_memory(job.backbone.model).items()}
    return {"quantization": quantization, **{f"{part}_mib": size for part, size in parts.items()},
            "weights_mib": round(sum(parts.values()), 4), "resident_mib": round(resident_mib, 1)}


def compare_to_full_precision(rows: Sequence[Row]) -> None:
    """Each quantised row's step time and step peak against the same runner's on the unquantised backbone."""
    full = {(r.data, r.method, r.runner): r for r in rows if r.quantization == "none"}
    for row in rows:
        reference = full.get((row.data, row.method, row.runner))
        if row.quantization == "none" or reference is None:
            continue
        row.vs_full_precision = round(row.median_s / reference.median_s, 3)
        if reference.peak_step_mib > 0:
            row.peak_vs_full_precision = round(row.peak_step_mib / reference.peak_step_mib, 3)


def markdown(rows: Sequence[Row], epochs: Sequence[dict], header: str, weights: Sequence[dict] = ()) -> str:
    lines = [header, "",
             "| data | method | runner | step s (median, min–max) | steps/s | tokens/s | step peak MiB | "
             "vs PEFT | vs PEFT, same kernels | vs frozen fwd | quantization | time, peak vs none |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.vs_peft:.2f}" if r.vs_peft is not None else ""
        same = f"{r.vs_peft_same_kernels:.2f}" if r.vs_peft_same_kernels is not None else ""
        frozen = f"{r.vs_frozen_forward:.2f}x" if r.vs_frozen_forward is not None else ""
        versus = (f"{r.vs_full_precision:.2f}x, " + (f"{r.peak_vs_full_precision:.2f}x"
                                                     if r.peak_vs_full_precision is not None else "–")
                  if r.vs_full_precision is not None else "")
        lines.append(f"| {r.data} | {r.method} | {r.runner} | {r.median_s:.3f} ({r.min_s:.3f}–{r.max_s:.3f}) | "
                     f"{r.steps_per_s:.2f} | {r.tokens_per_s:.0f} | {r.peak_step_mib:.0f} | {ratio} | {same} | "
                     f"{frozen} | {r.quantization} | {versus} |")
    if len(weights) > 1 or any(w["quantization"] != "none" for w in weights):
        full = next((w for w in weights if w["quantization"] == "none"), None)
        lines += ["", "| quantization | backbone weights MiB | linear layers MiB | embeddings MiB (unquantised) | "
                  "other MiB | weights vs none | process resident MiB |", "|---|---|---|---|---|---|---|"]
        for w in weights:
            versus = f"{w['weights_mib'] / full['weights_mib']:.2f}x" if full else ""
            lines.append(f"| {w['quantization']} | {w['weights_mib']:.1f} | {w['linear_mib']:.1f} | "
                         f"{w['embeddings_mib']:.1f} | {w['other_mib']:.1f} | {versus} | {w['resident_mib']:.0f} |")
    if epochs:
        lines += ["", "| method | steps per epoch | one epoch, est. (min) |", "|---|---|---|"]
        lines += [f"| {e['method']} | {e['steps_per_epoch']} | {e['epoch_minutes_estimate']} |" for e in epochs]
    return "\n".join(lines) + "\n"


def run_benchmark(settings: Settings) -> Benchmark:
    """Every method's group on every kind of data (full fine-tuning in the first group, when asked for); raises
    BenchError (or another SoftPromptError) when it cannot run as asked."""
    import torch

    if settings.device == "gpu" and not torch.cuda.is_available():
        raise BenchError(f"device=gpu, but CUDA is not available (torch {torch.__version__})")
    work = Path(tempfile.mkdtemp(prefix="softprompt_bench_"))
    rows: list[Row] = []
    epochs: list[dict] = []
    weights: dict[str, dict] = {}
    precision_note = "no job ran"
    trainable = trainable_presets()
    methods = list(settings.methods) or trainable
    for method in methods:
        if method not in trainable:
            raise BenchError(f"methods: {method} trains nothing, so it has no training step to time; presets that "
                             f"train: {', '.join(trainable)}")
    for quantization in settings.quantizations:
        for data in settings.data:
            for index, method in enumerate(methods):
                # Full fine-tuning trains every weight: the unquantised backbone's only.
                group, epoch, dtype, weights[quantization] = bench_method(
                    method, data, settings, work, index == 0 and settings.full_ft and quantization == "none",
                    quantization)
                precision_note = f"frozen backbone in {dtype}"
                rows += group
                epochs += [epoch] if epoch else []
    compare_to_full_precision(rows)
    device = torch.cuda.get_device_name() if settings.device == "gpu" else f"CPU, {torch.get_num_threads()} threads"
    header = (f"softprompt-bench on {settings.backbone} ({device}; torch {torch.__version__}), precision "
              f"{settings.precision} ({precision_note}), batch "
              f"{settings.batch_size}, {settings.num_virtual_tokens} virtual tokens, synthetic length "
              f"{settings.seq_len}; median of {settings.steps} interleaved rounds after {settings.warmup} warm-up")
    return Benchmark(header, device, rows, epochs, markdown(rows, epochs, header, list(weights.values())),
                     list(weights.values()))


def write_benchmark(bench: Benchmark, settings: Settings, out: Path) -> tuple[Path, Path]:
    """out/bench.json (header, device, settings, rows, epochs) and out/bench.md (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    args = {key: ",".join(value) if key in ("methods", "data", "quantizations") else str(value)
            for key, value in asdict(settings).items()} | {"out": str(out)}
    report = {"header": bench.header, "device": bench.device, "args": args, "rows": [asdict(r) for r in bench.rows],
              "epochs": bench.epochs, "weights": bench.weights}
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(bench.table)
    return out / "bench.json", out / "bench.md"
