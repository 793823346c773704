"""Verbalizers: each label maps to one or more words; words become token id sequences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from transformers import PreTrainedTokenizerBase

from softprompt.errors import ConfigError


def label_words(labels: Sequence[str], verbalizer: Mapping[str, str | Sequence[str]]) -> list[list[str]]:
    """Words per label, in label order; every label needs words and every key must be a label."""
    for key in verbalizer:
        if key not in labels:
            raise ConfigError(f"task.verbalizer.{key}", verbalizer[key],
                              f"{key!r} is not a label; labels are {list(labels)}")
    words = []
    for label in labels:
        value = verbalizer.get(label)
        if value is None or (not isinstance(value, str) and len(value) == 0):
            raise ConfigError(f"task.verbalizer.{label}", value,
                              f"every label needs a word; labels are {list(labels)}")
        words.append([value] if isinstance(value, str) else [str(v) for v in value])
    return words


def label_token_ids(words: Sequence[Sequence[str]], tokenizer: PreTrainedTokenizerBase) -> list[list[list[int]]]:
    """Token ids per label, per word (no special tokens)."""
    result = []
    for label_index, label_words_ in enumerate(words):
        per_word = []
        for word in label_words_:
            ids = tokenizer(word, add_special_tokens=False).input_ids
            if not ids:
                raise ConfigError("task.verbalizer", word, f"label {label_index}'s word tokenizes to nothing")
            per_word.append(ids)
        result.append(per_word)
    return result
