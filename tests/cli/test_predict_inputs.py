"""softprompt-predict input files: a text value must be a string (null, numbers, lists are refused in one line
naming `file:line`, never predicted on as "None" or "3"), and a UTF-8 byte-order mark is accepted, as training
accepts it."""

from __future__ import annotations

import json

import pytest

from softprompt.artifacts.format import ArtifactError
from softprompt.artifacts.predictor import Predictor
from softprompt.cli import predict

ROWS = [{"review": "great fun"}, {"text": "a dull mess"}, "superb"]


def test_an_input_file_with_a_byte_order_mark_reads_as_without_one(tmp_path):
    text = "".join(json.dumps(row) + "\n" for row in ROWS)
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "bom.jsonl"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    assert predict.read_inputs(marked) == predict.read_inputs(plain) == list(zip([1, 2, 3], ROWS, strict=True))


def test_softprompt_predict_predicts_the_same_on_a_file_with_a_byte_order_mark(trained_run, tmp_path):
    prompt = trained_run("prompt_tuning").prompt
    text = "".join(json.dumps(row) + "\n" for row in ROWS)
    outputs = []
    for name, encoding in (("plain", "utf-8"), ("bom", "utf-8-sig")):
        inputs, output = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.preds.jsonl"
        inputs.write_text(text, encoding=encoding)
        predict.main([f"prompt={prompt}", f"input={inputs}", f"output={output}"])
        outputs.append([json.loads(line) for line in output.read_text().splitlines()])
    assert outputs[0] == outputs[1] and len(outputs[0]) == len(ROWS)


NOT_TEXT = {  # the bad line (line 4, after three good ones) -> what the message says of it
    '{"text": null}': "'text': null",
    '{"review": 3}': "'review': 3 (a number)",
    '{"text": 2.5}': "'text': 2.5 (a number)",
    '{"text": true}': "'text': true (a boolean)",
    '{"review": ["a", "b"]}': "'review': [\"a\", \"b\"] (a list)",
    '{"text": {"body": "x"}}': "'text': {\"body\": \"x\"} (an object)",
}


@pytest.mark.parametrize("line", list(NOT_TEXT), ids=list(NOT_TEXT.values()))
def test_a_text_value_that_is_not_a_string_is_refused_naming_file_and_line(line, trained_run, tmp_path, capsys,
                                                                          monkeypatch):
    prompt = trained_run("prompt_tuning").prompt
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in ROWS) + line + "\n")
    output = tmp_path / "preds.jsonl"
    predicted = []
    monkeypatch.setattr(Predictor, "predict_records", lambda self, texts: predicted.append(texts))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        predict.main([f"prompt={prompt}", f"input={inputs}", f"output={output}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert err == (f"softprompt-predict: error: input {inputs}:4 has {NOT_TEXT[line]}; expected a string (the text "
                   "to predict on)\n")
    assert predicted == [] and not output.exists()


def test_the_python_api_refuses_a_null_text_instead_of_predicting_on_none(trained_run):
    from softprompt.artifacts.predictor import load

    predictor = load(trained_run("prompt_tuning").prompt)
    with pytest.raises(ArtifactError, match=r"^input 1 has 'text': null; expected a string"):
        predictor.predict(["great fun", {"text": None}])
    assert predictor.examples([{"review": "great fun"}]) == [{"text": "great fun"}]


def test_a_long_value_is_shortened_in_the_message(trained_run, tmp_path, capsys):
    prompt = trained_run("prompt_tuning").prompt
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"text": list(range(100))}) + "\n")
    output = tmp_path / "out.jsonl"
    with pytest.raises(SystemExit):
        predict.main([f"prompt={prompt}", f"input={inputs}", f"output={output}"])
    err = capsys.readouterr().err
    assert f"input {inputs}:1 has 'text': [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11... (a list); expected" in err
    assert len(err.removeprefix(f"softprompt-predict: error: input {inputs}")) < 120 and not output.exists()
