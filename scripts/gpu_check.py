"""GPU check: the precision, memory, DDP and quantised-backbone paths of softprompt-train on one CUDA GPU.

    python scripts/gpu_check.py                        # every check on the offline default (smollm2_135m)
    python scripts/gpu_check.py --out logs/gpu_check   # also writes logs/gpu_check/gpu_check.json
    python scripts/gpu_check.py --checks ddp,bf16_mixed --backbone tiny_random -- data.batch_size=8

Each check is one real `python -m softprompt.cli.train` process (a few steps, small eval subsets, no
logger). A small Lightning callback added with `+callbacks.gpu_check=...` records, in that process,
the train-step time (CUDA-synchronised), peak CUDA memory (`torch.cuda.max_memory_allocated`) and
the dtypes of the frozen backbone and of the trainable tensors. A check passes when the process exits
0, metrics.json has finite losses, and the dtypes are the ones `softprompt.config.precision` promises.

Prints one line per check (name, ok/FAILED, process wall seconds, train steps/s from the median step
after the first, peak CUDA MiB, val and test metrics). Exit status: 0 when every check passed, 1 when
one failed, 2 when no CUDA GPU is there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATS_FILE = "gpu_check_stats.json"
COMMON = ["trainer.max_steps=10", "trainer.val_check_interval=10", "data.max_samples.validation=64",
          "data.max_samples.test=64", "logger=none"]
# name -> (overrides, expected frozen-backbone dtype(s)); the trainable tensors must be float32 in every check.
QUANTIZED = ["trainer=gpu", "trainer.precision=32-true"]
CHECKS: dict[str, tuple[list[str], str | list[str]]] = {
    "fp32_baseline": (["trainer=gpu", "trainer.precision=32-true"], "float32"),
    "auto_precision": (["trainer=gpu"], "bfloat16"),  # the default: bf16 on a GPU that has it
    "ddp": (["trainer=ddp", "trainer.devices=1", "trainer.precision=32-true"], "float32"),
    "bf16_mixed": (["trainer=gpu", "trainer.precision=bf16-mixed"], "bfloat16"),
    "fp16_mixed": (["trainer=gpu", "trainer.precision=16-mixed"], "float16"),
    "checkpointing_prompt_tuning": (["trainer=gpu", "trainer.precision=32-true",
                                     "backbone.gradient_checkpointing=true", "method=prompt_tuning"], "float32"),
    "checkpointing_prefix_tuning": (["trainer=gpu", "trainer.precision=32-true",
                                     "backbone.gradient_checkpointing=true", "method=prefix_tuning"], "float32"),
    "backbone_bf16": (["trainer=gpu", "trainer.precision=32-true", "backbone.dtype=bfloat16"], "bfloat16"),
    # FSDP keeps the fp32 backbone at load (it shards it; one dtype per unit) and computes in bf16.
    "fsdp_bf16_mixed": (["trainer=fsdp", "trainer.devices=1", "trainer.precision=bf16-mixed"], "float32"),
    # Quantised backbones (docs/scaling.md): bitsandbytes' packed 4-bit (uint8) and int8 weights beside the float32
    # embeddings and norms; torchao's int8 weights report their float32 dtype.
    "nf4_prompt_tuning": ([*QUANTIZED, "backbone.quantization=nf4", "method=prompt_tuning"], ["float32", "uint8"]),
    "nf4_prefix_tuning": ([*QUANTIZED, "backbone.quantization=nf4", "method=prefix_tuning"], ["float32", "uint8"]),
    "int8_prompt_tuning": ([*QUANTIZED, "backbone.quantization=int8", "method=prompt_tuning"], ["float32", "int8"]),
    "int8_prefix_tuning": ([*QUANTIZED, "backbone.quantization=int8", "method=prefix_tuning"], ["float32", "int8"]),
    "int8_weight_only_prompt_tuning": ([*QUANTIZED, "backbone.quantization=int8_weight_only",
                                        "method=prompt_tuning"], "float32"),
}


def stats_callback(path: str) -> Any:
    """The Lightning callback the check adds to softprompt-train (Hydra instantiates it by this name).

    It writes `path` (rank 0) at the end of fit and of test: each train step's synchronised seconds,
    peak CUDA memory so far, and the dtypes of the frozen backbone and of the trainable tensors.
    """
    import lightning as L
    import torch

    cuda = torch.cuda.is_available()  # False only when the mechanics are tried on a CPU

    class RunStats(L.Callback):
        def __init__(self) -> None:
            self.step_seconds: list[float] = []
            self.started = 0.0

        def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                 batch_idx: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                               batch_idx: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.step_seconds.append(time.perf_counter() - self.started)

        def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
            if not trainer.is_global_zero:
                return
            trainable = [p for p in pl_module.parameters() if p.requires_grad]
            stats = {"step_seconds": [round(s, 5) for s in self.step_seconds],
                     "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                     "peak_cuda_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
                     "device": torch.cuda.get_device_name() if cuda else "cpu",
                     "backbone_dtypes": sorted({str(p.dtype).removeprefix("torch.")
                                                for p in pl_module.backbone.parameters()}),
                     "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in trainable})}
            Path(path).write_text(json.dumps(stats, indent=2) + "\n")

    return RunStats()


@dataclass
class CheckResult:
    name: str
    ok: bool
    wall_seconds: float
    overrides: list[str]
    run_dir: str
    steps_per_second: float | None = None
    peak_cuda_mib: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)


def _finite(metrics: dict[str, Any]) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in metrics.values())


def run_check(name: str, overrides: list[str], expected_backbone: str | list[str], run_dir: Path,
              timeout: int) -> CheckResult:
    stats_path = run_dir / STATS_FILE
    command = [sys.executable, "-m", "softprompt.cli.train", *overrides, f"hydra.run.dir={run_dir}",
               f"+callbacks.gpu_check={{_target_: gpu_check.stats_callback, path: '{stats_path}'}}"]
    env = dict(os.environ)
    env["HYDRA_FULL_ERROR"] = "1"  # a failed check keeps its whole traceback (CheckResult.stderr_tail)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    try:
        process = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        returncode, stderr = process.returncode, process.stderr
    except subprocess.TimeoutExpired:
        returncode, stderr = None, f"timed out after {timeout} s"
    result = CheckResult(name, False, round(time.perf_counter() - started, 1), overrides, str(run_dir))
    if returncode != 0:
        lines = [line for line in stderr.splitlines() if line.strip()]
        result.problems.append(f"exit status {returncode}: {lines[-1] if lines else 'no output'}")
        result.stderr_tail = lines[-40:]
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        result.val, result.test = metrics.get("val", {}), metrics.get("test", {})
        if not (_finite(result.val) and _finite(result.test)):
            result.problems.append("non-finite val/test metrics")
    elif returncode == 0:
        result.problems.append("no metrics.json")
    if stats_path.is_file():
        result.stats = json.loads(stats_path.read_text())
        warm = result.stats["step_seconds"][1:]  # the first step pays for CUDA and kernel warm-up
        if warm:
            result.steps_per_second = round(1 / statistics.median(warm), 2)
        if result.stats["peak_cuda_bytes"] is not None:
            result.peak_cuda_mib = round(result.stats["peak_cuda_bytes"] / 2**20, 1)
        expected = expected_backbone if isinstance(expected_backbone, list) else [expected_backbone]
        if result.stats["backbone_dtypes"] != expected:
            result.problems.append(f"backbone dtypes {result.stats['backbone_dtypes']}, expected {expected_backbone}")
        if result.stats["trainable_dtypes"] not in ([], ["float32"]):
            result.problems.append(f"trainable dtypes {result.stats['trainable_dtypes']}, expected float32")
    elif returncode == 0:
        result.problems.append(f"no {STATS_FILE}")
    result.ok = not result.problems
    return result


def _metrics_text(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())) or "-"


def table_line(result: CheckResult) -> str:
    rate = f"{result.steps_per_second:.2f}" if result.steps_per_second is not None else "-"
    peak = f"{result.peak_cuda_mib:.0f}" if result.peak_cuda_mib is not None else "-"
    line = (f"{result.name:<28} {'ok' if result.ok else 'FAILED':<6} {result.wall_seconds:>7.1f} {rate:>8} "
            f"{peak:>9}  val {_metrics_text(result.val)} | test {_metrics_text(result.test)}")
    trace = "".join(f"\n      | {text}" for text in result.stderr_tail[-8:])  # the traceback's end
    return line + "".join(f"\n    {problem}" for problem in result.problems) + trace


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Overrides after `--` are passed to every check.")
    parser.add_argument("--out", type=Path, help="write DIR/gpu_check.json and keep the runs under DIR")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of: {', '.join(CHECKS)}")
    parser.add_argument("--backbone", default="smollm2_135m", help="backbone preset (default: the offline default)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per check")
    parser.add_argument("extra", nargs="*", help="extra softprompt-train overrides (after --)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.checks.split(",") if name not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {', '.join(CHECKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: error: CUDA is not available (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); run this on a machine with a CUDA GPU", file=sys.stderr)
        return 2
    root = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    runs = root / time.strftime("%Y-%m-%d_%H-%M-%S")  # fresh run dirs: nothing resumes from an older check
    print(f"gpu_check on {torch.cuda.get_device_name()} (torch {torch.__version__}); runs under {runs}", flush=True)
    print(f"{'check':<28} {'status':<6} {'wall s':>7} {'steps/s':>8} {'peak MiB':>9}  metrics", flush=True)
    results = []
    for name in args.checks.split(","):
        overrides, expected = CHECKS[name]
        result = run_check(name, [f"backbone={args.backbone}", *COMMON, *overrides, *args.extra], expected,
                           runs / name, args.timeout)
        results.append(result)
        print(table_line(result), flush=True)
    if args.out is not None:
        report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "results": [asdict(r) for r in results]}
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out / 'gpu_check.json'}", flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
