"""What makes a run resumable: last.ckpt after every validation, validation history kept in checkpoints,
checkpoints written atomically, and the `ckpt_path` rule."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from softprompt.config.atomic import atomic_open
from softprompt.data.sampling import evaluates_whole_splits
from softprompt.errors import ConfigError
from softprompt.training.distributed import gather_objects
from softprompt.training.results import LAST_CHECKPOINT, stage_metrics


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the checkpoint's folder, fsync, rename: a run killed while saving
    leaves the previous checkpoint whole (Lightning's own temporary goes to /tmp, is not fsynced, and across
    filesystems its move is a copy)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_open(Path(path), "wb") as handle:
            torch.save(checkpoint, handle)


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
    """Val metrics at every validation, so the best checkpoint's metrics can be reported, and the per-example
    predictions of the passes that can still be reported: the best so far by `metric` and the latest (run.py
    reports one of them). Saved in checkpoints, so a resumed run still knows the validations before the
    interruption and the predictions behind them."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.records: list[dict[str, float]] = []
        self.predictions: dict[int, list[dict[str, Any]]] = {}  # by step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        rows = list(getattr(pl_module, "val_predictions", []))
        if not evaluates_whole_splits(trainer):
            rows = gather_objects(trainer, rows)  # every process's share, on every process (a collective)
        record = stage_metrics(trainer.callback_metrics, "val")
        step = trainer.global_step
        self.records = [r for r in self.records if r["step"] != step]  # a rerun after resume
        self.records.append({"step": step, **record})
        self.predictions[step] = rows
        keep = {self.best()["step"], step}
        self.predictions = {s: p for s, p in self.predictions.items() if s in keep}

    def best(self) -> dict[str, float]:
        """The first record with the highest `metric`: the one ModelCheckpoint keeps (it replaces its best only on
        a strictly better value)."""
        return max(self.records, key=lambda r: r[self.metric])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed into another output folder, Lightning reloads the selecting ModelCheckpoint's best path but not its
        # score, so the next validation would replace it however it scored: the test would then score another
        # checkpoint than the validation record reported. Give it back the score of the record it holds.
        if not self.records:
            return
        for callback in trainer.checkpoint_callbacks:
            if callback.monitor is not None and callback.best_model_score is None and callback.best_model_path:
                score = torch.tensor(float(self.best()[self.metric]))
                callback.best_model_score = callback.kth_value = score
                callback.kth_best_model_path = callback.best_model_path
                callback.best_k_models = {callback.best_model_path: score}

    def state_dict(self) -> dict[str, Any]:
        return {"records": self.records, "predictions": self.predictions}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.records = list(state_dict["records"])
        # A checkpoint from before validation predictions were kept has none: those passes report no file.
        self.predictions = dict(state_dict.get("predictions", {}))


class RandomState(L.Callback):
    """The random number generators' state in every checkpoint, restored on resume: a method's dropout (an MLP
    reparameterisation, a prompt generator) then draws the masks the uninterrupted run drew."""

    def state_dict(self) -> dict[str, Any]:
        # Tensors and plain numbers only: checkpoints load with torch.load(weights_only=True).
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": random.getstate(),
                 "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss)}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def resume_checkpoint(setting: str | None, output_dir: Path) -> str | None:
    """`ckpt_path`: auto (the output dir's last.ckpt when there is one), last (it must exist), null, or a path."""
    last = output_dir / LAST_CHECKPOINT
    if setting is None:
        return None
    if setting == "auto" and not last.is_file():
        return None
    path = last if setting in ("auto", "last") else Path(setting)
    if path.is_file():
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut one lacks its directory
            raise ConfigError("ckpt_path", setting, f"{path} is not a whole checkpoint (truncated, or not written by "
                              "torch.save); delete it to start fresh, or give ckpt_path=null or another .ckpt path")
        return str(path)
    raise ConfigError("ckpt_path", setting, f"no checkpoint at {path}; use auto (resume only when "
                      f"{LAST_CHECKPOINT} exists), null, or an existing .ckpt path")
