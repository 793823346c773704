"""Prompt transfer (SPoT, Vu et al. 2022, section 2): a target prompt starts from a prompt trained on a source task.

`transfer.enabled=true` makes a job first train the source prompt on `transfer.source_task` (a full task node,
composed from a task preset, e.g. `/task@transfer.source_task: bbc_topic`) or on the mixture `transfer.source_tasks`
(a `tasks` list) with the job's own method, backbone,
optimizer, trainer and seed, on the source's own validation split, then start the target from its folded tensors
(`method.init=from_artifact`). The source run lives in the cache under a digest of its config: the jobs of a sweep
(every fold) share one source prompt, trained once (a file lock keeps concurrent jobs from training it twice).
`transfer.enabled=false` jobs are the baseline: the same target runs, same folds and seeds, from the usual init.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from softprompt.artifacts.format import ARTIFACT_DIR, SPEC_FILE
from softprompt.artifacts.summary import load_summary, read_summary
from softprompt.config.mixture import with_task_mixture, writable_copy
from softprompt.config.precision import strategy_name
from softprompt.errors import ConfigError
from softprompt.methods.init import ARTIFACT_INIT
from softprompt.training.results import METRICS_FILE

log = logging.getLogger("softprompt")
SOURCE_KEYS = ("backbone", "method", "optimizer", "trainer", "data", "seed")  # what the source run shares


def check_transfer(cfg: Mapping[str, Any]) -> None:
    """One-line ConfigErrors for a transfer that cannot be one; reads the plain job config only."""
    transfer = cfg.get("transfer") or {}
    enabled = transfer.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError("transfer.enabled", enabled, "allowed: true, false")
    if not enabled:
        return
    if transfer.get("source_tasks"):
        return _check_strategy_and_init(cfg)  # a source mixture: its tasks are checked when it expands
    source = transfer.get("source_task")
    if not isinstance(source, Mapping) or not source.get("name"):
        raise ConfigError("transfer.source_task", source, "must be a task node: add "
                          "`- /task@transfer.source_task: NAME` to the defaults (experiment=prompt_transfer does)")
    if source["name"] == cfg["task"]["name"]:
        raise ConfigError("transfer.source_task.name", source["name"], "the source task must differ from the target "
                          "task (a prompt transferred from its own task is not a transfer)")
    _check_strategy_and_init(cfg)


def _check_strategy_and_init(cfg: Mapping[str, Any]) -> None:
    strategy = strategy_name(cfg["trainer"])
    if strategy not in ("", "auto"):
        raise ConfigError("transfer.enabled", True, f"trains its source prompt inside the job, which "
                          f"trainer.strategy={strategy} would run on every process; train the source in a "
                          "single-device run and start from it with method.init=from_artifact")
    if cfg["method"].get("init") == ARTIFACT_INIT:
        raise ConfigError("method.init", ARTIFACT_INIT, "transfer.enabled=true sets the target's start itself; "
                          "give the source with transfer.source_task instead")


@dataclass(frozen=True)
class TransferSource:
    """The source prompt a transfer job starts from: the source task (or mixture), its run folder and scores."""

    source_task: str
    source_run: str
    source_val: dict[str, Any]
    source_test: dict[str, Any]

    @property
    def artifact(self) -> str:
        """The source prompt's artifact folder, the target's `method.init_artifact`."""
        return str(Path(self.source_run) / ARTIFACT_DIR)

    def record(self) -> dict[str, Any]:
        """As metrics.json's `transfer` holds it."""
        return {"source_task": self.source_task, "source_run": self.source_run, "source_val": self.source_val,
                "source_test": self.source_test}


def source_config(cfg: DictConfig, cache_dir: Path) -> DictConfig:
    """The source job: the target job's settings on the source task, its own validation split, in the cache. A
    new config; `cfg` is only read."""
    source = writable_copy(cfg)
    with open_dict(source):
        source.task = cfg.transfer.source_task
        source.tasks = cfg.transfer.get("source_tasks")  # SPoT's multi-task source: a tasks list
        source.transfer.enabled = False
        source.cv.num_folds, source.cv.fold, source.cv.mode = None, None, "single"
        source.resume_sweep, source.ckpt_path = False, "auto"  # a killed source run resumes
        source.logger = None
        source.paths.output_dir = ""  # the digest must not depend on the target job's folder
    source = with_task_mixture(source)
    identity = {key: OmegaConf.to_container(source[key], resolve=True) if isinstance(source[key], DictConfig)
                else source[key] for key in (*SOURCE_KEYS, "task")}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    with open_dict(source):
        source.paths.output_dir = str(cache_dir / "prompt_transfer" / f"{source.task.name}-{digest}")
    return source


def prepare_transfer(cfg: DictConfig, train: Callable[[DictConfig], Mapping[str, Any]]) -> TransferSource | None:
    """With transfer.enabled: the source prompt, trained now with `train` (which returns its metrics.json content)
    or reused; the target job starts from its artifact (`TransferSource.artifact`). None without transfer. `cfg` is
    only read."""
    if not cfg.get("transfer") or not cfg.transfer.enabled:
        return None
    source = source_config(cfg, Path(cfg.paths.cache_dir).expanduser())
    out = Path(source.paths.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent jobs of a sweep wait for the one training it
        if (out / METRICS_FILE).is_file() and (out / ARTIFACT_DIR / SPEC_FILE).is_file():
            log.info("transfer: reusing the source prompt trained on %s in %s", source.task.name, out)
            summary = load_summary(out / METRICS_FILE)
        else:
            log.info("transfer: training the source prompt on %s in %s", source.task.name, out)
            summary = read_summary(train(source))
    return TransferSource(str(source.task.name), str(out), summary.val, summary.test)
