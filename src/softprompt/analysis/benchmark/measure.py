"""Measuring a step: its wall time (CUDA synchronised) and the peak memory it adds, per runner, and the
per-runner medians and ratios that make a table row.

Memory: the peak a step adds on top of what was resident before it (CPU: resident set size sampled every
2 ms after returning freed memory to the OS; CUDA: `max_memory_allocated`), so runners that share one
process are measured apart.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from softprompt.errors import SoftPromptError

PROG = "softprompt-bench"


class BenchError(SoftPromptError):
    """A benchmark that cannot run as asked; shown as one `softprompt-bench: error: ...` line, exit status 2."""


@dataclass
class Runner:
    """One way of doing a training step (or a forward pass) on a batch."""

    name: str
    step: Callable[[dict], None]
    batches: list[dict] | None = None  # its own batches (else the group's)
    seconds: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


PEFT_SAME_KERNELS = "PEFT (our attention kernels)"


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
    vs_peft_same_kernels: float | None = None  # against PEFT on our attention kernels, where they differ
    vs_frozen_forward: float | None = None
    seconds: list[float] = field(default_factory=list)
    quantization: str = "none"  # the backbone's (backbone.quantization)
    vs_full_precision: float | None = None  # step time against the same runner on the unquantised backbone
    peak_vs_full_precision: float | None = None  # step peak, likewise


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

    def resident_mib(self) -> float:
        """Memory held now: the process's resident set (freed memory returned to the OS first), or CUDA's
        allocated memory."""
        if self.cuda:
            return self.torch.cuda.memory_allocated() / 2**20
        if self._libc is not None:
            self._libc.malloc_trim(0)
        return self._rss() / 2**20

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


def summarise(data: str, method: str, runners: Sequence[Runner]) -> list[Row]:
    rows = []
    for runner in runners:
        if not runner.seconds:
            continue
        median = statistics.median(runner.seconds)
        tokens = statistics.median(t / s for t, s in zip(runner.tokens, runner.seconds, strict=True))
        # Microseconds kept: a tiny backbone's steps take milliseconds, and ratios are taken of these values.
        rows.append(Row(data, method, runner.name, round(median, 6), round(min(runner.seconds), 6),
                        round(max(runner.seconds), 6), round(1 / median, 3), round(tokens, 1),
                        round(statistics.median(runner.peak_mib), 1), seconds=[round(s, 6) for s in runner.seconds]))
    by_name = {row.runner: row for row in rows}
    for row in rows:
        if "PEFT" in by_name and row.runner.startswith("ours"):
            row.vs_peft = round(row.median_s / by_name["PEFT"].median_s, 3)
        if PEFT_SAME_KERNELS in by_name and row.runner.startswith("ours"):
            row.vs_peft_same_kernels = round(row.median_s / by_name[PEFT_SAME_KERNELS].median_s, 3)
        if "frozen forward" in by_name and row.runner != "frozen forward":
            row.vs_frozen_forward = round(row.median_s / by_name["frozen forward"].median_s, 3)
    return rows
