"""Turn a GGUF checkpoint into a normal Hugging Face folder (config, safetensors, tokenizer)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer


def convert_gguf_to_hf(gguf_file: Path, out_dir: Path, special_token: str) -> None:
    """Dequantise `gguf_file` and save it as an HF folder with pad and eos set to `special_token`.

    transformers 5 refuses `save_pretrained` on a GGUF-loaded model, so the model is rebuilt from
    its config and the dequantised state dict is loaded into it.
    """
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    special_id = tokenizer.convert_tokens_to_ids(special_token)
    config.pad_token_id = config.eos_token_id = special_id
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied lm_head weights may be absent from the GGUF state dict; anything else is a real gap.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.generation_config.pad_token_id = model.generation_config.eos_token_id = special_id
    model.save_pretrained(out_dir, safe_serialization=True)

    tokenizer.pad_token = tokenizer.eos_token = special_token
    tokenizer.add_bos_token = False
    tokenizer.save_pretrained(out_dir)
