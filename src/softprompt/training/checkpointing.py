"""What makes a run resumable: last.ckpt after every validation, validation history kept in checkpoints,
and the `ckpt_path` rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from softprompt.errors import ConfigError
from softprompt.training.results import LAST_CHECKPOINT, stage_metrics


class LastCheckpoint(ModelCheckpoint):
    """Writes last.ckpt at the end of every validation. Lightning runs checkpoint callbacks after all others
    and in order, so the file holds this validation's history record and the best checkpoint's updated
    state: a resumed run neither repeats nor loses a validation."""

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, save_on_train_epoch_end=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            trainer.save_checkpoint(str(Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"))
            self._last_global_step_saved = trainer.global_step


class ValidationHistory(L.Callback):
    """Val metrics at every validation, so the best checkpoint's metrics can be reported. Saved in
    checkpoints, so a resumed run still knows the validations before the interruption."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            record = stage_metrics(trainer.callback_metrics, "val")
            self.records = [r for r in self.records if r["step"] != trainer.global_step]  # a rerun after resume
            self.records.append({"step": trainer.global_step, **record})

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict["records"])


def resume_checkpoint(setting: str | None, output_dir: Path) -> str | None:
    """`ckpt_path`: auto (the output dir's last.ckpt when there is one), last (it must exist), null, or a path."""
    last = output_dir / LAST_CHECKPOINT
    if setting is None:
        return None
    if setting == "auto":
        return str(last) if last.is_file() else None
    path = last if setting == "last" else Path(setting)
    if not path.is_file():
        raise ConfigError("ckpt_path", setting, f"no checkpoint at {path}; use auto (resume only when "
                          f"{LAST_CHECKPOINT} exists), null, or an existing .ckpt path")
    return str(path)
