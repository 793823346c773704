"""softprompt-predict on bad input: one line naming `file:line`, exit status 2, every input checked before the first
prediction, and no output file (not even part of one), also when an old one is there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from softprompt.artifacts.predictor import Predictor
from softprompt.cli import predict
from softprompt.config import atomic

GOOD = [{"review": "great fun"}, {"text": "a dull mess"}, "superb"]


def run_predict(capsys, prompt: Path, inputs: Path, output: Path) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([f"prompt={prompt}", f"input={inputs}", f"output={output}"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert captured.err.count("\n") == 1 and captured.err.startswith("softprompt-predict: error: "), captured.err
    return captured.err.strip().removeprefix("softprompt-predict: error: ")


def lines_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_bad_input_lines_are_named_by_file_and_line_and_nothing_is_written(trained_run, tmp_path, capsys,
                                                                          monkeypatch):
    prompt = trained_run("prompt_tuning").prompt
    good = [json.dumps(row) for row in GOOD]
    output = tmp_path / "preds.jsonl"
    output.write_text("an old file\n")
    predicted = []
    real = Predictor.predict_records
    monkeypatch.setattr(Predictor, "predict_records", lambda self, texts: predicted.append(texts) or real(self, texts))

    cases = {  # the bad line comes last: nothing may be predicted before every line was checked
        "malformed": ([*good, "", '{"text": "unclosed'],
                      "{file}:5 is not JSON (Unterminated string starting at: line 1 column 10 (char 9)); expected "
                      "one JSON object (or string) per line"),
        "a list": ([*good, "[1, 2]"],
                   "{file}:4 is a JSON list; expected an object with the text field(s), or a string"),
        "no text field": ([*good, '{"title": "x", "body": "y"}'],
                          "{file}:4 has no 'text' or 'review' key (its keys: title, body)"),
        "empty": ([], "input='{file}' holds no inputs (it is empty or blank); expected one JSON object per line"),
        "blank": (["", "  "], "input='{file}' holds no inputs (it is empty or blank); expected one JSON object per "
                              "line"),
    }
    for name, (lines, expected) in cases.items():
        inputs = lines_file(tmp_path / f"{name.replace(' ', '_')}.jsonl", lines)
        message = run_predict(capsys, prompt, inputs, output)
        assert message == ("input " if "{file}:" in expected else "") + expected.format(file=inputs), name
    assert predicted == []
    assert output.read_text() == "an old file\n"


def test_predictions_are_written_whole_or_not_at_all(trained_run, tmp_path, capsys, monkeypatch, write_jsonl):
    run = trained_run("prompt_tuning")
    inputs = Path(write_jsonl(tmp_path / "in.jsonl", GOOD))
    output = tmp_path / "out" / "preds.jsonl"

    def no_space(temporary: Path, path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "_commit", no_space)
    with pytest.raises(OSError, match="No space left"):
        predict.main([f"prompt={run.prompt}", f"input={inputs}", f"output={output}"])
    assert list(output.parent.iterdir()) == []  # neither the file nor its temporary

    monkeypatch.undo()
    predict.main([f"prompt={run.prompt}", f"input={inputs}", f"output={output}"])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["row_index"] for row in rows] == [0, 1, 2] and list(output.parent.iterdir()) == [output]
