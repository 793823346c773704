"""Prompt templates: literal text, `{field}` placeholders, `[P:n]` soft-prompt slots, and `{answer}`.

A template such as ``"[P:3] {text} [P:2] It was{answer}"`` renders to token ids plus a parallel
`slot_ids` list that is -1 for ordinary tokens and k for the k-th virtual token, and the index of
the answer position. `{answer}` may be left out (the answer then follows the template).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from softprompt.errors import ConfigError

SLOT_PATTERN = re.compile(r"\[P:(\d+)\]")
ANSWER = "answer"
_MAX_TRUNCATION_ROUNDS = 8


@dataclass(frozen=True)
class Rendered:
    input_ids: list[int]
    slot_ids: list[int]
    answer_index: int  # the mask token (masked LMs) or the last token before the answer (causal LMs)
    truncated: bool = False  # a text field was cut to fit `max_length`

    @property
    def num_text_tokens(self) -> int:
        """The task's own tokens: everything but the virtual-token slots."""
        return sum(1 for s in self.slot_ids if s < 0)


@dataclass(frozen=True)
class Template:
    text: str
    segments: tuple[str | int | None, ...]  # literal text (may hold {fields}), slot length, or None = answer
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, fields: Sequence[str], key: str = "task.template") -> Template:
        """Parse and validate; every text field must appear and nothing else may. Braces are str.format's: a
        placeholder is `{name}`, and `{{` / `}}` stand for a literal brace."""
        segments, used = _scan(text, key)
        for name in used:
            if name not in (*fields, ANSWER):
                hint = "" if re.fullmatch(r"\w*", name) else " (write {{ and }} for a literal brace)"
                raise ConfigError(key, text, f"unknown placeholder {{{name}}}; allowed: "
                                  + ", ".join(f"{{{f}}}" for f in (*fields, ANSWER)) + hint)
        for name in fields:
            if name not in used:
                raise ConfigError(key, text, f"the template must contain the text field {{{name}}}")
        if used.count(ANSWER) > 1:
            raise ConfigError(key, text, "{answer} may appear once")
        if any(isinstance(s, int) and s < 1 for s in segments):
            raise ConfigError(key, text, "a slot [P:n] needs n >= 1")
        if None not in segments:
            segments.append(None)
        return cls(text, tuple(segments), tuple(fields))

    @property
    def num_virtual_tokens(self) -> int:
        return sum(s for s in self.segments if isinstance(s, int))

    @property
    def answer_at_end(self) -> bool:
        return self.segments[-1] is None

    def fill(self, example: Mapping[str, str]) -> str:
        """The template as plain text with its fields filled and its slots and answer left out."""
        return "".join(s.format(**{f: str(example[f]) for f in self.fields}) for s in self.segments
                       if isinstance(s, str))

    def render(self, example: Mapping[str, str], tokenizer: PreTrainedTokenizerBase, max_length: int,
               answer_ids: Sequence[int] = (), specials: tuple[Sequence[int], Sequence[int]] = ((), ()),
               with_slots: bool = True) -> Rendered:
        """Tokenize; the longest field is cut (from its end) until the task's own tokens fit in `max_length`.

        The budget counts specials, template text, fields and `answer_ids` (a mask token, or a solved
        demonstration's answer word), never the virtual-token slots: an example keeps the same text for every
        method and prompt length. `specials` are the tokenizer's own leading and trailing special tokens (e.g.
        [CLS] / [SEP]); `with_slots=False` leaves the slots out (in-context demonstrations).
        """
        values = {name: str(example[name]) for name in self.fields}
        truncated = False
        for _ in range(_MAX_TRUNCATION_ROUNDS):
            rendered = self._tokenize(values, tokenizer, answer_ids, specials, with_slots)
            excess = rendered.num_text_tokens - max_length
            if excess <= 0:
                return Rendered(rendered.input_ids, rendered.slot_ids, rendered.answer_index, truncated)
            longest = max(self.fields, key=lambda f: len(values[f]))
            if not values[longest]:
                break
            # Cut at a token boundary, by character offset, so no partial character is produced.
            offsets = tokenizer(values[longest], add_special_tokens=False,
                                return_offsets_mapping=True)["offset_mapping"]
            keep = len(offsets) - excess
            while 0 < keep < len(offsets) and offsets[keep][0] < offsets[keep - 1][1]:
                keep -= 1  # byte-level tokens inside one character: never split the character
            values[longest] = values[longest][: offsets[keep - 1][1]] if keep > 0 else ""
            truncated = True
        raise ConfigError("task.max_length", max_length, f"the template does not fit; it needs "
                          f"{rendered.num_text_tokens} tokens of its own for this example")

    def _tokenize(self, values: Mapping[str, str], tokenizer: PreTrainedTokenizerBase, answer_ids: Sequence[int],
                  specials: tuple[Sequence[int], Sequence[int]], with_slots: bool) -> Rendered:
        ids: list[int] = list(specials[0])
        slots: list[int] = [-1] * len(ids)
        answer_index = -1
        next_slot = 0
        for segment in self.segments:
            if segment is None:
                # The answer position: the token before the answer, or the first answer token (a mask).
                answer_index = len(ids) if answer_ids else len(ids) - 1
                ids.extend(answer_ids)
                slots.extend([-1] * len(answer_ids))
            elif isinstance(segment, int):
                if with_slots:
                    ids.extend([tokenizer.pad_token_id] * segment)
                    slots.extend(range(next_slot, next_slot + segment))
                next_slot += segment
            else:
                piece = tokenizer(segment.format(**values), add_special_tokens=False).input_ids
                ids.extend(piece)
                slots.extend([-1] * len(piece))
        ids.extend(specials[1])
        slots.extend([-1] * len(specials[1]))
        return Rendered(ids, slots, answer_index)


def as_written(template: str, task_template: str) -> tuple[str, str]:
    """The key and the value a user wrote for `template`, the template a method renders (methods.layout): the
    task's template without the front slot `[P:n]` a method puts before it, or else `method.template`."""
    front = template[: len(template) - len(task_template)]
    if template.endswith(task_template) and (not front or SLOT_PATTERN.fullmatch(front)):
        return "task.template", task_template
    return "method.template", template


def _scan(text: str, key: str) -> tuple[list[str | int | None], list[str]]:
    """The template's segments (literal text as a str.format string, slot length, None = the answer) and the
    placeholder names it uses, in order. A brace that str.format would fail on is refused here, in one line."""
    segments: list[str | int | None] = []
    used: list[str] = []
    start = i = 0
    while i < len(text):
        slot = SLOT_PATTERN.match(text, i)
        char = text[i]
        if slot or (char == "{" and text.startswith("{answer}", i)):
            segments.extend([text[start:i]] if i > start else [])
            segments.append(int(slot.group(1)) if slot else None)
            used.extend([] if slot else [ANSWER])
            start = i = slot.end() if slot else i + len("{answer}")
        elif char in "{}" and text.startswith(char * 2, i):
            i += 2  # a literal brace
        elif char == "}":
            raise ConfigError(key, text, f"the '}}' at character {i + 1} closes no '{{'; write }}}} for a literal "
                              "brace")
        elif char == "{":
            end = text.find("}", i)
            if end < 0 or "{" in text[i + 1:end]:
                problem = "is never closed" if end < 0 else "meets another '{' before its '}'"
                raise ConfigError(key, text, f"the '{{' at character {i + 1} {problem}; a placeholder is {{name}}, "
                                  "and {{ and }} stand for literal braces")
            used.append(text[i + 1:end])
            i = end + 1
        else:
            i += 1
    segments.extend([text[start:]] if len(text) > start else [])
    return segments, used


def special_tokens_around(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text (e.g. [CLS] ... [SEP], or BOS)."""
    plain = tokenizer("x", add_special_tokens=False).input_ids
    full = tokenizer("x", add_special_tokens=True).input_ids
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start], full[start + len(plain):]
    return [], []
