"""Backbone loading from a local folder, freezing, dtype, and the trainable prompt staying fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from helpers import make_batch, prompt_module, tiny_backbone
from softprompt.backbones import count_unique_params, fingerprint, load_backbone


def test_local_folder_loads_the_same_weights_frozen(tmp_path):
    original = tiny_backbone()
    original.model.save_pretrained(tmp_path / "model")
    original.tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_backbone({"name": "local", "name_or_path": str(tmp_path / "model"), "revision": None,
                            "dtype": "float32", "family": "auto"}, tmp_path / "cache")
    assert fingerprint(loaded.model) == fingerprint(original.model)
    assert loaded.family == "causal_lm" and loaded.source == str(tmp_path / "model")
    assert not any(p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    assert loaded.tokenizer("abc").input_ids == original.tokenizer("abc").input_ids


def test_tied_weights_are_counted_once():
    backbone = tiny_backbone()
    embedding = backbone.model.get_input_embeddings().weight
    assert backbone.model.get_output_embeddings().weight is embedding
    assert backbone.total_params() == count_unique_params(backbone.model)
    assert backbone.total_params() == sum(p.numel() for p in backbone.model.parameters())  # torch dedups too
    assert backbone.total_params() < sum(t.numel() for t in backbone.model.state_dict().values())


def test_bf16_backbone_with_fp32_prompt_trains_the_prompt_only():
    backbone = tiny_backbone(dtype="bfloat16")
    assert backbone.model.get_input_embeddings().weight.dtype == torch.bfloat16
    module = prompt_module(backbone, [["n"], ["p"]])
    assert module.prompt.dtype == torch.float32
    before, prompt_before = fingerprint(backbone.model), module.prompt.detach().clone()
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=1.0)
    batch = make_batch(backbone, ["good", "bad film"], "[P:4]{text} =", labels=[1, 0])
    loss = F.cross_entropy(module(batch), batch["labels"])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(module.prompt.detach(), prompt_before)
    assert module.prompt.dtype == torch.float32 and fingerprint(backbone.model) == before
