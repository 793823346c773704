"""P-tuning prompt encoders (Liu et al. 2021): they map the trainable embeddings to the prompt.

The layer shapes follow PEFT's `PromptEncoder` so that the same weights give the same prompt.
"""

from __future__ import annotations

import torch
from torch import nn

from softprompt.errors import ConfigError

ENCODERS = ("none", "mlp", "lstm")


class MLPEncoder(nn.Module):
    """Linear(d, h), ReLU, Linear(h, h), ReLU, Linear(h, d)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp_head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                      nn.Linear(hidden, dim))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp_head(embeddings)


class LSTMEncoder(nn.Module):
    """The paper's encoder: a 2-layer bidirectional LSTM over the prompt, then a ReLU MLP."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.lstm_head = nn.LSTM(input_size=dim, hidden_size=hidden, num_layers=2, dropout=dropout,
                                 bidirectional=True, batch_first=True)
        self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.mlp_head(self.lstm_head(embeddings[None])[0][0])


def zero_last_linear(module: nn.Module) -> None:
    """Zero the last Linear layer: the reparameterised tensor starts at exactly zero (a neutral prompt),
    and training moves it from there (PEFT's `init_weights="zero"` for prefixes)."""
    last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


def match_output_std(encoder: nn.Module, inputs: torch.Tensor, target_std: float) -> None:
    """Rescale the last Linear layer so the encoder's initial output has std `target_std`.

    A freshly initialised encoder emits vectors far larger than word embeddings, which breaks the
    frozen model at step 0. (A zero output is no fix for input-level prompts: RMSNorm's gradient at
    the zero vector is 1/sqrt(eps) per layer and overflows through a deep backbone.)
    """
    last = [m for m in encoder.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        scale = target_std / float(encoder(inputs).std())
        last.weight.mul_(scale)
        last.bias.mul_(scale)


def build_prompt_encoder(kind: str, dim: int, hidden: int, dropout: float) -> nn.Module | None:
    """None for `none` (prompt tuning): the embeddings are the prompt."""
    if kind == "none":
        return None
    if kind == "mlp":
        encoder = MLPEncoder(dim, hidden)
    elif kind == "lstm":
        encoder = LSTMEncoder(dim, hidden, dropout)
    else:
        raise ConfigError("method.encoder", kind, f"allowed: {', '.join(ENCODERS)}")
    return encoder
