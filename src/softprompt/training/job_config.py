"""The job config, parsed once: Hydra's composed DictConfig is checked and parsed into one frozen `JobConfig`, which
everything downstream receives. The DictConfig is never changed: what a run resolves (the task mixture, the
precision, the transfer source) is a field of the job, and `plain` (the resolved settings that loggers, metrics.json
and the artifact record) is made once, with those resolutions in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from softprompt.config.mixture import with_task_mixture
from softprompt.config.precision import Precision, settle_precision
from softprompt.data.settings import CVSettings, DataSettings
from softprompt.data.task import MixtureTask, TaskConfig
from softprompt.methods import MethodConfig, SoftPromptMethod
from softprompt.methods.init import ARTIFACT_INIT
from softprompt.training.checks import check_config
from softprompt.training.transfer import TransferSource, prepare_transfer


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The job config as plain containers. A `hydra` node (compose API only) is left out, unresolved."""
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


@dataclass(frozen=True)
class JobConfig:
    """One run's settings, checked and parsed: the typed method, task, data and cv settings, the precision and
    transfer source the run resolved, and `plain`, the resolved settings as plain containers (with those
    resolutions in them) that loggers, metrics.json's method_config and the artifact record. `composed` is Hydra's
    config, only ever read (the transfer source job is made from a copy of it)."""

    composed: DictConfig
    plain: Mapping[str, Any]
    method_class: type[SoftPromptMethod]
    method: MethodConfig
    task: TaskConfig | MixtureTask
    data: DataSettings
    cv: CVSettings
    precision: Precision
    transfer: TransferSource | None = None

    @property
    def seed(self) -> int:
        return int(self.plain["seed"])

    @property
    def output_dir(self) -> Path:
        return Path(self.plain["paths"]["output_dir"])

    @property
    def cache_dir(self) -> Path:
        return Path(self.plain["paths"]["cache_dir"]).expanduser()

    def with_transfer(self, source: TransferSource | None) -> JobConfig:
        """This job starting from the source prompt (`method.init=from_artifact` at its artifact)."""
        if source is None:
            return self
        start = {"init": ARTIFACT_INIT, "init_artifact": source.artifact}
        plain = {**self.plain, "method": {**self.plain["method"], **start}}
        return dataclasses.replace(self, plain=plain, method=dataclasses.replace(self.method, **start),
                                   transfer=source)


def parse_job(cfg: DictConfig, tasks: Sequence[Any] | None = None) -> JobConfig:
    """Check (one ConfigError line, before anything loads) and parse the composed config; `tasks`: a task list
    given as `task=[a,b]` on the command line. The precision is resolved for this machine; `cfg` is only read."""
    plain = resolved_config(with_task_mixture(cfg, tasks))
    method_class, method, task = check_config(plain)
    precision = settle_precision(plain["trainer"], plain["backbone"])
    plain = {**plain, "trainer": {**plain["trainer"], "precision": precision.trainer},
             "backbone": {**plain["backbone"], "dtype": precision.backbone_dtype}}
    return JobConfig(cfg, plain, method_class, method, task, DataSettings.from_config(plain["data"]),
                     CVSettings.from_config(plain["cv"]), precision)


def parse_and_transfer(cfg: DictConfig, train: Callable[[DictConfig], Mapping[str, Any]],
                       tasks: Sequence[Any] | None = None) -> JobConfig:
    """`parse_job`, then the transfer source (trained now with `train`, or reused) the job starts from."""
    job = parse_job(cfg, tasks)
    return job.with_transfer(prepare_transfer(job.composed, train))
