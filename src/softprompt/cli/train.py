"""softprompt-train: the Hydra app that runs one job per configuration (`-m` for a sweep).

A single run that fails exits with status 2 and one line for our errors. A job of a multirun that fails
writes failed.json and returns None, so the sweep goes on (training.failures.FailureSummary reports it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from softprompt.config.compose import config_dir
from softprompt.config.mixture import tasks_from_overrides
from softprompt.errors import SoftPromptError
from softprompt.training.cv import run_job
from softprompt.training.distributed import distributed_job, use_job_worker_command
from softprompt.training.failures import clear_failure, one_line, write_failure
from softprompt.training.run import run_and_finish

log = logging.getLogger("softprompt")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the validation selection metric (the fold mean under cv.mode=all), which
    sweepers such as Optuna optimise, or None for a failed job of a multirun."""
    use_job_worker_command()
    output_dir = Path(cfg.paths.output_dir)
    try:
        tasks_from_overrides(cfg, HydraConfig.get().overrides.task)  # task=[a,b]: a task mixture
        with distributed_job():
            score = run_job(cfg, run_and_finish)
    except Exception as error:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if isinstance(error, SoftPromptError):
                print(f"softprompt: error: {error}", file=sys.stderr)
                sys.exit(2)
            raise
        overrides = list(hydra_cfg.overrides.task)
        if rank_zero_only.rank == 0:
            write_failure(output_dir, error, overrides, hydra_cfg.job.get("num"))
        print(f"softprompt: error: job #{hydra_cfg.job.num} ({' '.join(overrides)}) failed: {one_line(error)}",
              file=sys.stderr)
        log.error("job failed; the sweep goes on", exc_info=not isinstance(error, SoftPromptError))
        return None
    if rank_zero_only.rank == 0:
        clear_failure(output_dir)
    return score


if __name__ == "__main__":
    main()
