"""Config checks of the data and cross-validation settings, before anything loads: one line naming the key."""

from __future__ import annotations

from collections.abc import Mapping

from softprompt.errors import ConfigError, require_positive_int

CV_MODES = ("single", "all")


def check_cv(cv: Mapping, splits: Mapping, task_key: str = "task") -> None:
    num_folds = cv.get("num_folds")
    mode = cv.get("mode", "single")
    if mode not in CV_MODES:
        raise ConfigError("cv.mode", mode, "allowed: single (one fold per job), all (every fold in one job)")
    if mode == "all" and num_folds is None:
        raise ConfigError("cv.mode", mode, "needs folds: set cv.num_folds=K (or cv=kfold)")
    if num_folds is None:
        # Without folds, selection uses the task's validation split; the test split must be another one.
        for role in ("validation", "test"):
            if not splits.get(role):
                raise ConfigError(f"{task_key}.splits.{role}", splits.get(role),
                                  "without cv.num_folds the task needs both a validation and a test split "
                                  "(the test split never serves model selection); set cv.num_folds=K to hold "
                                  "out a fold of train instead")
        return
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ConfigError("cv.num_folds", num_folds, "must be null (use the task's validation split) or >= 2")
    fold = cv.get("fold")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ConfigError("cv.fold", fold, f"must be an integer in [0, {num_folds}) for cv.num_folds={num_folds}")


def check_data(data: Mapping) -> None:
    require_positive_int("data.batch_size", data.get("batch_size"))
    require_positive_int("data.eval_batch_size", data.get("eval_batch_size"))
    if data.get("padding_side") not in ("left", "right"):
        raise ConfigError("data.padding_side", data.get("padding_side"), "allowed: left, right")
    if not isinstance(data.get("group_by_length"), bool):
        raise ConfigError("data.group_by_length", data.get("group_by_length"), "allowed: true, false")
    require_positive_int("data.length_group_batches", data.get("length_group_batches"))
    for role, limit in (data.get("max_samples") or {}).items():
        if role not in ("train", "validation", "test"):
            raise ConfigError(f"data.max_samples.{role}", limit, "allowed keys: train, validation, test")
        if limit is not None:
            require_positive_int(f"data.max_samples.{role}", limit)
