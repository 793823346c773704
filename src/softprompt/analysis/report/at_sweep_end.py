"""A Hydra callback that reports a multirun when it ends, for sweep presets whose result is the report itself
(experiment=prompt_ensemble). It reads the sweep folder as `softprompt-report SWEEP_DIR` does."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from softprompt.analysis.report.collect import ReportError
from softprompt.analysis.report.write import run_report

log = logging.getLogger("softprompt")


class ReportAtSweepEnd(Callback):
    """`ensemble`: None, or a vote (mean, majority) for the runs-alone-against-their-ensemble table."""

    def __init__(self, ensemble: str | None = None) -> None:
        self.ensemble = ensemble

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        try:
            run_report([sweep_dir], ensemble=self.ensemble)
        except ReportError as error:  # the runs are all there; the user can rerun softprompt-report
            log.error("softprompt-report %s: %s", sweep_dir, error)
