"""softprompt-inspect: what a trained prompt's vectors look like.

    softprompt-inspect prompt=PATH [top_k=5] [force=true] [cache_dir=DIR]

Input-level prompts (prompt tuning, P-tuning; folded embeddings): for each virtual token, the nearest
vocabulary tokens by cosine similarity to the backbone's input embedding matrix (as Lester et al. 2021
did), its L2 norm against the vocabulary's mean embedding norm, and the pairwise cosine similarities
between virtual tokens. Attention-level prefixes (prefix tuning, P-tuning v2) live in each layer's
key/value space, so nearest tokens do not apply: per-layer key and value norms instead. A hard prompt
has nothing to inspect.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from softprompt.predict import (
    UsageError,
    existing_path,
    fail,
    handle_help,
    parse_bool,
    parse_key_values,
    parse_positive_int,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from softprompt.artifacts import Predictor

PROG = "softprompt-inspect"
INSPECT_KEYS = {
    "prompt": "the trained prompt: a run's prompt/ folder (or the run folder)",
    "top_k": "nearest vocabulary tokens per virtual token (default 5)",
    "force": "true loads the prompt on a backbone whose fingerprint differs (default false)",
    "cache_dir": "prepared offline assets (default $SOFTPROMPT_CACHE or ~/.cache/softprompt)",
}
DEFAULT_TOP_K = 5


@dataclass
class InputLevelReport:
    norms: list[float]  # per virtual token
    vocab_mean_norm: float
    nearest: list[list[tuple[int, str, float]]]  # per virtual token: (token id, text, cosine), best first
    pairwise: list[list[float]]  # cosine similarity between virtual tokens


def input_level_report(prompt: torch.Tensor, embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
                       top_k: int) -> InputLevelReport:
    """Nearest vocabulary tokens by cosine, norms and pairwise cosines of `prompt` (n, d)."""
    import torch.nn.functional as F

    vocab = embeddings[: min(len(tokenizer), len(embeddings))].float()  # rows past the tokenizer are padding
    vectors = prompt.float()
    unit = F.normalize(vectors, dim=-1)
    cosines, ids = (unit @ F.normalize(vocab, dim=-1).T).topk(min(top_k, len(vocab)), dim=-1)
    nearest = [[(int(i), tokenizer.decode([int(i)]), float(c)) for i, c in zip(row_ids, row_cos, strict=True)]
               for row_ids, row_cos in zip(ids.tolist(), cosines.tolist(), strict=True)]
    return InputLevelReport(norms=vectors.norm(dim=-1).tolist(), vocab_mean_norm=float(vocab.norm(dim=-1).mean()),
                            nearest=nearest, pairwise=(unit @ unit.T).tolist())


def prefix_norms(prefix: torch.Tensor, roles: dict[str, int], kv_heads: int, head_dim: int
                 ) -> list[tuple[str, float, float]]:
    """Per layer (`role index`), the mean over virtual tokens of the key and of the value L2 norm."""
    layers = sum(roles.values())
    norms = prefix.float().view(len(prefix), layers, 2, kv_heads * head_dim).norm(dim=-1).mean(0)  # (layers, 2)
    names = [f"{role} {i}" for role, count in roles.items() for i in range(count)]
    return [(name, float(key), float(value)) for name, (key, value) in zip(names, norms.tolist(), strict=True)]


def format_input_level(report: InputLevelReport) -> list[str]:
    lines = [f"vocabulary mean embedding L2 norm: {report.vocab_mean_norm:.4f}"]
    for k, (norm, nearest) in enumerate(zip(report.norms, report.nearest, strict=True)):
        tokens = ", ".join(f"{text!r} (id {i}) {cos:.4f}" for i, text, cos in nearest)
        lines.append(f"virtual token {k}: L2 norm {norm:.4f} | nearest by cosine: {tokens}")
    lines.append("pairwise cosine similarity between virtual tokens:")
    size = len(report.pairwise)
    lines.append("      " + "".join(f"{j:>8}" for j in range(size)))
    lines += [f"{i:>6}" + "".join(f"{c:>8.4f}" for c in row) for i, row in enumerate(report.pairwise)]
    return lines


def format_prefix(rows: list[tuple[str, float, float]], num_virtual_tokens: int) -> list[str]:
    lines = ["nearest vocabulary tokens do not apply: the prefix lives in each attention layer's key/value space, "
             "not in the input embedding space",
             f"per-layer L2 norms, mean over the {num_virtual_tokens} virtual tokens:",
             f"{'layer':<14}{'key norm':>10}{'value norm':>12}"]
    lines += [f"{name:<14}{key:>10.4f}{value:>12.4f}" for name, key, value in rows]
    return lines


def describe(predictor: Predictor, top_k: int) -> list[str]:
    from softprompt.methods.attention_level import AttentionLevelPrefix
    from softprompt.methods.input_level import InputLevelPrompt

    module, spec = predictor.module, predictor.spec
    backbone = spec["backbone"]
    head = (f"{predictor.method} on {backbone['name']} ({backbone['family']}, fingerprint {backbone['fingerprint']}), "
            f"task {predictor.task['name']}: {spec['num_virtual_tokens']} virtual tokens")
    state = module.folded_state()
    if isinstance(module, InputLevelPrompt):
        embeddings = module.backbone.get_input_embeddings().weight.detach()
        report = input_level_report(state["prompt"], embeddings, predictor.datamodule.tokenizer, top_k)
        return [f"{head} in the input embedding space (d={embeddings.shape[1]})", *format_input_level(report)]
    if isinstance(module, AttentionLevelPrefix):
        roles, kv_heads, head_dim = module.geometry
        return [f"{head} as key/value prefixes in {sum(roles.values())} attention layers",
                *format_prefix(prefix_norms(state["prefix"], roles, kv_heads, head_dim), module.num_virtual_tokens)]
    return [f"{head}: {predictor.method} has no trained prompt tensors, so there is nothing to inspect "
            f"(its template: {spec['prompt_template']!r})"]


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    handle_help(argv, PROG, INSPECT_KEYS, ("prompt",))
    try:
        args = parse_key_values(argv, INSPECT_KEYS, ("prompt",))
        prompt = existing_path("prompt", args["prompt"])
        force = parse_bool("force", args.get("force"))
        top_k = parse_positive_int("top_k", args.get("top_k")) or DEFAULT_TOP_K
    except UsageError as error:
        fail(PROG, error)
    from softprompt.artifacts import load
    from softprompt.errors import SoftPromptError

    try:
        predictor = load(prompt, force=force, cache_dir=args.get("cache_dir"))
    except SoftPromptError as error:
        fail(PROG, error)
    print("\n".join(describe(predictor, top_k)))


if __name__ == "__main__":
    main()
