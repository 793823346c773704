"""A model folder or hub id that cannot serve is one line naming backbone.name_or_path, what is wrong and what to
do, raised before the weights load: no such folder, no config.json, a hub id that cannot be fetched, a tokenizer
with neither a pad nor an eos token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError

from softprompt.backbones import load_backbone
from softprompt.backbones.loading import (
    FAMILY_MODEL_CLASSES,
    BackboneError,
    check_model_source,
    ensure_pad_token,
    looks_local,
    one_line_load_errors,
)
from softprompt.backbones.tiny_random import byte_level_tokenizer

CONFIG = {"name": "local", "revision": None, "dtype": "float32", "family": "auto", "gradient_checkpointing": False,
          "attention": "auto"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_backbone) -> Path:
    folder = tmp_path_factory.mktemp("saved") / "model"
    backbone = tiny_backbone()
    backbone.model.save_pretrained(folder)
    backbone.tokenizer.save_pretrained(folder)
    return folder


def _copy_without(saved: Path, to: Path, *tokens: str) -> Path:
    """A copy of the saved model whose tokenizer_config.json leaves `tokens` (pad_token, eos_token) out."""
    to.mkdir()
    for file in saved.iterdir():
        (to / file.name).write_bytes(file.read_bytes())
    config = json.loads((to / "tokenizer_config.json").read_text())
    for token in tokens:
        config.pop(token)
    (to / "tokenizer_config.json").write_text(json.dumps(config))
    return to


@pytest.mark.parametrize(("source", "local"), [
    ("/models/x", True), ("./x", True), ("../x", True), ("~/x", True), ("a/b/c", True),
    ("HuggingFaceTB/SmolLM2-135M", False), ("gpt2", False),
])
def test_paths_and_hub_ids_are_told_apart(source, local):
    assert looks_local(source) is local


def test_an_existing_relative_folder_is_local(tmp_path, monkeypatch):
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert looks_local("org/name") and not looks_local("org/other")


def test_a_local_source_must_be_a_saved_model_folder(tmp_path, saved):
    check_model_source(str(saved))
    check_model_source("HuggingFaceTB/SmolLM2-135M")  # hub ids are left to the loader
    with pytest.raises(BackboneError, match=r"^backbone\.name_or_path='[^']*/gone' is invalid: no such folder"):
        check_model_source(str(tmp_path / "gone"))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(BackboneError, match=r"is invalid: it is a file; point it at the model's folder"):
        check_model_source(str(tmp_path / "model.gguf"))
    with pytest.raises(BackboneError, match=r"is invalid: the folder has no config\.json"):
        check_model_source(str(tmp_path))


def test_the_eos_token_pads_when_there_is_no_pad_token(tmp_path, saved):
    folder = _copy_without(saved, tmp_path / "eos_only", "pad_token")
    backbone = load_backbone({**CONFIG, "name_or_path": str(folder)}, tmp_path / "cache")
    assert backbone.tokenizer.pad_token == backbone.tokenizer.eos_token == "<eos>"


def test_a_tokenizer_without_pad_and_eos_is_refused_before_the_weights_load(tmp_path, saved, monkeypatch):
    folder = _copy_without(saved, tmp_path / "no_pad", "pad_token", "eos_token")

    class Unreachable:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise AssertionError("the weights were loaded")

    monkeypatch.setitem(FAMILY_MODEL_CLASSES, "causal_lm", Unreachable)
    with pytest.raises(BackboneError) as raised:
        load_backbone({**CONFIG, "name_or_path": str(folder)}, tmp_path / "cache")
    assert str(raised.value) == (
        f"backbone.name_or_path='{folder}' is invalid: its tokenizer has neither a pad token nor an eos token, and "
        f"batches need one to pad with; set \"pad_token\" in {folder}/tokenizer_config.json to a token of its "
        "vocabulary (its unk token, say)")


def test_a_hub_tokenizer_without_pad_and_eos_points_at_the_model_folder():
    tokenizer = byte_level_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token = None
    with pytest.raises(BackboneError, match=r"set \"pad_token\" in the model folder's tokenizer_config\.json"):
        ensure_pad_token(tokenizer, "backbone.name_or_path", "org/name")
    ensure_pad_token(byte_level_tokenizer(), "backbone.name_or_path", "org/name")  # has one: nothing to do


def test_a_hub_id_that_cannot_be_fetched_says_how_to_work_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneError) as raised:
        load_backbone({**CONFIG, "name_or_path": "softprompt-tests/no-such-model"}, tmp_path / "cache")
    assert str(raised.value) == (
        "backbone.name_or_path='softprompt-tests/no-such-model' is invalid: it could not be fetched from the Hugging "
        "Face hub (no network, or HF_HUB_OFFLINE=1) and is not in the local cache; download it where there is network "
        "(huggingface-cli download softprompt-tests/no-such-model --local-dir FOLDER) and set "
        "backbone.name_or_path=FOLDER, or use the offline default (backbone=smollm2_135m)")


def _raise(error: BaseException) -> None:
    raise error


def _offline() -> None:
    try:
        raise LocalEntryNotFoundError("not in the cache")
    except LocalEntryNotFoundError as error:
        raise OSError("We couldn't connect to 'https://huggingface.co'") from error


def test_loading_errors_become_one_line_naming_the_part():
    weights = r"^backbone\.asset='/x/y' is invalid: its weights could not be loaded " \
              r"\(no file named model\.safetensors\)$"
    with pytest.raises(BackboneError, match=weights), one_line_load_errors("backbone.asset", "/x/y", "weights"):
        _raise(OSError("no file named model.safetensors.\nmore detail"))
    tokenizer = r"its tokenizer could not be loaded \(bad\); the model folder needs its tokenizer's files"
    with pytest.raises(BackboneError, match=tokenizer), one_line_load_errors("backbone.name_or_path", "/x/y",
                                                                             "tokenizer"):
        _raise(ValueError("bad:"))
    with pytest.raises(BackboneError, match=r"could not be fetched from the Hugging Face hub"), \
            one_line_load_errors("backbone.name_or_path", "org/name", "config.json"):
        _offline()
    with pytest.raises(KeyError), one_line_load_errors("backbone.name_or_path", "org/name", "config.json"):
        _raise(KeyError("x"))  # not a loading error: passes through
