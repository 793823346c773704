"""Fixtures of the method tests: any method preset built on a tiny backbone, as `method=NAME` would build it; gradients
with and without checkpointing."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# Small sizes for tiny backbones (32 wide): only what a preset sizes for real models, and no dropout, so that two
# forwards of the same module agree.
TINY_SETTINGS = {
    "p_tuning": {"encoder_hidden": 12},
    "prefix_tuning": {"reparam_hidden": 16},
    "p_tuning_v2": {"reparam_hidden": 16},
    "residual_prompt_tuning": {"residual_hidden": 12},
    "dept": {"lowrank_rank": 4, "lowrank_positions": 64},
    "late_prompt_tuning": {"generator_hidden": 8, "generator_dropout": 0.0},
}
INIT_SETTINGS = ("init_text", "init_std", "init_range")  # what the init context reads from the method config


def preset_words(backbone) -> list[list[str]]:
    """Label words: one token each where the family scores one token (masked LM, seq2seq), several elsewhere."""
    return [["n"], ["p"]] if backbone.family in ("masked_lm", "seq2seq") else [[" bad"], [" good"]]


@pytest.fixture(scope="session")
def preset_settings() -> Callable[..., dict]:
    """`preset_settings(name, n=3, folded=False, **changes)`: conf/method/NAME.yaml as softprompt-train composes it,
    at tiny sizes with `n` virtual tokens (where it has any); `folded=True`: the folded form's settings (what an
    artifact builds)."""
    from omegaconf import OmegaConf

    from softprompt.config.compose import compose_train
    from softprompt.methods import preset_classes

    composed: dict[str, dict] = {}
    classes = preset_classes()

    def settings(name: str, n: int = 3, folded: bool = False, **changes) -> dict:
        if name not in composed:
            composed[name] = OmegaConf.to_container(compose_train([f"method={name}"]).method, resolve=True)
        method = {**composed[name], **TINY_SETTINGS.get(name, {})}
        if method["num_virtual_tokens"]:
            method["num_virtual_tokens"] = n
        if folded:
            method.update(classes[name].folded_config)
        return {**method, **changes}

    return settings


@pytest.fixture(scope="session")
def preset_module(preset_settings, init_context, classification_objective) -> Callable[..., object]:
    """`preset_module(name, backbone, n=3, seed=0, folded=False, dropout=False, **changes)`: the module of method
    preset `name` (see `preset_settings`) scoring `preset_words(backbone)` on `backbone`, built as a run builds it."""
    import torch

    from softprompt.data.verbalizer import label_token_ids
    from softprompt.methods import build_method, preset_classes

    classes = preset_classes()

    def build(name: str, backbone, n: int = 3, seed: int = 0, folded: bool = False, dropout: bool = False,
              **changes):
        method = preset_settings(name, n=n, folded=folded, **changes)
        words = preset_words(backbone)
        token_ids = label_token_ids(words, backbone.tokenizer)
        context = {k: method[k] for k in INIT_SETTINGS if method.get(k) is not None}
        torch.manual_seed(seed)  # encoder / MLP weights
        return build_method(classes[name].parse_config(method), backbone=backbone,
                            objective=classification_objective(backbone, words), dropout=dropout,
                            init_context=lambda: init_context(backbone, token_ids, seed=seed, **context))

    return build


@pytest.fixture(scope="session")
def preset_template() -> Callable[..., str]:
    """`preset_template(settings, task_template="Review: {text}\\nSentiment:")`: the task template with the preset's
    front slots (`[P:n]`) where its prompt takes input positions."""

    def template(settings: dict, task_template: str = "Review: {text}\nSentiment:") -> str:
        front = settings.get("slots") == "front" and settings["num_virtual_tokens"]
        return f"[P:{settings['num_virtual_tokens']}]{task_template}" if front else task_template

    return template


@pytest.fixture(scope="session")
def peft_exportable(preset_settings) -> Callable[[str], bool]:
    """`peft_exportable(name)`: whether method preset `name` declares a PEFT form whose saved adapter holds its folded
    tensors on a causal LM (softprompt-export writes it); False where the method says PEFT cannot hold it."""
    from softprompt.methods import preset_classes
    from softprompt.methods.base import NotRepresentable

    classes = preset_classes()

    def exportable(name: str) -> bool:
        cls = classes[name]
        try:
            form = cls.peft_form(cls.parse_config(preset_settings(name)), "causal_lm")
        except NotRepresentable:
            return False
        return form.export_refusal is None

    return exportable


@pytest.fixture(scope="session")
def checkpointing_gradients(tiny_backbone, make_batch) -> Callable[..., tuple]:
    """`checkpointing_gradients(build, texts, template, architecture="llama", layer=0, prepare=None)`: one verbalizer
    cross-entropy backward without and with gradient checkpointing, each on a fresh backbone (`build(backbone)`
    makes the module; `prepare(batch)` may add to the batch). Asserts that attention layer `layer` really ran again
    in the checkpointed backward and that every trainable gradient is equal (1e-6); returns (plain, checkpointed)
    gradients by parameter name and the two modules."""
    import torch
    import torch.nn.functional as F

    from softprompt.backbones.loading import enable_gradient_checkpointing

    def compare(build, texts, template, architecture="llama", layer=0, prepare=None):
        def gradients(checkpointing: bool):
            backbone = tiny_backbone(architecture, fresh=True)  # checkpointing, and a hook on one attention
            if checkpointing:
                enable_gradient_checkpointing(backbone.model)
            module = build(backbone).train()
            calls = []
            attention = next(m for m in backbone.model.modules()
                             if getattr(m, "layer_idx", None) == layer and hasattr(m, "is_causal"))
            attention.register_forward_hook(lambda *args: calls.append(1))
            batch = make_batch(backbone, texts, template, labels=[0, 1, 1][:len(texts)])
            batch = prepare(batch) if prepare else batch
            F.cross_entropy(module(batch), batch["labels"]).backward()
            return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}, len(calls), module

        plain, plain_calls, plain_module = gradients(False)
        checkpointed, checkpointed_calls, checkpointed_module = gradients(True)
        assert checkpointed_calls == 2 * plain_calls  # the layer really was recomputed in backward
        assert plain.keys() == checkpointed.keys() and plain
        for name in plain:
            assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name
        return plain, checkpointed, (plain_module, checkpointed_module)

    return compare


