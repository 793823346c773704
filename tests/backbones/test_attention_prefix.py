"""Attention-level injection: a prefix reaches every attention layer of every family, and an architecture whose
attention it cannot reach is refused in one line."""

from __future__ import annotations

import copy

import pytest
import torch

from softprompt.backbones.attention_prefix import (
    UnreachableAttentionError,
    attention_backend,
    reached_layers,
    use_attention,
    uses_math_kernel,
)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "qwen2", "bert", "t5", "bart", "roberta"])
def test_a_prefix_reaches_every_attention_layer_of_every_family(architecture, tiny_backbone, method_module):
    backbone = tiny_backbone(architecture)
    module = method_module("p_tuning_v2", backbone, [["n"], ["p"]], n=2)
    roles = module.geometry[0]
    reached = reached_layers(backbone.model)
    assert {role: sorted(layers) for role, layers in reached.items()} == {
        role: list(range(count)) for role, count in roles.items()}


def test_an_architecture_whose_attention_a_prefix_cannot_reach_is_refused(tiny_backbone, method_module):
    backbone = tiny_backbone(fresh=True)  # one of its layers gets another attention config
    attention = backbone.model.model.layers[1].self_attn
    config = copy.copy(attention.config)
    config._attn_implementation = "eager"  # this layer no longer calls the attention interface we wrap
    attention.config = config
    with pytest.raises(UnreachableAttentionError, match=r"reaches 1 of 2 self-attention layers"):
        method_module("prefix_tuning", backbone, [["n"], ["p"]], n=2)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "t5", "bert"])
@pytest.mark.parametrize("method", ["prefix_tuning", "prompt_tuning"])
def test_every_attention_backend_gives_the_same_logits_and_gradients(method, architecture, tiny_backbone,
                                                                       method_module, make_batch, template_for):
    """backbone.attention only picks PyTorch's kernels: sdpa (PyTorch's choice) and math agree on padded batches,
    prefix and all, in the forward and the prompt's gradient."""
    backbone = tiny_backbone(architecture, fresh=True)  # its attention implementation is switched here
    module = method_module(method, backbone, [["n"], ["p"]], n=3, init_range=1.0)
    texts = ["a short one", "a much longer text that needs padding here", "mid size"]
    results = {}
    for backend in ("sdpa", "math"):
        use_attention(backbone.model, backend)
        assert attention_backend(backbone.model) == backend
        for side in ("right", "left") if backbone.family == "causal_lm" else ("right",):
            batch = make_batch(backbone, texts, template_for(method, 3), padding_side=side, labels=[0, 1, 0])
            module.zero_grad()
            logits = module(batch)
            logits.logsumexp(-1).sum().backward()
            grads = [p.grad.clone() for p in module.trainable_parameters()]
            results[backend, side] = logits.detach(), grads
    for (_backend, side), (logits, grads) in results.items():
        reference_logits, reference_grads = results["sdpa", side]
        torch.testing.assert_close(logits, reference_logits, atol=1e-5, rtol=1e-5)
        for grad, reference in zip(grads, reference_grads, strict=True):
            torch.testing.assert_close(grad, reference, atol=1e-5, rtol=1e-4)


def test_auto_runs_the_math_kernel_only_for_the_cpu_bfloat16_backward():
    """The CPU flash kernel's bfloat16 backward is several times slower than its forward (docs/results)."""
    assert uses_math_kernel("auto", "cpu", torch.bfloat16, grad=True)
    assert not uses_math_kernel("auto", "cpu", torch.bfloat16, grad=False)
    assert not uses_math_kernel("auto", "cpu", torch.float32, grad=True)
    assert not uses_math_kernel("auto", "cuda", torch.bfloat16, grad=True)
    assert uses_math_kernel("math", "cuda", torch.float32, grad=False)
    assert not uses_math_kernel("sdpa", "cpu", torch.bfloat16, grad=True)


def test_an_unknown_attention_backend_is_refused_in_one_line(make_cfg, tiny_overrides):
    from softprompt.errors import ConfigError
    from softprompt.training.checks import check_config
    from softprompt.training.job import resolved_config

    with pytest.raises(ConfigError, match=r"backbone.attention.*'flash3'.*allowed: auto, sdpa, math"):
        check_config(resolved_config(make_cfg([*tiny_overrides, "backbone.attention=flash3"])))
