"""Broken prompt/ folders are refused in one line naming the file, what is wrong and what was expected, by
softprompt.load, every CLI that reads them and init=from_artifact; and a prompt/ folder is written all or nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import softprompt
from softprompt.artifacts.format import (
    DIGEST_KEY,
    FORMAT_VERSION,
    SPEC_FILE,
    TENSORS_FILE,
    ArtifactError,
    read_spec,
    write_artifact,
)
from softprompt.cli import exchange, predict
from softprompt.cli import inspect as inspect_prompt
from softprompt.config import atomic
from softprompt.errors import ConfigError
from softprompt.training.run import run

TEXTS = ["great fun", "a dull mess"]


def copy_of(prompt: Path, to: Path) -> Path:
    return Path(shutil.copytree(prompt, to))


def edit_spec(directory: Path, change: Callable[[dict], None]) -> Path:
    spec = json.loads((directory / SPEC_FILE).read_text())
    change(spec)
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    return directory


def refusal(directory: Path) -> str:
    with pytest.raises(ArtifactError) as error:
        softprompt.load(directory)
    message = str(error.value)
    assert "\n" not in message
    return message


def cli_errors(capsys, tmp_path: Path, directory: Path, inputs: str) -> dict[str, str]:
    """softprompt-predict, -inspect and -export on `directory`: each must exit 2 with one line and write nothing."""
    calls = {
        "softprompt-predict": lambda: predict.main([f"prompt={directory}", f"input={inputs}",
                                                    f"output={tmp_path / 'preds.jsonl'}"]),
        "softprompt-inspect": lambda: inspect_prompt.main([f"prompt={directory}"]),
        "softprompt-export": lambda: exchange.export_main([f"prompt={directory}", "format=peft",
                                                           f"out={tmp_path / 'adapter'}"]),
    }
    lines = {}
    for prog, call in calls.items():
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            call()
        captured = capsys.readouterr()
        assert exit_info.value.code == 2, prog
        assert captured.err.count("\n") == 1 and captured.err.startswith(f"{prog}: error: "), captured.err
        lines[prog] = captured.err.strip().removeprefix(f"{prog}: error: ")
    assert not (tmp_path / "preds.jsonl").exists() and not (tmp_path / "adapter").exists()
    return lines


def test_a_truncated_or_edited_tensors_file_is_refused_in_one_line_everywhere(trained_run, tmp_path, capsys,
                                                                              write_jsonl, make_cfg, tiny_overrides,
                                                                              local_task_overrides):
    prompt = trained_run("prompt_tuning").prompt
    truncated = copy_of(prompt, tmp_path / "truncated")
    data = (prompt / TENSORS_FILE).read_bytes()
    (truncated / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    message = refusal(truncated)
    assert message.startswith(f"{truncated / TENSORS_FILE} ({len(data) // 2} bytes) has sha256 ")
    assert message.endswith(f"but {SPEC_FILE} records {read_spec(prompt)[DIGEST_KEY][:16]}...: the file is truncated "
                            "or was edited; restore it or rerun the job")

    edited = copy_of(prompt, tmp_path / "edited")  # one bit of one number flipped, the size unchanged
    (edited / TENSORS_FILE).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert "the file is truncated or was edited" in refusal(edited)

    inputs = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    lines = cli_errors(capsys, tmp_path, truncated, inputs)
    assert set(lines.values()) == {message}

    cfg = make_cfg([*tiny_overrides, *local_task_overrides, "method.num_virtual_tokens=3", "method.init=from_artifact",
                    f"method.init_artifact={truncated}"])
    with pytest.raises(ConfigError) as error:
        run(cfg)
    assert str(error.value) == f"method.init_artifact='{truncated}' is invalid: {message}"


def test_a_prompt_without_a_digest_still_loads_and_a_cut_one_is_refused(trained_run, tmp_path):
    """Prompts written before format 3 carry no sha256: they load; cut, safetensors' own error is one line."""
    prompt = trained_run("prompt_tuning").prompt
    old = edit_spec(copy_of(prompt, tmp_path / "v2"), lambda s: (s.pop(DIGEST_KEY), s.update(format_version=2)))
    assert softprompt.load(old).score(TEXTS) == softprompt.load(prompt).score(TEXTS)
    data = (old / TENSORS_FILE).read_bytes()
    (old / TENSORS_FILE).write_bytes(data[:-7])
    message = refusal(old)  # safetensors' own words in the parentheses
    assert message.startswith(f"{old / TENSORS_FILE} is not a readable safetensors file (Error while deserializing")
    assert message.endswith("); the file is truncated or was edited")


def future(spec: dict) -> None:
    spec["format_version"] = FORMAT_VERSION + 1


# (what is changed, the edit, the start of the one line after `<folder>/softprompt.json`)
SPEC_EDITS = {
    "not JSON": (None, " is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                       "(char 1)); expected the softprompt.json a run writes"),
    "a list": ([1, 2], " is not a softprompt artifact spec: it holds a JSON list; expected an object with format "
                       "'softprompt-artifact'"),
    "from the future": (future, f" has format_version {FORMAT_VERSION + 1}, from a newer softprompt; this softprompt "
                                f"reads format versions 1 to {FORMAT_VERSION}: upgrade softprompt (pip install -U "
                                "softprompt)"),
    "no fingerprint": (lambda s: s["backbone"].pop("fingerprint"),
                       " lacks the field backbone.fingerprint (the fingerprint of its frozen weights); the file is "
                       "incomplete or was edited"),
    "no digest": (lambda s: s.pop(DIGEST_KEY), f" lacks the field {DIGEST_KEY} (the sha256 of {TENSORS_FILE}); the "
                                               "file is incomplete or was edited"),
    "a length as text": (lambda s: s.update(num_virtual_tokens="3"),
                         ": num_virtual_tokens is '3'; expected the prompt length (int)"),
    "another method's name": (lambda s: s["method"].update(name="prefix_tuning"),
                              ": method.name is 'prefix_tuning' but method.config.name is 'prompt_tuning'; they must "
                              "agree"),
    "another length": (lambda s: s.update(num_virtual_tokens=5),
                       ": num_virtual_tokens is 5 but method.config.num_virtual_tokens is 3; they must agree"),
    "a bad task": (lambda s: s["task"].update(type="regression"),
                   ": task.type='regression' is invalid: allowed: classification, generation"),
}


@pytest.mark.parametrize("edit", list(SPEC_EDITS))
def test_a_broken_spec_is_refused_naming_the_file_and_what_was_expected(trained_run, tmp_path, edit):
    directory = copy_of(trained_run("prompt_tuning").prompt, tmp_path / "prompt")
    change, expected = SPEC_EDITS[edit]
    if change is None:
        (directory / SPEC_FILE).write_text("{not json")
    elif not callable(change):
        (directory / SPEC_FILE).write_text(json.dumps(change))
    else:
        edit_spec(directory, change)
    assert refusal(directory) == f"{directory / SPEC_FILE}{expected}"


def test_a_spec_that_contradicts_its_tensors_is_refused(trained_run, tmp_path):
    prompt, prefix = trained_run("prompt_tuning").prompt, trained_run("prefix_tuning").prompt
    tensors = copy_of(prompt, tmp_path / "listing")
    edit_spec(tensors, lambda s: s.update(tensors={"prefix": s["tensors"]["prompt"]}))
    assert refusal(tensors) == f"{tensors / TENSORS_FILE} holds the tensors ['prompt']; {SPEC_FILE} lists ['prefix']"
    shapes = copy_of(prompt, tmp_path / "shapes")
    edit_spec(shapes, lambda s: s["tensors"]["prompt"].update(shape=[5, 32]))
    assert refusal(shapes) == (f"{shapes / TENSORS_FILE}: prompt has shape [3, 32] (float32); {SPEC_FILE} records "
                               "[5, 32] (float32)")
    # A prefix method's spec over a prompt's tensors: consistent files, but not what that method stores.
    method = copy_of(prompt, tmp_path / "method")
    prefix_method = read_spec(prefix)["method"]
    edit_spec(method, lambda s: s.update(method=prefix_method))
    assert refusal(method) == (f"{method / TENSORS_FILE} holds the tensors ['prompt']; prefix_tuning on backbone "
                               "tiny_random stores ['prefix']")


def test_tensors_that_do_not_fit_the_backbone_are_refused_with_its_geometry(trained_run, tmp_path, capsys,
                                                                           write_jsonl):
    """Hidden size (an input-level prompt) and layer count (a prefix): the spec and digest agree, the backbone not."""
    cases = {"prompt_tuning": ("prompt", [3, 16], [3, 32]),  # hidden size 16 instead of 32
             "prefix_tuning": ("prefix", [3, 96], [3, 64])}  # 3 layers x K/V x 2 KV heads x 8 instead of 2 layers
    for method, (key, shape, expected) in cases.items():
        directory = tmp_path / method
        spec = read_spec(trained_run(method).prompt)
        spec["tensors"] = {key: {"shape": shape, "dtype": "float32"}}
        write_artifact(directory, {key: torch.zeros(shape)}, spec)
        assert refusal(directory) == (
            f"{directory / TENSORS_FILE}: {key} has shape {shape}; {method} with num_virtual_tokens=3 on backbone "
            f"tiny_random (hidden size 32, 2 layers) expects {expected}: the prompt was trained on another backbone, "
            "or the file was edited")
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in TEXTS])
    lines = cli_errors(capsys, tmp_path, tmp_path / "prompt_tuning", inputs)
    assert lines["softprompt-predict"] == lines["softprompt-inspect"] == refusal(tmp_path / "prompt_tuning")
    assert lines["softprompt-export"].startswith("PEFT's PROMPT_TUNING on tiny_random holds ")  # its own check


def test_a_truncated_adapter_is_refused_by_softprompt_import(trained_run, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    exchange.export_main([f"prompt={trained_run('prompt_tuning').prompt}", "format=peft", f"out={adapter}"])
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        exchange.import_main(["format=peft", f"dir={adapter}", f"out={tmp_path / 'back'}"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()  # safetensors' own words in the parentheses
    assert len(lines) == 1 and lines[0].startswith(f"softprompt-import: error: {weights} is not a readable "
                                                   "safetensors file (Error while deserializing")
    assert lines[0].endswith("); the file is truncated or was edited")
    assert not (tmp_path / "back").exists()


def test_a_prompt_folder_is_replaced_whole_or_not_at_all(trained_run, tmp_path, monkeypatch):
    source = trained_run("prompt_tuning").prompt
    spec, tensors = read_spec(source), {"prompt": torch.ones(3, 32)}
    directory = copy_of(source, tmp_path / "prompt")
    before = {name: (directory / name).read_bytes() for name in (SPEC_FILE, TENSORS_FILE)}
    stale = tmp_path / ".prompt.tmp-999999"  # what a writer killed earlier left behind
    stale.mkdir()
    (stale / TENSORS_FILE).write_bytes(b"half")

    original = atomic._commit

    def fail_on_the_spec(temporary: Path, path: Path) -> None:
        if path.name == SPEC_FILE:
            raise OSError("disk full")
        original(temporary, path)

    monkeypatch.setattr(atomic, "_commit", fail_on_the_spec)
    with pytest.raises(OSError, match="disk full"):
        write_artifact(directory, tensors, spec)  # the new tensors were written, the spec failed
    assert {name: (directory / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt"]  # no temporaries, the stale one removed
    assert softprompt.load(directory).predict(TEXTS)  # still the old, whole prompt

    monkeypatch.setattr(atomic, "_commit", original)
    write_artifact(directory, tensors, spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt"]
    assert sorted(p.name for p in directory.iterdir()) == [SPEC_FILE, TENSORS_FILE]
    assert torch.equal(softprompt.load(directory).module.prompt.detach(), tensors["prompt"])
