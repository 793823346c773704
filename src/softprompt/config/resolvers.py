"""OmegaConf resolvers the config tree uses (registered on import of the package)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def fold_name(num_folds: int | None, fold: int) -> str:
    """A run's place in cross-validation: `fold2`, or `no_cv` (wandb's job type)."""
    return f"fold{fold}" if num_folds else "no_cv"


def sweep_group(mode: object, task_name: str, sweep_dir: str) -> str | None:
    """The jobs of one multirun share a group named after its sweep folder; a single run has none."""
    return f"{task_name}/{Path(sweep_dir).name}" if "MULTIRUN" in str(mode) else None


def register() -> None:
    for name, function in (("sp.fold_name", fold_name), ("sp.sweep_group", sweep_group)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)
