"""Initialisation strategies for virtual-token embeddings (Lester et al. 2021, section 3), and
`from_artifact`: a new run that starts from a trained prompt's folded tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from softprompt.backbones.loading import fingerprint
from softprompt.errors import ConfigError, require_positive_int


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
# The reparameterisations an artifact has folded away: starting from it trains the folded tensors directly.
FOLDED_AWAY = ("encoder", "reparam")


def check_init_settings(method: Mapping) -> None:
    """The init-related keys shared by every method with trainable prompt tensors."""
    if method.get("init") not in INIT_VALUES:
        raise ConfigError("method.init", method.get("init"), f"allowed: {', '.join(INIT_VALUES)}")
    require_positive_int("method.init_vocab_size", method.get("init_vocab_size"))
    if method["init"] == "text" and not method.get("init_text"):
        raise ConfigError("method.init_text", method.get("init_text"), "init=text needs a non-empty text")
    if not float(method.get("init_range") or 0) > 0:
        raise ConfigError("method.init_range", method.get("init_range"), "must be > 0")
    if method["init"] == ARTIFACT_INIT:
        check_artifact_init(method)
    elif method.get("init_artifact") is not None:
        raise ConfigError("method.init_artifact", method["init_artifact"],
                          f"is only read with method.init={ARTIFACT_INIT}; set method.init_artifact=null")


def _read_artifact(path: object) -> tuple[Path, dict]:
    """(folder, spec) of `method.init_artifact`; the json only, so config checks stay cheap."""
    from softprompt.artifacts import TENSORS_FILE, ArtifactError, artifact_dir, read_spec  # imports the methods

    if not path:
        raise ConfigError("method.init_artifact", path, f"init={ARTIFACT_INIT} needs the path of a trained prompt "
                          "(a run's prompt/ folder)")
    try:
        directory = artifact_dir(Path(str(path)))
        spec = read_spec(directory)
    except ArtifactError as error:
        raise ConfigError("method.init_artifact", str(path), str(error)) from None
    if not (directory / TENSORS_FILE).is_file():
        raise ConfigError("method.init_artifact", str(path), f"has no {TENSORS_FILE}")
    return directory, spec


def check_artifact_init(method: Mapping) -> tuple[Path, dict]:
    """init=from_artifact: the artifact exists and holds this method's tensors at this prompt length, and no
    reparameterisation would be stacked on its folded tensors. Reads softprompt.json only; returns (folder, spec)."""
    path = method.get("init_artifact")
    directory, spec = _read_artifact(path)
    name, stored = method.get("name"), spec["method"]["name"]
    if stored != name:
        raise ConfigError("method.init_artifact", str(path), f"holds a {stored} prompt; method {name} can only "
                          f"start from a {name} prompt")
    if spec["num_virtual_tokens"] != method.get("num_virtual_tokens"):
        raise ConfigError("method.num_virtual_tokens", method.get("num_virtual_tokens"),
                          f"the artifact {path} has {spec['num_virtual_tokens']} virtual tokens")
    for key in FOLDED_AWAY:
        if method.get(key, "none") != "none":
            raise ConfigError(f"method.{key}", method[key], f"init={ARTIFACT_INIT} trains the artifact's folded "
                              f"tensors directly (its {key} is folded away); set method.{key}=none")
    return directory, spec


def artifact_init_state(method: Mapping, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The folded tensors of `method.init_artifact`, after checking that `model` (the run's frozen backbone)
    has the weights the prompt was trained on."""
    from safetensors.torch import load_file

    from softprompt.artifacts import TENSORS_FILE

    directory, spec = check_artifact_init(method)
    expected, found = spec["backbone"]["fingerprint"], fingerprint(model)
    if found != expected:
        raise ConfigError("method.init_artifact", str(method["init_artifact"]),
                          f"was trained on a backbone with fingerprint {expected}; this run's backbone has {found} "
                          "(its frozen weights differ)")
    return load_file(directory / TENSORS_FILE)


def initial_embeddings(init: str, n: int, ctx: InitContext) -> torch.Tensor:
    if init not in INIT_STRATEGIES:
        raise ConfigError("method.init", init, f"allowed: {', '.join(INIT_STRATEGIES)}")
    return INIT_STRATEGIES[init](n, ctx).float()
