"""Template braces follow str.format: `{field}` is a placeholder and `{{` / `}}` a literal brace. A brace that
str.format would fail on is refused when the template is parsed (in the config check, before anything loads), in
one line quoting the template as the user wrote it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from softprompt.data.templates import Template, as_written
from softprompt.errors import ConfigError


@pytest.mark.parametrize(("text", "problem"), [
    ("Review: {text} {oops", "the '{' at character 16 is never closed"),
    ("Review: {text} {", "the '{' at character 16 is never closed"),
    ("Review: {text} }", "the '}' at character 16 closes no '{'"),
    ("{text} {{ {answer", "the '{' at character 11 is never closed"),
    ('{"review": {text}}', "the '{' at character 1 meets another '{' before its '}'"),
])
def test_an_unbalanced_brace_is_refused_naming_its_position(text, problem):
    with pytest.raises(ConfigError) as error:
        Template.parse(text, ["text"])
    assert str(error.value).startswith(f"task.template={text!r} is invalid: {problem}; ")
    assert "\n" not in str(error.value)


def test_a_placeholder_with_a_format_spec_is_an_unknown_placeholder():
    with pytest.raises(ConfigError, match=r"unknown placeholder \{text:>5\}; allowed: \{text\}, \{answer\} "
                                          r"\(write \{\{ and \}\} for a literal brace\)"):
        Template.parse("{text:>5}", ["text"])


def test_doubled_braces_are_literal_braces():
    template = Template.parse('{{"review": "{text}"}} {{answer}}{answer}', ["text"])
    assert template.fill({"text": "fine"}) == '{"review": "fine"} {answer}'
    assert template.answer_at_end


@given(st.lists(st.sampled_from(["{", "}", "{text}", "{answer}", "[P:2]", "a", " "]), max_size=12).map("".join))
def test_every_template_parse_accepts_can_be_filled(text):
    try:
        template = Template.parse(text, ["text"])
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    filled = template.fill({"text": "x{y}z"})  # str.format must not fail on what parse accepted
    assert "x{y}z" in filled


@pytest.mark.parametrize(("template", "written"), [
    ("[P:20]Review: {text}", ("task.template", "Review: {text}")),
    ("Review: {text}", ("task.template", "Review: {text}")),
    ("[P:3]{text}[P:2] It was", ("method.template", "[P:3]{text}[P:2] It was")),
])
def test_a_rendered_template_is_quoted_as_the_user_wrote_it(template, written):
    assert as_written(template, "Review: {text}") == written


def _train_error(run_as_main, capfd, tmp_path, overrides: list[str]) -> str:
    run_dir = tmp_path / "run"
    status = run_as_main("softprompt.cli.train", *overrides, "trainer.max_steps=1", f"hydra.run.dir={run_dir}")
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2, captured.err[-3000:]
    assert len(lines) == 1 and "Traceback" not in captured.err + captured.out, lines
    assert not [name for name in ("metrics.json", "checkpoints", "prompt") if (run_dir / name).exists()]
    return lines[0]


@pytest.mark.parametrize(("template", "message"), [
    ("Review: {text} {oops", "the '{' at character 16 is never closed; a placeholder is {name}, and {{ and }} stand "
                             "for literal braces"),  # an unclosed brace: one line, no str.format traceback
    ("Review: {answer} {text}", "{answer} must end the template for causal LMs (the answer is the next token)"),
], ids=["unclosed_brace", "quoted_without_the_front_slots"])
def test_softprompt_train_refuses_a_bad_template_in_one_line_quoting_what_the_user_wrote(
        run_as_main, capfd, tmp_path, tiny_overrides, local_task_overrides, template, message):
    line = _train_error(run_as_main, capfd, tmp_path,
                        [*tiny_overrides, *local_task_overrides, f"task.template='{template}'"])
    assert line == f"softprompt: error: task.template='{template}' is invalid: {message}"
