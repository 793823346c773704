"""Hub presets against the hub as it is, offline: each hub preset of conf/task/ has a recorded schema of its dataset
(repository, revision, config, splits, column types, ClassLabel names in index order, splits that hide their labels).
The preset must name only what its schema holds, and our real loading code (datasets.load_dataset, column and label
mapping, the checks) must read a local Parquet replica built from the schema, laid out as the hub repository is.

How to record the schema of a new hub preset: docs/tasks.md#recording-a-hub-presets-schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pytest
from datasets import ClassLabel, Features, Translation, Value
from datasets.exceptions import DatasetNotFoundError
from omegaconf import OmegaConf
from sacrebleu.metrics import BLEU

from softprompt.analysis.report.collect import collect_runs
from softprompt.analysis.report.outcomes import run_outcomes
from softprompt.config.compose import config_dir
from softprompt.data import CVSettings, DataSettings, PromptDataModule, Rendering
from softprompt.data.sources import read_splits
from softprompt.data.task import GROUP, LABEL, TARGET, TaskConfig, parse_task
from softprompt.data.validation import DataError
from softprompt.objectives.generation import GenerationObjective
from softprompt.training.run import run

LOCAL_FORMATS = ("json", "csv", "tsv", "parquet", "text")
SPLITS = ("train", "validation", "test")
STRING = Value("string")


@dataclass(frozen=True)
class HubSchema:
    """One hub dataset as a preset reads it. `files`: split -> its Parquet file in the repository at `revision`
    (the split names are its keys); `card`: the repository's README `configs:` metadata, where it declares configs;
    `script`: the loading script on main (datasets >= 4 refuses it); `shared`: a column whose value several rows
    share (E2E: one row per reference of a meaning representation); `read_from`: where the facts come from."""

    repo: str
    revision: str | None  # None: main
    config: str | None
    files: Mapping[str, str]
    features: Features
    read_from: str
    hidden_labels: tuple[str, ...] = ()
    card: str | None = None
    script: str | None = None
    shared: str | None = None


def _card(configs: Mapping[str, Mapping[str, str]]) -> str:
    """A README whose `configs:` metadata maps each config's splits to their files, as the repository's card does."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    return "\n".join([*lines, "---", ""])


def _per_config(config: str) -> dict[str, str]:
    """Multi-config repositories on main (glue, super_glue, wmt16): <config>/<split>-00000-of-00001.parquet."""
    return {split: f"{config}/{split}-00000-of-00001.parquet" for split in SPLITS}


def _patterns(*configs: str) -> dict[str, dict[str, str]]:
    return {config: {split: f"{config}/{split}-*" for split in SPLITS} for config in configs}


def _parquet_export() -> dict[str, str]:
    """The hub's Parquet export branch (refs/convert/parquet): default/<split>/0000.parquet."""
    return {split: f"default/{split}/0000.parquet" for split in SPLITS}


GLUE_CARD = _card(_patterns("sst2", "rte"))
SUPER_GLUE_CARD = _card(_patterns("boolq", "cb"))
# Recorded from the datasets' cards (dataset_info / configs metadata) and repository trees on the hub, as stored
# copies showed them (checked 2026-12; see shared/ANCHORS.md, "Hub datasets as they are").
SCHEMAS: dict[str, HubSchema] = {
    "sst2": HubSchema(
        "nyu-mll/glue", None, "sst2", _per_config("sst2"),
        Features({"sentence": STRING, "label": ClassLabel(names=["negative", "positive"]), "idx": Value("int32")}),
        "huggingface.co/datasets/nyu-mll/glue README dataset_info (config sst2)", hidden_labels=("test",),
        card=GLUE_CARD),
    "rte": HubSchema(
        "nyu-mll/glue", None, "rte", _per_config("rte"),
        Features({"sentence1": STRING, "sentence2": STRING,
                  "label": ClassLabel(names=["entailment", "not_entailment"]), "idx": Value("int32")}),
        "huggingface.co/datasets/nyu-mll/glue README dataset_info (config rte)", hidden_labels=("test",),
        card=GLUE_CARD),
    "boolq": HubSchema(
        "aps/super_glue", None, "boolq", _per_config("boolq"),
        Features({"question": STRING, "passage": STRING, "idx": Value("int32"),
                  "label": ClassLabel(names=["False", "True"])}),
        "huggingface.co/datasets/aps/super_glue README dataset_info (config boolq)", hidden_labels=("test",),
        card=SUPER_GLUE_CARD),
    "cb": HubSchema(
        "aps/super_glue", None, "cb", _per_config("cb"),
        Features({"premise": STRING, "hypothesis": STRING, "idx": Value("int32"),
                  "label": ClassLabel(names=["entailment", "contradiction", "neutral"])}),
        "huggingface.co/datasets/aps/super_glue README dataset_info (config cb)", hidden_labels=("test",),
        card=SUPER_GLUE_CARD),
    "ag_news": HubSchema(
        "fancyzhx/ag_news", None, None, {split: f"data/{split}-00000-of-00001.parquet" for split in ("train", "test")},
        Features({"text": STRING, "label": ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])}),
        "huggingface.co/datasets/fancyzhx/ag_news README dataset_info",
        card=_card({"default": {"train": "data/train-*", "test": "data/test-*"}})),
    "rotten_tomatoes_hub": HubSchema(
        "cornell-movie-review-data/rotten_tomatoes", None, None, {split: f"{split}.parquet" for split in SPLITS},
        Features({"text": STRING, "label": ClassLabel(names=["neg", "pos"])}),
        "huggingface.co/datasets/cornell-movie-review-data/rotten_tomatoes (tree: train|validation|test.parquet; "
        "features text, label ClassLabel [neg, pos])"),
    "wmt16_ro_en": HubSchema(
        "wmt/wmt16", None, "ro-en", _per_config("ro-en"),
        Features({"translation": Translation(languages=["ro", "en"])}),
        "huggingface.co/datasets/wmt/wmt16 README dataset_info (config ro-en) and tree ro-en/",
        card=_card(_patterns("ro-en"))),
    "xsum": HubSchema(
        "EdinburghNLP/xsum", "refs/convert/parquet", None, _parquet_export(),
        Features({"document": STRING, "summary": STRING, "id": STRING}),
        "huggingface.co/datasets/EdinburghNLP/xsum dataset_infos.json features; Parquet export branch",
        script="xsum.py"),
    "e2e_nlg": HubSchema(
        "tuetschek/e2e_nlg", "refs/convert/parquet", None, _parquet_export(),
        Features({"meaning_representation": STRING, "human_reference": STRING}),
        "huggingface.co/datasets/tuetschek/e2e_nlg README dataset_info; tree of refs/convert/parquet (default/)",
        script="e2e_nlg.py", shared="meaning_representation"),
}


# ----------------------------------------------------------------------------------------------- the presets


def _preset_node(name: str) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "task" / f"{name}.yaml"), resolve=True)


def _hub_presets() -> list[str]:
    """Every preset of conf/task/ that reads a hub repository (no offline asset, no local format)."""
    names = []
    for path in sorted((Path(config_dir()) / "task").glob("*.yaml")):
        source = OmegaConf.load(path).get("source") or {}
        if not source.get("asset") and source.get("path") not in LOCAL_FORMATS:
            names.append(path.stem)
    return names


@pytest.fixture
def preset(make_cfg) -> Callable[[str], TaskConfig]:
    """`preset(name)`: the task as `task=name` composes it (defaults lists and merges included), typed."""
    return lambda name: parse_task(OmegaConf.to_container(make_cfg([f"task={name}"]).task, resolve=True))


def test_every_hub_preset_has_a_recorded_schema():
    assert sorted(_hub_presets()) == sorted(SCHEMAS)


def test_rotten_tomatoes_hub_composes_with_exactly_the_hubs_labels(preset):
    task = preset("rotten_tomatoes_hub")
    assert task.labels == ["neg", "pos"] and sorted(task.verbalizer) == ["neg", "pos"]
    assert dict(task.source) == {"path": "cornell-movie-review-data/rotten_tomatoes", "name": None, "revision": None,
                                 "data_files": None, "asset": None}
    assert task.group_column is None


def _column_exists(features: Features, column: str) -> bool:
    """A mapped column: top-level, or `parent.key` inside a nested one (translation.en)."""
    if column in features:
        return True
    parent, _, key = column.partition(".")
    feature = features.get(parent)
    return isinstance(feature, Translation) and key in feature.languages


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_a_hub_preset_names_only_what_its_dataset_holds(preset, name):
    schema, task = SCHEMAS[name], preset(name)
    assert (task.source["path"], task.source["revision"], task.source["name"]) == \
        (schema.repo, schema.revision, schema.config)
    assert task.source["asset"] is None and task.source["data_files"] is None
    used = {role: split for role, split in task.splits.items() if split is not None}
    assert set(used.values()) <= set(schema.files), used
    for field_name, column in task.columns.items():
        if column is not None:
            assert _column_exists(schema.features, column), (field_name, column)
    if task.type == "classification":
        label = schema.features[task.columns[LABEL]]
        assert isinstance(label, ClassLabel) and task.labels == label.names  # the same names, in index order
        assert sorted(task.verbalizer) == sorted(label.names)
        # Evaluation reads labels: never from a split whose labels the hub hides.
        assert not {task.splits["validation"], task.splits["test"]} & set(schema.hidden_labels)
    else:
        assert isinstance(task.columns[TARGET], str) and _column_exists(schema.features, task.columns[TARGET])


# ----------------------------------------------------------------------------------------- local replicas


def _value(feature: Any, split: str, column: str, i: int, schema: HubSchema) -> Any:
    """Row i's value of `column` in exactly the hub's type; a hidden split's labels are -1."""
    if isinstance(feature, ClassLabel):
        return -1 if split in schema.hidden_labels else i % feature.num_classes
    if isinstance(feature, Translation):
        return {language: f"the {split} {language} sentence number {i} of the replica" for language in
                feature.languages}
    if feature.dtype == "string":  # eight 13a tokens: long enough for BLEU's 4-grams
        return f"the {split} {column} number {i // 2 if column == schema.shared else i} of the replica"
    return i


def replica_rows(schema: HubSchema, split: str, size: int = 8) -> dict[str, list]:
    return {column: [_value(feature, split, column, i, schema) for i in range(size)]
            for column, feature in schema.features.items()}


def build_replica(root: Path, schemas: list[HubSchema]) -> None:
    """Each schema's repository under root/<revision>/<repo>, laid out as on the hub; a repository whose main branch
    is a loading script gets that script on main, as the hub has it."""
    for schema in schemas:
        folder = root / (schema.revision or "main") / schema.repo
        for split, file in schema.files.items():
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict(replica_rows(schema, split), features=schema.features).to_parquet(
                str(folder / file))
        if schema.card:
            (folder / "README.md").write_text(schema.card)
        if schema.script:
            main = root / "main" / schema.repo
            main.mkdir(parents=True, exist_ok=True)
            (main / schema.script).write_text("import datasets  # a loading script\n")


@pytest.fixture(scope="module")
def hub_replica(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hub")
    build_replica(root, list(SCHEMAS.values()))
    return root


@pytest.fixture
def offline_hub(hub_replica, monkeypatch) -> Path:
    """datasets.load_dataset reads hub ids from the replica (a revision it lacks is the hub's error); local formats
    load as before. Everything else, from our loader to datasets' file resolution and Parquet reading, is real."""
    real = datasets.load_dataset

    def load_dataset(path: str, *args: Any, revision: str | None = None, **kwargs: Any) -> Any:
        if path in LOCAL_FORMATS:
            return real(path, *args, revision=revision, **kwargs)
        folder = hub_replica / (revision or "main") / path
        if not folder.is_dir():
            raise DatasetNotFoundError(f"Revision '{revision}' doesn't exist for dataset '{path}' on the Hub.")
        # Its own datasets cache: a replica built anew is read anew (the hub's cache is keyed by commit).
        return real(str(folder), *args, cache_dir=str(hub_replica / "datasets-cache"), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return hub_replica


def _cv(task: TaskConfig) -> dict[str, Any]:
    """Presets without a labelled validation split run k-fold (as their yaml says)."""
    return {"num_folds": 2 if task.splits["validation"] is None else None, "fold": 0, "seed": 0}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_our_loader_reads_the_hub_replica_of_every_hub_preset(offline_hub, preset, tmp_path, name):
    schema, task = SCHEMAS[name], preset(name)
    splits = read_splits(task, _cv(task), tmp_path)
    roles = {role for role, split in task.splits.items() if split is not None}
    assert set(splits) == roles
    for role, dataset in splits.items():
        source_split = task.splits[role]
        rows = replica_rows(schema, source_split)
        assert len(dataset) == len(next(iter(rows.values())))
        for field_name in task.text_fields:
            column = task.columns[field_name]
            parent, _, key = column.partition(".")
            expected = [value[key] for value in rows[parent]] if key else rows[column]
            assert dataset[field_name] == expected, (role, field_name)
        if task.type == "classification":
            assert dataset[LABEL] == rows[task.columns[LABEL]]  # the hub's indices are ours: same names, same order
        else:
            parent, _, key = task.columns[TARGET].partition(".")
            assert dataset[TARGET] == ([v[key] for v in rows[parent]] if key else rows[parent])
        assert GROUP not in dataset.column_names


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEMAS.items() if s.hidden_labels))
def test_a_split_with_hidden_labels_is_refused_in_one_line(offline_hub, preset, tmp_path, name):
    task, node = preset(name), _preset_node(name)
    node["splits"]["test"] = SCHEMAS[name].hidden_labels[0]
    refusal = r"task\.columns\.label='label' is invalid: 8 of 8 examples of the test split .* have no label"
    with pytest.raises(DataError, match=refusal):
        read_splits(parse_task(node), _cv(task), tmp_path)


@pytest.mark.parametrize("name", sorted(n for n, s in SCHEMAS.items() if s.script))
def test_reading_a_script_repository_from_main_fails_as_on_the_hub(offline_hub, preset, tmp_path, name):
    node = _preset_node(name)
    node["source"]["revision"] = None
    refusal = rf"task\.source\.path='{SCHEMAS[name].repo}' is invalid: .*Dataset scripts are no longer supported"
    with pytest.raises(DataError, match=rf"{refusal}, but found {SCHEMAS[name].script}"):
        read_splits(parse_task(node), {"num_folds": None, "fold": 0, "seed": 0}, tmp_path)


# ------------------------------------------------------------------ E2E: once per source, against all references


@pytest.fixture
def evaluated(monkeypatch) -> list[tuple[str, int]]:
    """(stage, rows) of every generation batch evaluated. The text scored is each row's last reference without its
    last word (real decoding still runs, once per row): scores well inside (0, 1), and higher against all of a
    source's references than against one."""
    seen: list[tuple[str, int]] = []
    evaluate, texts = GenerationObjective.evaluate, GenerationObjective.texts

    def counting_evaluate(self, module, batch, stage):
        seen.append((stage, len(batch["row_index"])))
        self.batch_references = batch["references"] if "references" in batch else [[t] for t in batch["target_text"]]
        return evaluate(self, module, batch, stage)

    def near_last_reference(self, tokens):
        assert len(texts(self, tokens)) == len(self.batch_references)  # one generated text per row
        return [" ".join(refs[-1].split()[:-1]) for refs in self.batch_references]

    monkeypatch.setattr(GenerationObjective, "evaluate", counting_evaluate)
    monkeypatch.setattr(GenerationObjective, "texts", near_last_reference)
    return seen


TINY_GENERATION_RUN = ["backbone=tiny_random", "method=prompt_tuning", "method.init=vocab",
                       "method.num_virtual_tokens=3",
                       "trainer.max_steps=2", "trainer.val_check_interval=2", "data.batch_size=4",
                       "data.eval_batch_size=3"]


def sacrebleu(predictions: list[str], references: list[list[str]]) -> float:
    streams = [[refs[k] for refs in references] for k in range(len(references[0]))]
    return BLEU(smooth_method="none").corpus_score(predictions, streams).score / 100


def test_e2e_nlg_generates_once_per_source_and_scores_bleu_against_all_its_references(offline_hub, make_cfg,
                                                                                        evaluated):
    """The replica's E2E splits hold two rows (references) per meaning representation: training reads all 8 rows,
    evaluation generates for the 4 sources only, and BLEU is SacreBLEU's multi-reference corpus BLEU."""
    cfg = make_cfg(["task=e2e_nlg", *TINY_GENERATION_RUN, "task.generation.max_new_tokens=4"])
    summary = run(cfg)
    out = Path(cfg.paths.output_dir)

    assert summary["split_sizes"]["train"]["used"] == 8  # every (source, reference) pair trains
    assert summary["references"] == {"validation": {"sources": 4, "references": 8},
                                     "test": {"sources": 4, "references": 8}}
    assert sum(rows for stage, rows in evaluated if stage == "test") == 4
    rows = [json.loads(line) for line in (out / "test_predictions.jsonl").read_text().splitlines()]
    replica = replica_rows(SCHEMAS["e2e_nlg"], "test")["human_reference"]
    assert [row["row_index"] for row in rows] == [0, 2, 4, 6]  # each source's first row
    assert [row["references"] for row in rows] == [replica[i:i + 2] for i in (0, 2, 4, 6)]
    predictions, references = [row["prediction"] for row in rows], [row["references"] for row in rows]
    assert 0.5 < summary["test"]["bleu"] < 1.0
    assert summary["test"]["bleu"] == pytest.approx(sacrebleu(predictions, references), abs=1e-6)
    assert sacrebleu(predictions, [refs[:1] for refs in references]) < summary["test"]["bleu"] - 0.1
    # The report rebuilds BLEU and ROUGE per source from the predictions file, and gets the run's numbers.
    record = collect_runs([out]).runs[0]
    for metric in ("test/bleu", "test/rougeL"):
        assert run_outcomes(record, metric).value() == pytest.approx(summary["test"][metric.split("/")[1]], abs=1e-6)


def test_a_mixture_scores_each_task_by_its_own_references_setting(offline_hub, make_cfg, evaluated):
    short = "max_length: 64, generation: {max_new_tokens: 4}"
    cfg = make_cfg([f"tasks=[{{task: e2e_nlg, {short}}},{{task: xsum, {short}}}]", *TINY_GENERATION_RUN])
    summary = run(cfg)
    assert summary["references"] == {"e2e_nlg": {"validation": {"sources": 4, "references": 8},
                                                 "test": {"sources": 4, "references": 8}}, "xsum": None}
    rows = [json.loads(line) for line in (Path(cfg.paths.output_dir) / "test_predictions.jsonl").open()]
    e2e, xsum = ([row for row in rows if row["task"] == task] for task in ("e2e_nlg", "xsum"))
    assert len(e2e) == 4 and all(len(row["references"]) == 2 for row in e2e)
    assert len(xsum) == 8 and all(isinstance(row["reference"], str) and "references" not in row for row in xsum)
    assert summary["test"]["e2e_nlg/bleu"] == pytest.approx(
        sacrebleu([r["prediction"] for r in e2e], [r["references"] for r in e2e]), abs=1e-6)
    assert summary["test"]["xsum/bleu"] == pytest.approx(
        sacrebleu([r["prediction"] for r in xsum], [[r["reference"]] for r in xsum]), abs=1e-6)
    record = collect_runs([Path(cfg.paths.output_dir)]).runs[0]
    for task in ("e2e_nlg", "xsum"):
        assert run_outcomes(record, f"test/{task}/bleu").value() == pytest.approx(summary["test"][f"{task}/bleu"],
                                                                                abs=1e-6)


def test_k_fold_keeps_each_sources_references_on_one_side(offline_hub, preset, tiny_backbone, tmp_path):
    task = preset("e2e_nlg")
    data = {"batch_size": 4, "eval_batch_size": 8, "num_workers": 0, "padding_side": "right", "max_samples": {}}
    module = PromptDataModule(task, DataSettings.from_config(data),
                              CVSettings.from_config({"num_folds": 2, "fold": 0, "seed": 0}), Rendering(task.template),
                              tiny_backbone().tokenizer, tmp_path, seed=0)
    module.setup()
    train, validation = module.splits["train"], module.splits["validation"]
    assert len(train) == 4 and not set(train["text"]) & set(validation["text"])
    assert [len(refs) for refs in validation["references"]] == [2, 2]
    assert module.fold_split == {"stratified_by": None, "grouped_by": "source",
                                 "groups": {"train": 2, "validation": 2}}
