"""softprompt-export and softprompt-import: a run's prompt as a PEFT adapter and back, and one-line errors."""

from __future__ import annotations

import json

import pytest

import softprompt
from softprompt.artifacts.peft import PEFT_CONFIG_FILE
from softprompt.cli import exchange

TEXTS = ["great fun", "a dull mess that goes on and on", {"review": "superb"}]  # by the task's dataset column too


def test_cli_export_then_import_and_one_line_errors(trained_run, tmp_path, capsys, run_as_main):
    prompt, hard = trained_run("prefix_tuning").prompt, trained_run("hard_prompt").prompt
    capsys.readouterr()  # what training printed, when this test was the first to need the runs
    assert run_as_main("softprompt.cli.exchange", "export", f"prompt={prompt}", "format=peft",
                       f"out={tmp_path / 'adapter'}") == 0
    assert capsys.readouterr().out.startswith(f"softprompt-export: {prompt} -> {tmp_path / 'adapter'} (PEFT adapter")
    assert json.loads((tmp_path / "adapter" / PEFT_CONFIG_FILE).read_text())["peft_type"] == "PREFIX_TUNING"
    exchange.import_main(["format=peft", f"dir={tmp_path / 'adapter'}", f"out={tmp_path / 'back'}"])
    assert capsys.readouterr().out.startswith("softprompt-import: ")
    assert softprompt.load(tmp_path / "back").predict(TEXTS) == softprompt.load(prompt).predict(TEXTS)

    cases = [
        (exchange.export_main, [f"prompt={prompt}", "format=onnx", f"out={tmp_path / 'x'}"],
         "softprompt-export: error: format='onnx' is invalid: allowed: peft"),
        (exchange.export_main, [f"prompt={hard}", "format=peft", f"out={tmp_path / 'x'}"],
         "softprompt-export: error: hard_prompt has no trained tensors: there is nothing to export (its template "
         "and demonstrations are in softprompt.json)"),
        (exchange.export_main, [f"prompt={prompt}", "format=peft", f"out={tmp_path / 'adapter'}"],
         f"softprompt-export: error: out='{tmp_path / 'adapter'}' exists and is not an empty folder"),
        (exchange.import_main, ["format=peft", f"dir={tmp_path / 'nope'}", f"out={tmp_path / 'x'}"],
         f"softprompt-import: error: dir='{tmp_path / 'nope'}': no such file or folder"),
        (exchange.import_main, [f"dir={tmp_path / 'adapter'}", f"out={tmp_path / 'x'}"],
         "softprompt-import: error: missing format=... (format=... dir=... out=... [task=...] [backbone=...] "
         "[cache_dir=...])"),
    ]
    for main, argv, line in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and capsys.readouterr().err.splitlines() == [line]
    assert not (tmp_path / "x").exists()
