"""`backbone.quantization`, parsed: the scheme and the library that runs it (no torch import, for the CLIs' argument
checks). Loading, device checks and the quantised weights: softprompt.backbones.quantization."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from softprompt.errors import ConfigError

KEY = "backbone.quantization"
NONE = "none"
# scheme -> the library that runs it (its import name, as pip installs it)
LIBRARIES = {"int8": "bitsandbytes", "nf4": "bitsandbytes", "fp4": "bitsandbytes", "int8_weight_only": "torchao"}
SCHEMES = (NONE, *LIBRARIES)


@dataclass(frozen=True)
class Quantization:
    """A backbone's quantisation scheme, checked."""

    scheme: str = NONE

    @property
    def quantized(self) -> bool:
        return self.scheme != NONE

    @property
    def library(self) -> str | None:
        return LIBRARIES.get(self.scheme)

    def transformers_config(self, compute_dtype: Any) -> Any:
        """transformers' quantization config for `from_pretrained` (None for `none`); 4-bit layers compute in
        `compute_dtype` (a torch dtype), the backbone's dtype."""
        from transformers import BitsAndBytesConfig, TorchAoConfig

        if self.scheme == "int8":
            return BitsAndBytesConfig(load_in_8bit=True)
        if self.scheme in ("nf4", "fp4"):
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.scheme,
                                      bnb_4bit_compute_dtype=compute_dtype)
        if self.scheme == "int8_weight_only":
            from torchao.quantization import Int8WeightOnlyConfig

            return TorchAoConfig(Int8WeightOnlyConfig())
        return None


def parse_quantization(backbone: Mapping[str, Any]) -> Quantization:
    """`backbone.quantization` as a `Quantization`; unset (a config written before it existed) reads as none."""
    value = backbone.get("quantization", NONE)
    if value is None:
        value = NONE
    if not isinstance(value, str) or value not in SCHEMES:
        raise ConfigError(KEY, value, f"allowed: {', '.join(SCHEMES)}")
    return Quantization(value)
