"""Initialisation strategies for virtual-token embeddings (Lester et al. 2021, section 3), and
`from_artifact`: a new run that starts from a trained prompt's folded tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.errors import ConfigError


@dataclass
class InitContext:
    """What an initialisation may look at. `token_counts` is computed on the task's training text."""

    embeddings: torch.Tensor  # (vocab, hidden) input embedding matrix of the backbone
    tokenizer: PreTrainedTokenizerBase
    token_counts: torch.Tensor | None
    label_token_ids: Sequence[Sequence[Sequence[int]]]
    generator: torch.Generator
    init_range: float
    init_std: float | None
    init_vocab_size: int
    init_text: str | None


def random_values(init: str, shape: tuple[int, ...], ctx: InitContext) -> torch.Tensor:
    """`random_uniform`: U(-init_range, init_range); `random_normal`: N(0, init_std or the embedding std)."""
    if init == "random_uniform":
        return (torch.rand(shape, generator=ctx.generator) * 2 - 1) * ctx.init_range
    std = ctx.init_std if ctx.init_std is not None else float(ctx.embeddings.float().std())
    return torch.randn(shape, generator=ctx.generator) * std


def _random_uniform(n: int, ctx: InitContext) -> torch.Tensor:
    return random_values("random_uniform", (n, ctx.embeddings.shape[1]), ctx)


def _random_normal(n: int, ctx: InitContext) -> torch.Tensor:
    return random_values("random_normal", (n, ctx.embeddings.shape[1]), ctx)


def _frequent_vocab_ids(n: int, ctx: InitContext) -> torch.Tensor:
    """n token ids sampled (without replacement where possible) from the K most frequent."""
    if ctx.token_counts is None:
        raise ConfigError("method.init", "vocab", "needs token counts from the training split")
    counts = ctx.token_counts.clone()
    counts[list(ctx.tokenizer.all_special_ids)] = 0
    k = min(ctx.init_vocab_size, int((counts > 0).sum()))
    top = torch.argsort(counts, descending=True, stable=True)[:k]
    replace = n > k
    pick = torch.multinomial(torch.ones(k), n, replacement=replace, generator=ctx.generator)
    return top[pick]


def _vocab(n: int, ctx: InitContext) -> torch.Tensor:
    return ctx.embeddings[_frequent_vocab_ids(n, ctx)].float().clone()


def _text_ids(n: int, ctx: InitContext) -> torch.Tensor:
    if not ctx.init_text:
        raise ConfigError("method.init_text", ctx.init_text, "init=text needs a non-empty method.init_text")
    ids = ctx.tokenizer(ctx.init_text, add_special_tokens=False).input_ids
    return torch.tensor((ids * (n // len(ids) + 1))[:n])


def _text(n: int, ctx: InitContext) -> torch.Tensor:
    return ctx.embeddings[_text_ids(n, ctx)].float().clone()


def _class_labels(n: int, ctx: InitContext) -> torch.Tensor:
    """Each label's word embedding (multi-token words averaged), then `vocab` for remaining slots."""
    rows = [ctx.embeddings[torch.tensor(words[0])].float().mean(0) for words in ctx.label_token_ids][:n]
    rest = _vocab(n - len(rows), ctx) if n > len(rows) else ctx.embeddings.new_zeros(0, ctx.embeddings.shape[1])
    return torch.cat([torch.stack(rows), rest.float()])


INIT_STRATEGIES: dict[str, Callable[[int, InitContext], torch.Tensor]] = {
    "random_uniform": _random_uniform,
    "random_normal": _random_normal,
    "vocab": _vocab,
    "text": _text,
    "class_labels": _class_labels,
}


RANDOM_INITS = ("random_uniform", "random_normal")


def initial_token_ids(init: str, n: int, ctx: InitContext) -> torch.Tensor:
    """Real tokens standing for the prompt (for activation-based prefix init); not for random inits."""
    if init == "text":
        return _text_ids(n, ctx)
    if init == "vocab":
        return _frequent_vocab_ids(n, ctx)
    if init == "class_labels":
        labels = torch.tensor([words[0][0] for words in ctx.label_token_ids])[:n]
        return torch.cat([labels, _frequent_vocab_ids(n - len(labels), ctx)]) if n > len(labels) else labels
    raise ConfigError("method.init", init, f"allowed: {', '.join(t for t in INIT_STRATEGIES if t not in RANDOM_INITS)}")


ARTIFACT_INIT = "from_artifact"  # the tensors of a trained prompt (method.init_artifact), not a strategy
INIT_VALUES = (*INIT_STRATEGIES, ARTIFACT_INIT)


def initial_embeddings(init: str, n: int, ctx: InitContext) -> torch.Tensor:
    if init not in INIT_STRATEGIES:
        raise ConfigError("method.init", init, f"allowed: {', '.join(INIT_STRATEGIES)}")
    return INIT_STRATEGIES[init](n, ctx).float()
