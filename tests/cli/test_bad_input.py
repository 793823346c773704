"""Bad input to softprompt-train, one table that grows: every refusal (a config value, a data file or what it
holds, a model folder or hub id) is exit status 2 and one line on stderr, `softprompt: error: ...` naming the key,
with no traceback and nothing written to the run's output dir. Rows run the real CLI entry in-process; a check
that fails does so before anything loads, so most rows take about a second."""

from __future__ import annotations

import copy
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softprompt.errors import SoftPromptError

POSITIVE = ["a wonderful film", "great fun", "a joy", "superb", "lovely and smart", "brilliant acting"]
NEGATIVE = ["a dull mess", "boring", "a chore", "awful", "flat and cold", "tedious and dumb"]
ROWS = [{"review": text, "sentiment": label} for pair in zip(POSITIVE, NEGATIVE, strict=True)
        for text, label in zip(pair, ("positive", "negative"), strict=True)]
ARTICLES = [{"body": f"Article number {i} about the markets.", "title": f"Markets {i}"} for i in range(8)]
RWKV = "{model_type: rwkv, hidden_size: 32, num_hidden_layers: 2, attention_hidden_size: 32, " \
       "intermediate_size: 64, context_length: 512}"


def _jsonl(path: Path, rows: list) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _csv(path: Path, rows: list[dict]) -> None:
    path.write_text("review,sentiment\n" + "".join(f"{r['review']},{r['sentiment']}\n" for r in rows))


@pytest.fixture(scope="session")
def bad_inputs(tmp_path_factory, tiny_backbone) -> Path:
    """A folder of data files (good ones, and one per way of being bad) and model folders (m_*)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    for split, rows in (("train", ROWS * 2), ("validation", ROWS[:6]), ("test", ROWS[6:])):
        _jsonl(root / f"{split}.jsonl", rows)
        _csv(root / f"{split}.csv", rows)
    _jsonl(root / "articles.jsonl", ARTICLES)
    (root / "folder.jsonl").mkdir()
    (root / "unreadable.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (root / "unreadable.jsonl").chmod(0)
    (root / "empty.jsonl").write_text("")
    (root / "blank.jsonl").write_text("\n  \n\t\n")
    (root / "header_only.csv").write_text("review,sentiment\n")
    (root / "unterminated.csv").write_text('review,sentiment\ngreat fun,positive\n"a chore,negative\nboring,negative\n')
    (root / "extra_field.csv").write_text("review,sentiment\ngreat fun,positive\na chore,negative,!\n")
    (root / "malformed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]) + '{"review": "x", \n')
    _jsonl(root / "float_labels.jsonl", [{**r, "sentiment": 0.5 + i} for i, r in enumerate(ROWS)])
    _jsonl(root / "list_labels.jsonl", [{**r, "sentiment": [0, 1]} for r in ROWS])
    _jsonl(root / "unknown_labels.jsonl", [*ROWS, {"review": "so-so", "sentiment": "neutral"}])
    _jsonl(root / "index_labels.jsonl", [{**r, "sentiment": i % 3} for i, r in enumerate(ROWS)])
    _jsonl(root / "no_labels.jsonl", [{**r, "sentiment": None} if i in (2, 5) else r for i, r in enumerate(ROWS)])
    _jsonl(root / "empty_texts.jsonl", [{**r, "review": ""} if i in (1, 4, 7) else r for i, r in enumerate(ROWS)])
    _jsonl(root / "blank_texts.jsonl", [{**r, "review": " \n\t"} if i == 0 else r for i, r in enumerate(ROWS)])
    _jsonl(root / "rare_label.jsonl", [r for r in ROWS * 2 if r["sentiment"] == "positive"] + ROWS[1:4:2])
    _jsonl(root / "three_movies.jsonl", [{**r, "movie": f"m{i % 3}"} for i, r in enumerate(ROWS * 2)])
    _jsonl(root / "two_rotten_movies.jsonl",  # the negatives in 2 movies, the positives in 6
           [{**r, "movie": f"{r['sentiment']}{i // 2 % (2 if r['sentiment'] == 'negative' else 6)}"}
            for i, r in enumerate(ROWS * 2)])
    _jsonl(root / "some_empty_targets.jsonl", [{**a, "title": ""} if i in (0, 3) else a
                                               for i, a in enumerate(ARTICLES)])
    _jsonl(root / "no_targets.jsonl", [{**a, "title": "  "} for a in ARTICLES])
    backbone = tiny_backbone()
    for name in ("m_nopad", "m_noweights"):
        backbone.model.save_pretrained(root / name)
        backbone.tokenizer.save_pretrained(root / name)
    config = json.loads((root / "m_nopad" / "tokenizer_config.json").read_text())
    config.pop("pad_token"), config.pop("eos_token")
    (root / "m_nopad" / "tokenizer_config.json").write_text(json.dumps(config))
    (root / "m_noweights" / "model.safetensors").unlink()
    (root / "m_noconfig").mkdir()
    (root / "m_noconfig" / "weights.bin").write_bytes(b"\0")
    return root


@dataclass(frozen=True)
class Bad:
    """One kind of bad input: overrides on top of the local sentiment task ({d}: the bad_inputs folder) and the
    message the one line must start with (a regex, after `softprompt: error: `)."""

    name: str
    overrides: dict[str, str]
    message: str


def files(train: str, validation: str = "validation.jsonl", test: str = "test.jsonl", path: str = "json"
          ) -> dict[str, str]:
    return {"task.source.path": path,
            "task.source.data_files": f"{{train: {{d}}/{train}, validation: {{d}}/{validation}, test: {{d}}/{test}}}"}


def csv_files(train: str) -> dict[str, str]:
    return files(train, "validation.csv", "test.csv", path="csv")


HEADLINES = {"task": "bbc_headline", "task.columns": "{text: body, target: title}",
             **files("articles.jsonl", "articles.jsonl", "articles.jsonl")}
FILE = r"task\.source\.data_files\.train='[^']*/"

CONFIG_ROWS = [
    Bad("unknown method.init", {"method.init": "glove"}, r"method\.init='glove' is invalid: allowed: random_uniform"),
    Bad("negative prompt length", {"method.num_virtual_tokens": "-3"}, r"method\.num_virtual_tokens=-3 .*>= 1"),
    Bad("non-numeric prompt length", {"method.num_virtual_tokens": "many"},
        r"method\.num_virtual_tokens='many' is invalid: must be an integer"),
    Bad("NaN learning rate", {"optimizer.lr": "nan"}, r"optimizer\.lr=nan is invalid: must be a finite number > 0"),
    Bad("negative learning rate", {"optimizer.lr": "-0.1"}, r"optimizer\.lr=-0\.1 is invalid"),
    Bad("cv.fold out of range", {"cv.num_folds": "5", "cv.fold": "5"}, r"cv\.fold=5 is invalid: .*\[0, 5\)"),
    Bad("a single fold", {"cv.num_folds": "1"}, r"cv\.num_folds=1 is invalid: must be null .* or >= 2"),
    Bad("unknown cv.mode", {"cv.mode": "each"}, r"cv\.mode='each' is invalid: allowed: single"),
    Bad("zero batch size", {"data.batch_size": "0"}, r"data\.batch_size=0 is invalid: must be an integer >= 1"),
    Bad("negative eval batch size", {"data.eval_batch_size": "-1"}, r"data\.eval_batch_size=-1 is invalid"),
    Bad("unknown padding side", {"data.padding_side": "middle"}, r"data\.padding_side='middle' .*left, right"),
    Bad("a zero sample limit", {"data.max_samples.train": "0"}, r"data\.max_samples\.train=0 is invalid"),
    Bad("16-mixed on CPU", {"trainer.precision": "16-mixed"}, r"trainer\.precision='16-mixed' .*no float16 autocast"),
    Bad("unknown precision", {"trainer.precision": "64"}, r"trainer\.precision=64 is invalid: allowed: auto"),
    Bad("zero steps", {"trainer.max_steps": "0"}, r"trainer\.max_steps=0 is invalid: must be -1"),
    Bad("unknown attention backend", {"backbone.attention": "flash9"}, r"backbone\.attention='flash9' .*auto, sdpa"),
    Bad("unknown dtype", {"backbone.dtype": "float8"}, r"backbone\.dtype='float8' is invalid: allowed: float32"),
    Bad("unknown family", {"backbone.family": "decoder"}, r"backbone\.family='decoder' is invalid: allowed: auto"),
    Bad("unknown loss", {"task.loss": "hinge"}, r"task\.loss='hinge' is invalid: a classification task trains"),
    Bad("a generation metric on classification", {"task.metric": "bleu"}, r"task\.metric='bleu' is invalid"),
    Bad("zero max_length", {"task.max_length": "0"}, r"task\.max_length=0 is invalid: must be an integer >= 1"),
    Bad("a single label", {"task.labels": "[positive]"}, r"task\.labels=\['positive'\] .*at least two label"),
    Bad("unknown scheduler", {"optimizer.scheduler.name": "wavy"}, r"optimizer\.scheduler\.name='wavy' .*linear"),
    Bad("a warmup the scheduler ignores", {"optimizer.scheduler.name": "constant",
                                           "optimizer.scheduler.warmup_steps": "10"},
        r"optimizer\.scheduler\.warmup_steps=10 is invalid: scheduler constant has no warmup"),
    Bad("init=text without a text", {"method.init": "text", "method.init_text": "null"},
        r"method\.init_text=None is invalid: init=text needs a non-empty text"),
]

DATA_ROWS = [
    Bad("missing data file", files("nope.jsonl"), FILE + r"nope\.jsonl' is invalid: no such file"),
    Bad("a folder as data file", files("folder.jsonl"), FILE + r"folder\.jsonl' is invalid: it is a folder"),
    Bad("unreadable data file", files("unreadable.jsonl"),
        FILE + r"unreadable\.jsonl' is invalid: it cannot be read \(Permission denied\)"),
    Bad("empty data file", files("empty.jsonl"), FILE + r"empty\.jsonl' is invalid: the file is empty \(0 bytes\)"),
    Bad("whitespace-only data file", files("blank.jsonl"), FILE + r"blank\.jsonl' is invalid: .*only whitespace"),
    Bad("CSV with only a header", csv_files("header_only.csv"),
        FILE + r"header_only\.csv' is invalid: the CSV file has a header row but no examples"),
    Bad("CSV with an unterminated quote", csv_files("unterminated.csv"),
        FILE + r"unterminated\.csv' is invalid: line 3 opens a quoted field that is never closed"),
    Bad("CSV row with an extra field", csv_files("extra_field.csv"),
        FILE + r"extra_field\.csv' is invalid: line 3 has 3 fields where the header \(line 1\) has 2"),
    Bad("malformed JSON Lines", files("malformed.jsonl"),
        FILE + r"malformed\.jsonl' is invalid: line 4 is not valid JSON"),
    Bad("path=csv on JSON Lines", files("train.jsonl", path="csv"),
        FILE + r"train\.jsonl' is invalid: task\.source\.path=csv expects CSV .*set task\.source\.path=json"),
    Bad("path=json on CSV", files("train.csv", "validation.csv", "test.csv"),
        FILE + r"train\.csv' is invalid: task\.source\.path=json expects JSON Lines.*set task\.source\.path=csv"),
    Bad("a hub dataset offline", {"task.source.path": "softprompt-tests/no-such-dataset", "task.source.data_files":
                                  "null"},
        r"task\.source\.path='softprompt-tests/no-such-dataset' is invalid: it could not be fetched from the Hugging "
        r"Face hub .* set task\.source\.path=json \(or csv\) and task\.source\.data_files to local files"),
    Bad("unmapped column", {"task.columns": "{text: body, label: sentiment}"},
        r"task\.columns\.text='body' is invalid: dataset columns are \['review', 'sentiment'\] in the train split"),
    Bad("unknown split name", {"task.splits.validation": "dev"}, r"task\.splits\.validation='dev' is invalid"),
    Bad("label types that differ between files", files("float_labels.jsonl"),
        r"task\.source\.data_files='[^']*float_labels\.jsonl, .*' is invalid: datasets could not read them as json "
        r"\(.*\); the splits' files must hold the same columns with the same types"),
    Bad("float labels", files(*["float_labels.jsonl"] * 3),
        r"task\.columns\.label='sentiment' is invalid: the train split \([^)]*float_labels\.jsonl\) has float labels"),
    Bad("list labels", files(*["list_labels.jsonl"] * 3), r"task\.columns\.label='sentiment' .* has list labels"),
    Bad("labels outside task.labels", files("unknown_labels.jsonl"),
        r"task\.labels=\['negative', 'positive'\] is invalid: the train split \([^)]*unknown_labels\.jsonl\) has "
        r"labels \['neutral'\] that are not listed"),
    Bad("label indices out of range", files(*["index_labels.jsonl"] * 3),
        r"task\.columns\.label='sentiment' is invalid: the train split .* has label indices \[2\] outside \[0, 2\)"),
    Bad("missing labels", files("no_labels.jsonl"),
        r"task\.columns\.label='sentiment' is invalid: 2 of 12 examples of the train split .* have no label "
        r"\(examples #3, #6, counting from 1\)"),
    Bad("empty texts", files("empty_texts.jsonl"),
        r"task\.columns\.text='review' is invalid: 3 of 12 examples of the train split \([^)]*empty_texts\.jsonl\) "
        r"have an empty or whitespace-only text \(examples #2, #5, #8, counting from 1\)"),
    Bad("whitespace-only texts", files("train.jsonl", "blank_texts.jsonl"),
        r"task\.columns\.text='review' is invalid: 1 of 12 examples of the validation split .* \(examples #1,"),
    Bad("fewer examples than folds", {"cv.num_folds": "30"},
        r"cv\.num_folds=30 is invalid: the train split \([^)]*train\.jsonl\) has 24 examples, fewer than the 30 "
        r"folds; lower cv\.num_folds"),
    Bad("a label rarer than the folds", {**files("rare_label.jsonl"), "cv.num_folds": "3"},
        r"cv\.num_folds=3 is invalid: label 'negative' has 2 examples in the train split .* fewer than the 3 folds"),
    Bad("a group column not in the data", {"cv.num_folds": "2", "task.columns.group": "movie"},
        r"task\.columns\.group='movie' is invalid: dataset columns are \['review', 'sentiment'\] in the train split "
        r"\([^)]*train\.jsonl\); map it to one of them, or set task\.columns\.group=null \(folds by label only\)"),
    Bad("fewer groups than folds", {**files("three_movies.jsonl"), "cv.num_folds": "4", "task.columns.group": "movie"},
        r"cv\.num_folds=4 is invalid: the train split \([^)]*three_movies\.jsonl\) has 3 groups, fewer than the 4 "
        r"folds \(folds are grouped by task\.columns\.group\); lower cv\.num_folds or add groups"),
    Bad("a label in fewer groups than folds", {**files("two_rotten_movies.jsonl"), "cv.num_folds": "3",
                                               "task.columns.group": "movie"},
        r"cv\.num_folds=3 is invalid: label 'negative' occurs in 2 groups of the train split .* fewer than the 3 "
        r"folds, .*; lower cv\.num_folds to 2 or less, or add groups with that label"),
    Bad("some empty generation targets", {**HEADLINES, **files("some_empty_targets.jsonl", "articles.jsonl",
                                                               "articles.jsonl")},
        r"task\.columns\.target='title' is invalid: 2 of 8 examples of the train split .* have an empty or "
        r"whitespace-only target \(examples #1, #4"),
    Bad("no generation targets", {**HEADLINES, **files("articles.jsonl", "no_targets.jsonl", "articles.jsonl")},
        r"task\.columns\.target='title' is invalid: 8 of 8 examples of the validation split"),
]

MODEL_ROWS = [
    Bad("no such model folder", {"backbone.name_or_path": "{d}/nowhere/model"},
        r"backbone\.name_or_path='[^']*/nowhere/model' is invalid: no such folder"),
    Bad("model folder without config.json", {"backbone.name_or_path": "{d}/m_noconfig"},
        r"backbone\.name_or_path='[^']*/m_noconfig' is invalid: the folder has no config\.json"),
    Bad("model folder without weights", {"backbone.name_or_path": "{d}/m_noweights"},
        r"backbone\.name_or_path='[^']*/m_noweights' is invalid: its weights could not be loaded"),
    Bad("hub id offline", {"backbone.name_or_path": "softprompt-tests/no-such-model"},
        r"backbone\.name_or_path='softprompt-tests/no-such-model' is invalid: it could not be fetched from the "
        r"Hugging Face hub .* set backbone\.name_or_path=FOLDER, or use the offline default"),
    Bad("tokenizer without pad and eos", {"backbone.name_or_path": "{d}/m_nopad"},
        r"backbone\.name_or_path='[^']*/m_nopad' is invalid: its tokenizer has neither a pad token nor an eos "
        r"token.*m_nopad/tokenizer_config\.json"),
    Bad("an architecture a prefix cannot reach", {"method": "prefix_tuning", "~backbone.random_init.config": "",
                                                  "+backbone.random_init.config": RWKV},
        r"prefix methods cannot serve RwkvForCausalLM: .* reaches 0 of 2 self-attention layers"),
]

BASE = {"backbone": "tiny_random", "callbacks": "none", "logger": "none", "task.name": "local",
        "task.source.asset": "null", "task.columns": "{text: review, label: sentiment, group: null}",
        **files("train.jsonl"), "trainer.max_steps": "2"}
LOADING_FROM = {"backbone.random_init": "null"}  # a row with name_or_path loads from it


def command(row: Bad, data_dir: Path, run_dir: Path) -> list[str]:
    overrides = {**BASE, **(LOADING_FROM if "backbone.name_or_path" in row.overrides else {}), **row.overrides}
    args = [key if key.startswith("~") else f"{key}={value}" for key, value in overrides.items()]
    return [arg.replace("{d}", str(data_dir)) for arg in args] + [f"hydra.run.dir={run_dir}"]


def test_the_table_covers_thirty_kinds_of_bad_input():
    names = [row.name for row in CONFIG_ROWS + DATA_ROWS + MODEL_ROWS]
    assert len(set(names)) == len(names) >= 30


@pytest.mark.parametrize("row", CONFIG_ROWS + DATA_ROWS + MODEL_ROWS, ids=lambda row: row.name)
def test_bad_input_is_one_line_and_exit_status_2(row, bad_inputs, run_as_main, capfd, tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    # Offline: no retries against a network that may be missing, and the same message where there is one.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    if "unreadable" in row.name and os.geteuid() == 0:  # root reads any file: the OS refusal is simulated
        import softprompt.data.validation as validation

        real = validation.read_head

        def refuse(path: Path, *args):
            if path.name == "unreadable.jsonl":
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *args)

        monkeypatch.setattr(validation, "read_head", refuse)
    run_dir = tmp_path / "run"
    status = run_as_main("softprompt.cli.train", *command(row, bad_inputs, run_dir))
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2, captured.err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("softprompt: error: "), lines
    assert re.match(row.message, lines[0].removeprefix("softprompt: error: ")), lines[0]
    assert "Traceback" not in captured.err + captured.out
    left = {"metrics.json", "checkpoints", "prompt", "test_predictions.jsonl", "failed.json"}
    assert not [name for name in left if (run_dir / name).exists()]


# --------------------------------------------------------------- random bad values through check_config

KEYS = {  # key -> values that may be valid or not, beside the random ones
    "method.num_virtual_tokens": [0, 1, 20, -1], "method.lr": [0.3, 0.0, -1.0], "optimizer.lr": [0.01, 0.0],
    "data.batch_size": [1, 0, -4], "data.eval_batch_size": [8, 0], "data.length_group_batches": [1, 0],
    "cv.num_folds": [None, 2, 5, 1, 0], "cv.fold": [0, 4, 5, -1], "cv.mode": ["single", "all", "each"],
    "trainer.max_steps": [-1, 1, 0, -2], "method.init": ["vocab", "text", "class_labels", "glove"],
    "task.loss": ["verbalizer", "lm", "hinge"], "task.metric": ["acc", "f1", "bleu"],
    "backbone.dtype": ["float32", "bfloat16", "float16", "float8"], "backbone.attention": ["auto", "math", "flash"],
    "backbone.family": ["auto", "masked_lm", "decoder"], "trainer.precision": ["auto", "32-true", "bf16-mixed",
                                                                              "16-mixed", "64", 16, 32],
    "data.padding_side": ["left", "right", "middle"], "data.group_by_length": [True, False, "yes"],
    "task.max_length": [1, 128, 0], "optimizer.scheduler.name": ["linear", "constant", "wavy"],
    "optimizer.scheduler.warmup_steps": [0, 10, -1],
}
ANY_VALUE = st.one_of(st.integers(-3, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                      st.none(), st.booleans(), st.lists(st.integers(-1, 3), max_size=2))


@st.composite
def bad_settings(draw) -> dict[str, object]:
    keys = draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=3, unique=True))
    return {key: draw(st.one_of(st.sampled_from(KEYS[key]), ANY_VALUE)) for key in keys}


@pytest.fixture
def plain_config(make_cfg, tiny_overrides, local_task_overrides) -> Callable[[], dict]:
    from softprompt.training.job import resolved_config

    plain = resolved_config(make_cfg([*tiny_overrides, *local_task_overrides]))
    return lambda: copy.deepcopy(plain)


def _set(config: dict, key: str, value: object) -> None:
    *parents, last = key.split(".")
    for part in parents:
        config = config[part]
    config[last] = value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=bad_settings())
def test_random_bad_values_are_one_error_naming_their_key_or_valid(plain_config, changes):
    from softprompt.training.checks import check_config

    config = plain_config()
    for key, value in changes.items():
        _set(config, key, value)
    try:
        check_config(config)
    except SoftPromptError as error:
        message = str(error)
        assert "\n" not in message
        assert any(message.startswith(f"{key}=") or f" {key}=" in message for key in changes), (changes, message)
        return
    # Accepted: then every changed value is one a run can use.
    lr = config["optimizer"]["lr"]
    assert isinstance(lr, int | float) and not isinstance(lr, bool) and 0 < lr < math.inf
    for key in ("data.batch_size", "data.eval_batch_size"):
        value = config["data"][key.split(".")[1]]
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 1
