"""backbone.quantization: what each scheme quantises, fingerprints of the quantised bytes and their quant state,
bitsandbytes' CPU repacking kept off (and refused where it happened anyway), and the one-line refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from softprompt.backbones.loading import fingerprint
from softprompt.backbones.quantization import (
    check_quantization,
    undifferentiable_layers,
    weight_memory,
)
from softprompt.config.quantization import SCHEMES
from softprompt.errors import ConfigError
from softprompt.training.quantization_guard import QuantizedGradientGuard

bnb = pytest.importorskip("bitsandbytes")
pytest.importorskip("torchao")

QUANTIZED = [s for s in SCHEMES if s != "none"]
WORDS = [["n"], ["p"]]  # one token each: masked and seq2seq families score one
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]


def first_linear(backbone):
    return backbone.model.model.layers[0].self_attn.q_proj


def test_each_scheme_quantises_the_linear_layers_and_keeps_the_embeddings(tiny_backbone):
    full = weight_memory(tiny_backbone().model)
    kinds = {"int8": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit, "fp4": bnb.nn.Linear4bit}
    for scheme in QUANTIZED:
        backbone = tiny_backbone(quantization=scheme)
        assert backbone.quantization == scheme
        layer = first_linear(backbone)
        if scheme in kinds:
            assert isinstance(layer, kinds[scheme])
        else:
            assert type(layer.weight).__name__ == "Int8Tensor"
        embeddings = backbone.model.get_input_embeddings().weight
        assert type(embeddings) is torch.nn.Parameter and embeddings.dtype == torch.float32
        assert backbone.model.get_output_embeddings().weight is embeddings  # still tied
        memory = weight_memory(backbone.model)
        assert memory["embeddings"] == full["embeddings"] and memory["other"] == full["other"]
        assert memory["linear"] < full["linear"] * (0.35 if scheme in ("nf4", "fp4") else 0.4)


def test_fingerprints_hash_the_quantised_bytes_and_their_quant_state(tiny_backbone):
    prints = {scheme: fingerprint(tiny_backbone(quantization=scheme).model) for scheme in SCHEMES}
    assert len(set(prints.values())) == len(SCHEMES)
    assert all(fingerprint(tiny_backbone(quantization=s).model) == prints[s] for s in SCHEMES)  # stable
    nf4 = tiny_backbone(quantization="nf4", fresh=True)
    first_linear(nf4).weight.quant_state.absmax[0] += 1  # the quant state alone
    assert fingerprint(nf4.model) != prints["nf4"]
    int8 = tiny_backbone(quantization="int8", fresh=True)
    first_linear(int8).weight.SCB[0] += 1
    assert fingerprint(int8.model) != prints["int8"]
    torchao = tiny_backbone(quantization="int8_weight_only", fresh=True)
    first_linear(torchao).weight.scale[0] += 1  # torchao's inner tensors
    assert fingerprint(torchao.model) != prints["int8_weight_only"]


# Every family on 4-bit; 8-bit on an encoder and the seq2seq family (T5 keeps its `wo` layers out); torchao on BART
# and an encoder with a head. GPT-2's Conv1D layers: bitsandbytes only (torchao's refusal is tested below).
FAMILY_RUNS = [*(("nf4", a) for a in ("bert", "bert_head", "t5", "bart", "gpt2")), ("int8", "bert"), ("int8", "t5"),
               ("int8_weight_only", "bart"), ("int8_weight_only", "bert_head")]


@pytest.mark.parametrize(("scheme", "architecture"), FAMILY_RUNS)
def test_every_family_trains_a_prompt_on_a_quantised_backbone(tiny_backbone, method_module, make_batch,
                                                             template_for, architecture, scheme):
    backbone = tiny_backbone(architecture, quantization=scheme)
    before = fingerprint(backbone.model)
    module = method_module("prompt_tuning", backbone, WORDS, n=4)
    batch = make_batch(backbone, TEXTS, template_for("prompt_tuning", 4), labels=[0, 1, 1])
    optimizer = torch.optim.Adam(module.trainable_parameters(), lr=0.05)
    module.train()
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(module(batch), batch["labels"]).backward()
        assert module.prompt.grad.abs().sum() > 0 and module.prompt.dtype == torch.float32
        optimizer.step()
    assert fingerprint(backbone.model) == before


def input_gradient(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    leaf = x.clone().requires_grad_(True)
    layer(leaf).pow(2).sum().backward()
    return leaf.grad


def test_a_4bit_layer_keeps_its_gradient_after_an_eval_forward_without_grad(tiny_backbone):
    layer = first_linear(tiny_backbone(quantization="nf4"))
    x = torch.randn(3, 32)
    before = input_gradient(layer, x)
    with torch.no_grad():
        layer(x)  # a validation pass: eval mode, an input that needs no grad
    assert not undifferentiable_layers(tiny_backbone(quantization="nf4").model)
    assert torch.equal(input_gradient(layer, x), before)


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="bitsandbytes repacks 4-bit weights on avx512_bf16 "
                    "CPUs only")
def test_a_4bit_layer_repacked_for_cpu_inference_loses_its_gradient_and_the_step_is_refused(tiny_backbone):
    backbone = tiny_backbone(quantization="nf4", fresh=True)
    layer = backbone.model.model.layers[0].mlp.down_proj  # 64 inputs: one 4-bit block per row, as repacking needs
    x = torch.randn(3, 64)
    layer.support_avx512bf16_for_cpu = True  # bitsandbytes' default, which loading switches off
    with torch.no_grad():
        layer(x)  # a validation pass: eval mode, an input that needs no grad
    assert undifferentiable_layers(backbone.model) == ["model.layers.0.mlp.down_proj"]
    assert input_gradient(layer, x) is None  # the packed kernel has no backward: the gradient is dropped
    with pytest.raises(ConfigError, match=r"^backbone\.quantization='nf4' is invalid: 1 4-bit layers "
                       r"\(model\.layers\.0\.mlp\.down_proj, \.\.\.\) were repacked") as refused:
        QuantizedGradientGuard(backbone.model, "nf4").on_train_batch_start(None, None, None, 0)
    assert "\n" not in str(refused.value)


def test_a_first_step_without_any_gradient_is_refused_in_one_line(tiny_backbone):
    module = torch.nn.Linear(2, 2)
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    guard = QuantizedGradientGuard(tiny_backbone(quantization="nf4").model, "nf4")
    with pytest.raises(ConfigError, match=r"^backbone\.quantization='nf4' is invalid: the trainable tensors got no "
                       r"gradient on the first training step"):
        guard.on_after_backward(None, module)
    module.weight.grad[0, 0] = 1.0
    QuantizedGradientGuard(tiny_backbone(quantization="nf4").model, "nf4").on_after_backward(None, module)


def test_a_backbone_the_library_leaves_unquantised_is_refused_in_one_line(tiny_backbone):
    with pytest.raises(ConfigError) as refused:
        tiny_backbone("gpt2", quantization="int8_weight_only", fresh=True)
    assert str(refused.value) == ("backbone.quantization='int8_weight_only' is invalid: torchao quantised none of "
                                  "GPT2LMHeadModel's layers (Conv1D, LayerNorm, Linear); on this model use int8, nf4, "
                                  "fp4 or none")


def test_quantisation_settings_that_cannot_run_are_refused_in_one_line(monkeypatch):
    def refused(backbone: dict, device: str = "cpu", fsdp: bool = False) -> str:
        with pytest.raises(ConfigError) as error:
            check_quantization(backbone, device, fsdp)
        assert "\n" not in str(error.value)
        return str(error.value)

    assert refused({"quantization": "int4"}) == ("backbone.quantization='int4' is invalid: allowed: none, int8, nf4, "
                                                 "fp4, int8_weight_only")
    assert refused({"quantization": "int8_weight_only"}, "mps").startswith(
        "backbone.quantization='int8_weight_only' is invalid: torchao 0.18.0 does not run on mps (it runs on cpu, "
        "cuda)")
    assert "FSDP cannot shard quantised weights" in refused({"quantization": "nf4"}, fsdp=True)
    assert check_quantization({"quantization": "none"}, "mps", fsdp=True).scheme == "none"
    assert check_quantization({}, "cpu").scheme == "none"  # a config written before the setting existed
    monkeypatch.setattr("softprompt.backbones.quantization.library_installed", lambda name: name != "bitsandbytes")
    assert refused({"quantization": "fp4"}) == (
        "backbone.quantization='fp4' is invalid: needs bitsandbytes, which is not installed (pip install "
        "'softprompt[quant]'); allowed without it: none, int8_weight_only")
    assert check_quantization({"quantization": "int8_weight_only"}, "cpu").library == "torchao"


def test_the_backbone_cache_keys_on_the_quantisation(tiny_backbone):
    from pathlib import Path

    from softprompt.backbones.cache import BackboneCache

    cache, folder = BackboneCache(), Path("/nonexistent-cache-not-needed")
    nf4 = cache.get(tiny_backbone.config(quantization="nf4"), folder, 2)
    full = cache.get(tiny_backbone.config(quantization="none"), folder, 2)
    assert (nf4.quantization, full.quantization) == ("nf4", "none")
    assert cache.get(tiny_backbone.config(quantization="nf4"), folder, 2) is nf4 and cache.hits == 1
