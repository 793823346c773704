"""What multi-process training needs from us beyond Lightning's strategies.

- Lightning starts DDP workers by re-running the command line. Under Hydra that command is a whole
  multirun (or a new timestamped output dir); the workers must instead run exactly this job, in this
  job's output dir (the lightning-hydra-template trap). `job_worker_command` builds that command.
- Frozen backbone tensors are kept out of DDP's initial broadcast, buffer broadcasts and gradient
  all-reduce: only the trainable prompt is synchronised.
- FSDP wraps each transformer layer. `CPUFSDPStrategy` runs Lightning's FSDP over CPU processes.
- A worker that dies fails the job in one line from rank 0, never a hang: a collective that loses its peer
  (at once) or waits past `trainer.strategy.timeout` raises, and `distributed_job` turns that into
  `WorkerFailed`; `WorkerObserver` (instead of Lightning's observer, which kill -9s rank 0 without a word)
  reports a dead worker itself when rank 0 is stuck where no collective can fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    StateDictType,
)
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.errors import SoftPromptError


class WorkerFailed(SoftPromptError):
    """A process of a multi-process job died or stopped answering."""


def job_worker_command(local_rank: int) -> tuple[list[str], str]:
    """(command, cwd) that starts DDP worker `local_rank` on this Hydra job: its own overrides (never the
    sweep's), its output dir, and no second `.hydra/` folder."""
    from hydra.core.hydra_config import HydraConfig

    import __main__

    hydra_cfg = HydraConfig.get()
    spec = getattr(__main__, "__spec__", None)
    command = [sys.executable, "-m", spec.name] if spec is not None else [sys.executable, sys.argv[0]]
    command += [*hydra_cfg.overrides.task, "hydra.mode=RUN", f"hydra.run.dir={hydra_cfg.runtime.output_dir}",
                "hydra.output_subdir=null", f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
                f"hydra.job_logging.handlers.file.filename={hydra_cfg.runtime.output_dir}/rank{local_rank}.log"]
    return command, hydra_cfg.runtime.cwd


def use_job_worker_command() -> None:
    """Make Lightning's DDP launchers start workers with `job_worker_command` (their Hydra hook is a module-level
    function, looked up at launch time: Fabric's, and the copy the Trainer's imports) and watch them with
    `WorkerObserver`."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher

    for launcher in (fabric_launcher, trainer_launcher):
        launcher._hydra_subprocess_cmd = job_worker_command
        launcher._launch_process_observer = observe_workers


_WORKERS: list[subprocess.Popen] = []  # the worker processes this process (rank 0) started for the current job
_REPORTED = threading.Event()  # rank 0 has raised WorkerFailed: the observer says nothing more


def observe_workers(workers: list[subprocess.Popen]) -> None:
    """Watch the workers rank 0 just started (Lightning's launcher calls this)."""
    _WORKERS[:] = workers
    _REPORTED.clear()
    WorkerObserver(workers).start()


def stop_workers() -> None:
    """kill -9 the workers still running (one stuck in a collective ignores anything gentler)."""
    for worker in _WORKERS:
        if worker.poll() is None:
            worker.send_signal(signal.SIGKILL)


def exit_description(returncode: int) -> str:
    if returncode < 0:
        with_name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else -returncode
        return f"was killed by signal {with_name}"
    return f"exited with status {returncode}"


class WorkerObserver(threading.Thread):
    """Polls the workers; when one exits non-zero, rank 0 has `grace` seconds to fail with its own one-line error
    (a collective that lost its peer raises at once). If it has not, it is stuck where nothing can fail: this
    thread prints the one line, stops the other workers and ends the process."""

    def __init__(self, workers: list[subprocess.Popen], period: float = 1.0, grace: float = 20.0) -> None:
        super().__init__(daemon=True, name="softprompt-worker-observer")  # ends with the main process
        self.workers, self.period, self.grace = list(workers), period, grace

    def run(self) -> None:
        while True:
            time.sleep(self.period)
            codes = [worker.poll() for worker in self.workers]
            if all(code == 0 for code in codes):
                return
            failed = [(rank, code) for rank, code in enumerate(codes, start=1) if code]
            if failed:
                break
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and not _REPORTED.is_set():
            time.sleep(0.2)
        stop_workers()
        if _REPORTED.is_set():
            return
        rank, code = failed[0]
        sys.stdout.flush()
        sys.stderr.write(f"softprompt: error: worker process rank {rank} {exit_description(code)}; rank 0 was stuck "
                         f"and stopped the job after {self.grace:.0f} s (see rank{rank}.log in the output dir)\n")
        sys.stderr.flush()
        os._exit(2)


# What torch's collectives say when a peer is gone or silent (gloo, NCCL; the store), past their source location.
COLLECTIVE_FAILURE = re.compile(r"Connection closed by peer|Connection reset|Broken pipe|Timed out|timed out|"
                                r"[Tt]imeout|NCCL error|ProcessGroup|DistBackendError|DistNetworkError")


def worker_failure(error: BaseException) -> WorkerFailed | None:
    """`error` as one line when it is a collective that lost a worker (in a multi-process job), else None."""
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    multiprocess = initialized or int(os.environ.get("WORLD_SIZE", "1")) > 1
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(error)
    if not multiprocess or not (isinstance(error, dist_error) or
                                (isinstance(error, RuntimeError) and COLLECTIVE_FAILURE.search(text))):
        return None
    reason = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(text.split()))  # gloo's "[file.cc:553] " prefix
    reason = reason.split(". ")[0].rstrip(".")[:200]
    rank = torch.distributed.get_rank() if initialized else os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))
    return WorkerFailed(f"a worker process of this multi-process job died or stopped answering: rank {rank} got "
                        f"'{reason}' in a collective and "
                        "stopped the job instead of waiting (a silent worker fails it after "
                        "trainer.strategy.timeout); see each worker's rank<N>.log in the output dir")


@contextmanager
def distributed_job() -> Iterator[None]:
    """One Hydra job's process group: torn down when the job ends, with the launcher's environment
    variables (LOCAL_RANK, MASTER_PORT, ...), so the next job of a multirun starts its own workers. A collective
    that lost a worker is `WorkerFailed` (one line), and the other workers are stopped."""
    environment = dict(os.environ)
    try:
        yield
    except Exception as error:
        failure = worker_failure(error)
        if failure is None:
            raise
        _REPORTED.set()
        stop_workers()
        raise failure from None
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(environment)


def keep_frozen_out_of_ddp(module: nn.Module) -> list[str]:
    """Tell DDP to ignore every parameter and buffer that is not trained; returns their names."""
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    frozen = [name for name, _ in module.named_parameters() if name not in trainable]
    frozen += [name for name, _ in module.named_buffers()]
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
    return frozen


def transformer_layer_policy() -> Callable[..., bool]:
    """FSDP auto-wrap policy: one unit per transformer layer (every transformers layer class subclasses
    GradientCheckpointingLayer), whatever the architecture."""

    def policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        return True if recurse else isinstance(module, GradientCheckpointingLayer)

    return policy


class KeepRootFSDPStrategy(FSDPStrategy):
    """Lightning's FSDP, with one fix: the root FSDP unit built for `fit` is reused by `validate`/`test`.

    Lightning re-runs strategy setup on the bare LightningModule for every stage; it sees the wrapped
    layers and does not wrap the root again, so the root's own parameters (embeddings, the prompt) would
    stay this rank's flat shard in the test stage."""

    _root: FullyShardedDataParallel | None = None

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self._root is not None and self._root.module is model:
            return self._root
        wrapped = super()._setup_model(model)
        self._root = wrapped if isinstance(wrapped, FullyShardedDataParallel) else None
        return wrapped


class CPUFSDPStrategy(KeepRootFSDPStrategy):
    """FSDP over CPU processes (gloo): for tests and laptops, as trainer=ddp_cpu is for DDP.

    torch's FSDP shards on CPU when given `device_id=cpu`; Lightning 2.6 refuses FSDP on CPU and passes
    no device id, so this strategy wraps the model itself and leaves the rest to Lightning."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if not any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            model = FullyShardedDataParallel(model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                             **self.kwargs)
            self.kwargs.pop("auto_wrap_policy", None)  # applied; Lightning would warn that it is ignored
            self._root = model
        return super()._setup_model(model)

    # Lightning gathers full state dicts with offload_to_cpu=True; on CPU that "offload" is no copy, and the
    # state dict would alias storage FSDP frees after gathering (a segfault once a tensor is read).
    def lightning_module_state_dict(self) -> dict[str, Any]:
        with _full_state_dict_without_offload():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        with _full_state_dict_without_offload():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with _full_state_dict_without_offload():
            return super().load_checkpoint(*args, **kwargs)


@contextmanager
def _full_state_dict_without_offload() -> Iterator[None]:
    import lightning.pytorch.strategies.fsdp as lightning_fsdp

    def context(module: nn.Module, world_size: int, rank0_only: bool = True) -> Any:
        return FullyShardedDataParallel.state_dict_type(
            module, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

    original = lightning_fsdp._get_full_state_dict_context
    lightning_fsdp._get_full_state_dict_context = context
    try:
        yield
    finally:
        lightning_fsdp._get_full_state_dict_context = original


def gather_objects(trainer: Any, items: Sequence[Any]) -> list[Any]:
    """Every process's `items`, concatenated (rank order), on every process; `items` itself on one process."""
    if trainer is None or trainer.world_size == 1 or not torch.distributed.is_initialized():
        return list(items)
    gathered: list[Any] = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]
