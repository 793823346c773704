"""Prompt templates: literal text, `{field}` placeholders, `[P:n]` soft-prompt slots, optional `{answer}`.

A template such as ``"[P:3] {text} [P:2] It was{answer}"`` renders to token ids plus a parallel
`slot_ids` list that is -1 for ordinary tokens and k for the k-th virtual token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from softprompt.errors import ConfigError

SLOT_PATTERN = re.compile(r"\[P:(\d+)\]")
FIELD_PATTERN = re.compile(r"\{(\w*)\}")
ANSWER = "answer"
_MAX_TRUNCATION_ROUNDS = 8


@dataclass(frozen=True)
class Template:
    text: str
    segments: tuple[str | int, ...]  # literal text pieces (may hold {fields}) or slot lengths
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str, fields: Sequence[str], key: str = "task.template") -> Template:
        """Parse and validate; every text field must appear and nothing else may."""
        used = FIELD_PATTERN.findall(text)
        for name in used:
            if name not in (*fields, ANSWER):
                raise ConfigError(key, text, f"unknown placeholder {{{name}}}; allowed: "
                                  + ", ".join(f"{{{f}}}" for f in (*fields, ANSWER)))
        for name in fields:
            if name not in used:
                raise ConfigError(key, text, f"the template must contain the text field {{{name}}}")
        if ANSWER in used and not text.rstrip().endswith("{answer}"):
            raise ConfigError(key, text, "{answer} may only stand at the end of the template")
        segments: list[str | int] = []
        position = 0
        for match in SLOT_PATTERN.finditer(text):
            if match.start() > position:
                segments.append(text[position:match.start()])
            length = int(match.group(1))
            if length < 1:
                raise ConfigError(key, text, "a slot [P:n] needs n >= 1")
            segments.append(length)
            position = match.end()
        tail = text[position:].replace("{answer}", "")
        if tail:
            segments.append(tail)
        return cls(text, tuple(segments), tuple(fields))

    @property
    def num_virtual_tokens(self) -> int:
        return sum(s for s in self.segments if isinstance(s, int))

    def render(self, example: Mapping[str, str], tokenizer: PreTrainedTokenizerBase,
               max_length: int) -> tuple[list[int], list[int]]:
        """Token ids and slot ids; the longest field is cut (from its end) until the result fits."""
        values = {name: str(example[name]) for name in self.fields}
        for _ in range(_MAX_TRUNCATION_ROUNDS):
            ids, slots = self._tokenize(values, tokenizer)
            excess = len(ids) - max_length
            if excess <= 0:
                return ids, slots
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
        raise ConfigError("task.max_length", max_length,
                          f"the template does not fit; it needs {len(ids)} tokens for this example")

    def fill(self, example: Mapping[str, str]) -> str:
        """The template as plain text with its fields filled and its slots left out."""
        return "".join(s.format(**{f: str(example[f]) for f in self.fields}) for s in self.segments
                       if isinstance(s, str))

    def _tokenize(self, values: Mapping[str, str], tokenizer: PreTrainedTokenizerBase):
        ids: list[int] = []
        slots: list[int] = []
        next_slot = 0
        for segment in self.segments:
            if isinstance(segment, int):
                ids.extend([tokenizer.pad_token_id] * segment)
                slots.extend(range(next_slot, next_slot + segment))
                next_slot += segment
            else:
                piece = tokenizer(segment.format(**values), add_special_tokens=False).input_ids
                ids.extend(piece)
                slots.extend([-1] * len(piece))
        return ids, slots
