"""What a trained prompt's tensors look like: shared by the methods' `inspect` declarations.

Input-level prompts live in the input embedding space, so each virtual token has nearest vocabulary tokens
(Lester et al. 2021 read their prompts this way). Attention-level prefixes live in each layer's key/value
space, where nearest tokens do not apply: per-layer key and value norms instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase


@dataclass
class InputLevelReport:
    norms: list[float]  # per virtual token
    vocab_mean_norm: float
    nearest: list[list[tuple[int, str, float]]]  # per virtual token: (token id, text, cosine), best first
    pairwise: list[list[float]]  # cosine similarity between virtual tokens


def input_level_report(prompt: torch.Tensor, embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
                       top_k: int) -> InputLevelReport:
    """Nearest vocabulary tokens by cosine, norms and pairwise cosines of `prompt` (n, d)."""
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


def nearest_tokens_report(prompt: torch.Tensor, embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase,
                          top_k: int) -> list[str]:
    """The lines softprompt-inspect prints for an input-level prompt (n, d)."""
    return format_input_level(input_level_report(prompt, embeddings, tokenizer, top_k))


def prefix_norms_report(prefix: torch.Tensor, roles: dict[str, int], kv_heads: int, head_dim: int) -> list[str]:
    """The lines softprompt-inspect prints for a flat (P, layers x 2 x kv_heads x head_dim) prefix."""
    return format_prefix(prefix_norms(prefix, roles, kv_heads, head_dim), len(prefix))
