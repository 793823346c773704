"""Late prompt tuning: the prompt enters at layer k and nowhere else. Layers below k compute exactly what they
compute without it, the prompt fills the slots entering layer k, the hooks do nothing for other methods, and
cached decoding sees the prompt as a full forward does. Backbones it cannot serve are refused in one line; inspect
describes the generator; PEFT export is refused naming the intermediate layer."""

from __future__ import annotations

import pytest
import torch

from softprompt.artifacts.peft import InteropError, export_peft
from softprompt.cli import inspect as inspect_prompt
from softprompt.data.verbalizer import label_token_ids
from softprompt.errors import ConfigError
from softprompt.methods.late_prompt_tuning import LatePrompt
from softprompt.objectives.decoding import DecodingConfig

N = 3
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]
TEMPLATE = f"[P:{N}]Review: {{text}}\nSentiment:"
PLAIN_TEMPLATE = "Review: {text}\nSentiment:"


def words_for(backbone) -> list[list[str]]:
    return [["n"], ["p"]] if backbone.family == "masked_lm" else [[" bad"], [" good"]]


@pytest.fixture(scope="module")
def late(init_context, classification_objective, method_config):
    """`late(backbone, generator="npg", insert_layer=None, objective=None)`: a late prompt on `backbone` (give it a
    fresh one: the method hooks its layers)."""

    def make(backbone, generator: str = "npg", insert_layer: int | None = None, objective=None) -> LatePrompt:
        words = words_for(backbone)
        torch.manual_seed(0)
        # The generator starts from PyTorch's Linear init: random_uniform names it (it reads no init_context).
        init = "random_normal" if generator == "none" else "random_uniform"
        config = method_config("late_prompt_tuning", num_virtual_tokens=N, init=init, insert_layer=insert_layer,
                               generator=generator, generator_hidden=8, generator_dropout=0.0)
        module = LatePrompt(config, init_context=init_context(backbone, label_token_ids(words, backbone.tokenizer)),
                            backbone=backbone, objective=objective or classification_objective(backbone, words))
        return module.eval()

    return make


def layer_io(layer, pre: bool) -> tuple[list[torch.Tensor], object]:
    """What `layer` reads (pre) or returns, per call, and the hook's handle."""
    seen: list[torch.Tensor] = []
    if pre:
        handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    else:
        handle = layer.register_forward_hook(lambda module, args, out: seen.append(
            out[0] if isinstance(out, tuple) else out))
    return seen, handle


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("generator", ["npg", "none"])
def test_layers_below_k_compute_what_they_compute_without_the_prompt(architecture, generator, late, make_batch,
                                                                    tiny_backbone):
    backbone = tiny_backbone(architecture, fresh=True)
    module = late(backbone, generator)
    k = module.insert_layer
    assert k == 1  # the middle of two layers
    batch = make_batch(backbone, TEXTS, TEMPLATE, padding_side="left")
    plain = make_batch(backbone, TEXTS, PLAIN_TEMPLATE, padding_side="left")
    below, handle = layer_io(module.layers[k - 1], pre=False)
    with torch.no_grad():
        prompted = module.hidden_states(batch)
        positions = (plain["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        unprompted = backbone.model.base_model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"],
                                               position_ids=positions).last_hidden_state
    handle.remove()
    assert len(below) == 2
    ours, reference = (below[0], below[1]) if below[0].shape[1] > below[1].shape[1] else (below[1], below[0])
    real = (batch["attention_mask"] > 0) & (batch["slot_ids"] < 0)
    assert torch.allclose(ours[real], reference[plain["attention_mask"] > 0], atol=1e-6)
    # From layer k on the prompt is read: the output is not the unprompted model's.
    assert not torch.allclose(prompted[real], unprompted[plain["attention_mask"] > 0], atol=1e-3)


@pytest.mark.parametrize("generator", ["npg", "none"])
def test_the_prompt_fills_the_slots_entering_layer_k(generator, late, make_batch, tiny_backbone):
    backbone = tiny_backbone("gpt2", fresh=True)
    module = late(backbone, generator)
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    entering, handle = layer_io(module.layers[module.insert_layer], pre=True)  # after the method's own pre-hook
    below, handle_below = layer_io(module.layers[module.insert_layer - 1], pre=False)
    with torch.no_grad():
        module.hidden_states(batch)
        summary = below[0][torch.arange(len(TEXTS)), batch["answer_index"]]
        expected = module.generator(summary) if generator == "npg" else module.prompt.expand(len(TEXTS), -1, -1)
    handle.remove()
    handle_below.remove()
    slots = batch["slot_ids"] >= 0
    assert torch.allclose(entering[0][slots], expected.reshape(-1, expected.shape[-1]), atol=1e-6)
    if generator == "npg":  # instance-aware: each input its own prompt
        assert not torch.allclose(expected[0], expected[1], atol=1e-3)


def test_the_hooks_do_nothing_for_other_forwards(late, make_batch, tiny_backbone):
    hooked, clean = tiny_backbone("llama", fresh=True), tiny_backbone("llama", fresh=True)
    late(hooked)
    hooks = sum(len(m._forward_pre_hooks) for m in hooked.model.modules())
    late(hooked, insert_layer=0)  # a second late prompt on the same backbone adds no hooks
    assert sum(len(m._forward_pre_hooks) for m in hooked.model.modules()) == hooks
    batch = make_batch(hooked, TEXTS, PLAIN_TEMPLATE, padding_side="left")
    with torch.no_grad():
        outputs = [backbone.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                   .last_hidden_state for backbone in (hooked, clean)]
    assert torch.equal(*outputs)


# One cached step feeds one token (the case of every decoding step), or several.
@pytest.mark.parametrize("targets", [[[5, 6], [8, 9], [10, 0]], [[5, 6, 7], [8, 9, 0], [10, 0, 0]]])
def test_cached_decoding_sees_the_prompt_as_a_full_forward_does(targets, late, make_batch, tiny_backbone,
                                                                generation_objective):
    backbone = tiny_backbone("llama", fresh=True)
    module = late(backbone, objective=generation_objective(backbone))
    batch = make_batch(backbone, TEXTS, TEMPLATE, padding_side="left")
    targets = torch.tensor(targets)
    batch = {**batch, "target_ids": targets, "target_mask": (targets > 0).long()}
    with torch.no_grad():
        full = module.target_hidden(batch)  # one forward, no cache
        cached, tokens = module.score_and_generate(batch, DecodingConfig(max_new_tokens=4), -1)
        assert module.generate(batch, DecodingConfig(max_new_tokens=4), -1) == tokens
    assert torch.allclose(full[batch["target_mask"].bool()], cached[batch["target_mask"].bool()], atol=1e-5)
    for row, text in enumerate(TEXTS):  # greedy decoding, each step a full forward over the whole sequence
        step = make_batch(backbone, [text], TEMPLATE)
        for token in tokens[row]:
            with torch.no_grad():
                logits = module.adapter.vocab_logits(backbone.model, module.hidden_states(step))
            assert int(logits[0, -1].argmax()) == token
            step = {**step, "input_ids": torch.cat([step["input_ids"], torch.tensor([[token]])], dim=1),
                    "attention_mask": torch.cat([step["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1),
                    "slot_ids": torch.cat([step["slot_ids"], torch.tensor([[-1]])], dim=1)}


@pytest.mark.parametrize("generator", ["npg", "none"])
def test_from_artifact_restarts_from_the_trained_tensors(generator, late, make_batch, tiny_backbone, method_config,
                                                         classification_objective):
    backbone = tiny_backbone("llama", fresh=True)
    trained = late(backbone, generator)
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1)
    words = words_for(backbone)
    config = method_config("late_prompt_tuning", num_virtual_tokens=N, init="from_artifact",
                           init_artifact="a trained prompt", insert_layer=None, generator=generator,
                           generator_hidden=8, generator_dropout=0.0)
    restarted = LatePrompt.folded(config, backbone=backbone, objective=classification_objective(backbone, words),
                                  tensors=trained.folded_state()).eval()
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    with torch.no_grad():
        assert torch.equal(restarted(batch), trained(batch))


def test_late_prompt_settings_the_backbone_cannot_take_are_one_line(preset_module, tiny_backbone):
    with pytest.raises(ConfigError, match=r"^method.insert_layer=2 is invalid: the backbone has 2 layers: allowed 0 "
                                          r"to 1 \(null: the middle one, 1\)$"):
        preset_module("late_prompt_tuning", tiny_backbone(fresh=True), insert_layer=2)
    with pytest.raises(ConfigError, match=r"^method='late_prompt_tuning' is invalid: an encoder-decoder backbone is "
                                          "not served"):
        preset_module("late_prompt_tuning", tiny_backbone("t5", fresh=True))


def test_inspect_describes_the_generator_and_where_the_prompt_enters(trained_run, capsys):
    prompt = trained_run("late_prompt_tuning").prompt
    capsys.readouterr()  # training output, if the run was made just now
    inspect_prompt.main([f"prompt={prompt}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("3 virtual tokens inserted before layer 1 of 2, in that layer's hidden space, "
                             "generated per input from the answer position's hidden state entering that layer")
    assert lines[1].startswith("prompt generator: Linear(32, 8), ReLU, Linear(8, 96) = 3 x 32; weight L2 norms ")


def test_peft_export_is_refused_naming_the_intermediate_layer(trained_run, tmp_path):
    with pytest.raises(InteropError, match="intermediate layer"):
        export_peft(trained_run("late_prompt_tuning").prompt, tmp_path / "late")
    assert not (tmp_path / "late").exists()
