"""backbone.dropout: off means no dropout anywhere in the frozen backbone, with or without gradient
checkpointing (whose layers must still be recomputed in backward); on means real dropout."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
from transformers import AutoConfig
from transformers.modeling_layers import GradientCheckpointingLayer

from softprompt.backbones import Backbone, load_backbone
from softprompt.backbones.loading import freeze
from softprompt.training.distributed import transformer_layer_policy

ARCHS = ["llama", "bert", "t5", "bart"]
METHODS = ["prompt_tuning", "prefix_tuning"]
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]
N = 4
HIGH = 0.5  # every dropout probability of the tiny configs: a leak changes nearly every output


@pytest.fixture(scope="module")
def leaky_backbone(tiny_backbone):
    """`leaky_backbone(architecture, gradient_checkpointing=False)`: a new tiny random backbone of a shipped preset
    with every dropout / layerdrop probability its config has set HIGH."""

    def load(architecture: str, gradient_checkpointing: bool = False) -> Backbone:
        cfg = tiny_backbone.config(architecture, gradient_checkpointing=gradient_checkpointing)
        model_config = cfg["random_init"]["config"]
        defaults = AutoConfig.for_model(model_config["model_type"]).to_dict()
        probabilities = [k for k, v in defaults.items()
                         if ("dropout" in k or "layerdrop" in k) and (v is None or isinstance(v, float))]
        assert probabilities, architecture
        model_config.update(dict.fromkeys(probabilities, HIGH))
        return load_backbone(cfg, Path("/nonexistent-cache-not-needed"))

    return load


def words_for(backbone: Backbone) -> list[list[str]]:
    return [["n"], ["p"]] if backbone.family in ("masked_lm", "seq2seq") else [[" bad"], [" good"]]


@pytest.fixture(scope="module")
def build(leaky_backbone, method_module, make_batch, template_for):
    """`build(architecture, method, checkpointing, dropout=False)`: (leaky backbone, method module, batch)."""

    def make(architecture: str, method: str, checkpointing: bool, dropout: bool = False):
        backbone = leaky_backbone(architecture, gradient_checkpointing=checkpointing)
        module = method_module(method, backbone, words_for(backbone), n=N, init="random_normal", dropout=dropout)
        batch = make_batch(backbone, TEXTS, template_for(method, N), labels=[0, 1, 1])
        return backbone, module, batch

    return make


def count_layer_runs(model: torch.nn.Module) -> list[int]:
    """Calls of the first checkpointed layer's attention: it runs again when backward recomputes the layer."""
    layer = next(m for m in model.modules() if isinstance(m, GradientCheckpointingLayer))
    attention = next(m for m in layer.modules() if hasattr(m, "is_causal") and hasattr(m, "layer_idx"))
    calls: list[int] = []
    attention.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("architecture", ARCHS)
def test_without_backbone_dropout_training_forwards_equal_the_eval_forward(architecture, method, checkpointing, build):
    backbone, module, batch = build(architecture, method, checkpointing)
    assert backbone.model.is_activation_checkpointing == checkpointing
    module.eval()
    with torch.no_grad():
        reference = module(batch)

    module.train()
    calls = count_layer_runs(backbone.model)
    first = module(batch)
    forward_calls = len(calls)
    F.cross_entropy(first, batch["labels"]).backward()
    # Checkpointing really runs: the layer is recomputed in backward (and only then).
    assert len(calls) == (2 if checkpointing else 1) * forward_calls > 0
    second = module(batch)

    assert torch.equal(first, second)
    assert torch.equal(first.detach(), reference)
    trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert trainable
    for name, param in trainable.items():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert any(bool(p.grad.abs().sum()) for p in trainable.values())
    assert not any(m.training for m in backbone.model.modules())  # no dropout can run anywhere


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("architecture", ARCHS)
def test_backbone_dropout_true_really_drops_out_in_training(architecture, checkpointing, build):
    backbone, module, batch = build(architecture, "prompt_tuning", checkpointing, dropout=True)
    module.train()
    assert backbone.model.training
    first, second = module(batch), module(batch)
    assert not torch.equal(first, second)
    F.cross_entropy(second, batch["labels"]).backward()
    assert module.prompt.grad is not None and bool(module.prompt.grad.abs().sum())
    module.eval()
    with torch.no_grad():
        assert torch.equal(module(batch), module(batch))


@pytest.mark.parametrize("architecture", ARCHS)
def test_checkpointing_replays_the_dropout_masks_of_the_forward(architecture, build):
    def run(checkpointing: bool):
        _, module, batch = build(architecture, "prefix_tuning", checkpointing, dropout=True)
        module.train()
        torch.manual_seed(7)
        scores = module(batch)
        F.cross_entropy(scores, batch["labels"]).backward()
        return scores.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}

    plain_scores, plain = run(False)
    checkpointed_scores, checkpointed = run(True)
    assert torch.equal(plain_scores, checkpointed_scores)
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_a_reused_backbone_follows_each_jobs_dropout_setting(leaky_backbone, method_module, make_batch, template_for):
    """The backbone cache hands one model object to consecutive jobs (after `freeze`)."""
    backbone = leaky_backbone("bart", gradient_checkpointing=True)
    words = words_for(backbone)
    batch = make_batch(backbone, TEXTS, template_for("prompt_tuning", N), labels=[0, 1, 1])
    for dropout in (False, True, False):
        freeze(backbone.model)
        module = method_module("prompt_tuning", backbone, words, n=N, init="random_normal", dropout=dropout)
        module.train()
        assert torch.equal(module(batch), module(batch)) is not dropout


def test_a_deepcopied_checkpointed_backbone_recomputes_with_its_own_weights(build):
    backbone, module, batch = build("bart", "prompt_tuning", checkpointing=True)
    module.train()  # a copy of a backbone that has trained, as the benchmark's baselines take one
    copied = copy.deepcopy(backbone.model)

    def logits(model: torch.nn.Module, grad: bool = False) -> torch.Tensor:
        embeds = backbone.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(grad)
        return model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                     decoder_input_ids=batch["input_ids"][:, :3]).logits

    with torch.no_grad():
        expected = logits(backbone.model)
    assert [type(m) for m in copied.modules()] == [type(m) for m in backbone.model.modules()]
    calls = count_layer_runs(copied)
    out = logits(copied, grad=True)
    forward_calls = len(calls)
    out.sum().backward()
    assert len(calls) == 2 * forward_calls  # still checkpointed, in eval mode
    assert torch.equal(out.detach(), expected)
    with torch.no_grad():
        for param in copied.model.encoder.layers[0].parameters():
            param.add_(1.0)
        assert not torch.equal(logits(copied), expected)  # the copy runs its own weights
    with torch.no_grad():
        assert torch.equal(logits(backbone.model), expected)


def test_checkpointed_layers_recompute_inside_fsdp_units(tmp_path, build):
    """FSDP wraps each GradientCheckpointingLayer as a unit; the recompute runs inside it (one process, gloo)."""
    def run(sharded: bool):
        backbone, module, batch = build("bart", "prefix_tuning", checkpointing=True)
        model = module
        if sharded:
            model = FSDP(module, auto_wrap_policy=transformer_layer_policy(), use_orig_params=True,
                         device_id=torch.device("cpu"))
            layers = sum(isinstance(m, GradientCheckpointingLayer) for m in backbone.model.modules())
            assert sum(isinstance(m, FSDP) for m in model.modules()) == 1 + layers  # the root + one per layer
        model.train()
        calls = count_layer_runs(backbone.model)
        scores = model(batch)
        forward_calls = len(calls)
        F.cross_entropy(scores, batch["labels"]).backward()
        assert len(calls) == 2 * forward_calls
        return scores.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}

    plain_scores, plain = run(False)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        sharded_scores, sharded = run(True)
    finally:
        dist.destroy_process_group()
    assert torch.allclose(plain_scores, sharded_scores, atol=1e-6)
    assert plain.keys() == sharded.keys() and plain
    for name in plain:
        assert torch.allclose(plain[name], sharded[name], atol=1e-6), name
