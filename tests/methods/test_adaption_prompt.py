"""Adaption prompts (LLaMA-Adapter): zero gates are the frozen model, the same tensors give PEFT's logits on Llama
and an independent eager reference's elsewhere, the backbone stays frozen, checkpointing changes
nothing, the artifact predicts as the run did, and what cannot work is refused in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from peft import AdaptionPromptConfig, get_peft_model
from safetensors.torch import load_file

import softprompt
from softprompt.artifacts.format import TENSORS_FILE, ArtifactError
from softprompt.artifacts.inspect import describe
from softprompt.artifacts.peft import InteropError, export_peft
from softprompt.backbones import fingerprint
from softprompt.config.compose import config_dir
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.methods.adaption_prompt import AdaptionPrompt
from softprompt.methods.checks import check_method
from softprompt.objectives.decoding import DecodingConfig

N = 3
TEXTS = ["short", "a somewhat longer review of a film", "middling"]
WORDS = [["n"], ["p"]]
TEMPLATE = "Review: {text}\nSentiment:"


@pytest.fixture(scope="module")
def adaption(classification_objective, init_context, method_config):
    """`adaption(backbone, layers=None, gate="layer", gates=None, init="random_normal")`: our module; `gates`
    (a list, one value or row per layer) replaces the zero init."""

    def build(backbone, layers: int | None = None, gate: str = "layer", gates=None, init: str = "random_normal"):
        torch.manual_seed(0)
        config = method_config("adaption_prompt", num_virtual_tokens=N, adapter_layers=layers, gate=gate,
                               init=init)
        module = AdaptionPrompt(config, init_context=init_context(backbone, [], init_std=1.0), backbone=backbone,
                                objective=classification_objective(backbone, WORDS))
        if gates is not None:
            with torch.no_grad():
                module.gate.copy_(torch.tensor(gates, dtype=torch.float32).view(module.gate.shape[0], -1))
        return module.eval()

    return build


def logits(module, batch) -> torch.Tensor:
    """Vocabulary logits over every position, the prompt in."""
    with torch.no_grad():
        return module.backbone.get_output_embeddings()(module.hidden_states(batch))


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_zero_gates_give_the_frozen_models_outputs(architecture, adaption, make_batch, tiny_backbone):
    backbone = tiny_backbone(architecture)
    module = adaption(backbone)
    assert not module.gate.any() and module.prompt.abs().sum() > 0  # zero-init gates, random prompts
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        frozen = backbone.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0),
                                use_cache=False).logits
    assert torch.equal(logits(module, batch)[real], frozen[real])  # bit-identical, not merely close
    with torch.no_grad():
        module.gate.fill_(0.5)
    assert not torch.allclose(logits(module, batch)[real], frozen[real], atol=1e-3)  # a gate opens the prompt


def peft_with_our_tensors(module, layers: int):
    """PEFT's ADAPTION_PROMPT on our (fresh) backbone, its adaption_prompt and adaption_gate set to ours."""
    model = get_peft_model(module.backbone, AdaptionPromptConfig(adapter_len=N, adapter_layers=layers,
                                                                 task_type="CAUSAL_LM"))
    adapted = [m for m in model.modules() if hasattr(m, "adaption_gate")]
    assert len(adapted) == layers
    with torch.no_grad():
        for wrapped, prompt, gate in zip(adapted, module.prompt, module.gate, strict=True):
            wrapped.adaption_prompt.copy_(prompt[None])
            wrapped.adaption_gate.copy_(gate)
    return model.eval()


@pytest.mark.parametrize("layers", [1, 2])
def test_logits_match_peft_on_llama(layers, adaption, make_batch, tiny_backbone):
    backbone = tiny_backbone("llama", fresh=True)  # PEFT wraps its attention modules
    module = adaption(backbone, layers=layers, gates=[0.7, -0.4][:layers])
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    ours, scores = logits(module, batch), module(batch)
    with torch.no_grad():
        theirs = peft_with_our_tensors(module, layers)(input_ids=batch["input_ids"],
                                                       attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5), (ours[real] - theirs[real]).abs().max()
    label_ids = [backbone.tokenizer(w[0]).input_ids[0] for w in WORDS]
    answer = theirs[torch.arange(len(TEXTS)), batch["answer_index"]][:, label_ids]
    assert torch.allclose(scores, answer, atol=1e-5)


def eager_reference(backbone, module, batch) -> torch.Tensor:
    """The paper's equation written out with forward hooks on the stock model (none of our attention kwargs):
    each adapted layer's merged attention output, before the output projection, gets
    gate * softmax(q (W_k P)^T / sqrt(d)) (W_v P), with q recomputed from the layer's input (rotary for Llama and
    Qwen2; GPT-2's positions are in its input already)."""
    model = backbone.model
    attentions = {m.layer_idx: m for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int)
                  and hasattr(m, "is_causal")}
    handles, seen = [], {}

    def keep_input(layer):
        def hook(mod, args, kwargs):
            seen[layer] = (kwargs.get("hidden_states", args[0] if args else None), kwargs.get("position_embeddings"))
        return hook

    def add_term(layer, index):
        attention = attentions[layer]

        def hook(mod, args):
            hidden, rotary = seen[layer]
            heads = model.config.num_attention_heads
            head_dim = model.config.hidden_size // heads
            prompt, gate = module.prompt[index], module.gate[index]
            if hasattr(attention, "q_proj"):
                q, k, v = attention.q_proj(hidden), attention.k_proj(prompt), attention.v_proj(prompt)
            else:
                q = attention.c_attn(hidden).split(attention.split_size, dim=-1)[0]
                _, k, v = attention.c_attn(prompt).split(attention.split_size, dim=-1)
            q = q.view(*hidden.shape[:2], heads, head_dim).transpose(1, 2)
            if rotary is not None:
                cos, sin = (t.unsqueeze(1) for t in rotary)
                q = q * cos + torch.cat([-q[..., head_dim // 2:], q[..., :head_dim // 2]], dim=-1) * sin
            k, v = (t.view(N, -1, head_dim).transpose(0, 1).repeat_interleave(heads * head_dim // t.shape[-1], dim=0)
                    for t in (k, v))
            weights = F.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1) * gate.view(1, -1, 1, 1)
            return (args[0] + (weights @ v).transpose(1, 2).reshape(args[0].shape),)
        return hook

    for index, layer in enumerate(module.layers):
        handles.append(attentions[layer].register_forward_pre_hook(keep_input(layer), with_kwargs=True))
        output = attentions[layer].o_proj if hasattr(attentions[layer], "o_proj") else attentions[layer].c_proj
        handles.append(output.register_forward_pre_hook(add_term(layer, index)))
    try:
        with torch.no_grad():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp(min=0), use_cache=False).logits
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("gate", ["layer", "head"])
@pytest.mark.parametrize("architecture", ["llama", "qwen2", "gpt2"])
def test_logits_match_an_eager_reference(architecture, gate, adaption, make_batch, tiny_backbone):
    """Llama checks the reference against PEFT's equation too; PEFT refuses Qwen2 and adds GPT-2's term after
    c_proj, unprojected, so there the reference alone says what is right."""
    backbone = tiny_backbone(architecture, fresh=True)  # hooks on its modules
    gates = [[0.7], [-0.4]] if gate == "layer" else [[0.7, -0.2, 0.3, 1.1], [-0.4, 0.5, 0.9, -1.0]]
    module = adaption(backbone, gate=gate, gates=gates)
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    ours, reference = logits(module, batch), eager_reference(backbone, module, batch)
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], reference[real], atol=1e-5), (ours[real] - reference[real]).abs().max()


def test_training_moves_prompts_and_gates_and_leaves_the_backbone_bit_identical(adaption, make_batch,
                                                                                 tiny_backbone):
    backbone = tiny_backbone("llama", fresh=True)
    before = fingerprint(backbone.model)
    module = adaption(backbone).train()
    start = {k: v.clone() for k, v in module.folded_state().items()}
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=0.05)
    batch = make_batch(backbone, TEXTS, TEMPLATE, labels=[0, 1, 1])
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(module(batch), batch["labels"]).backward()
        optimizer.step()
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {"prompt", "gate"}
    assert module.gate.abs().min() > 0 and not torch.equal(module.prompt, start["prompt"])
    assert fingerprint(backbone.model) == before


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_gradient_checkpointing_gives_the_same_gradients(architecture, adaption, checkpointing_gradients):
    plain, _, _ = checkpointing_gradients(lambda backbone: adaption(backbone, gates=[0.3, -0.5]), TEXTS, TEMPLATE,
                                          architecture, layer=1)  # the top attention, where the prompts are
    assert plain.keys() == {"prompt", "gate"}
    assert plain["prompt"].abs().sum() > 0 and plain["gate"].abs().sum() > 0


def test_cached_decoding_sees_the_prompt_as_a_full_forward_does(adaption, make_batch, tiny_backbone):
    backbone = tiny_backbone("llama")
    module = adaption(backbone, gates=[0.9, -0.7])
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    targets = torch.tensor([[5, 6, 7], [8, 9, 0], [10, 0, 0]])
    batch = {**batch, "target_ids": targets, "target_mask": (targets > 0).long()}
    eos = backbone.tokenizer.eos_token_id
    with torch.no_grad():
        full = module.target_hidden(batch)  # one forward, no cache
        cached, tokens = module.score_and_generate(batch, DecodingConfig(max_new_tokens=4), eos)
    assert torch.allclose(full[batch["target_mask"].bool()], cached[batch["target_mask"].bool()], atol=1e-5)
    for row, text in enumerate(TEXTS):  # greedy decoding, each step a full forward over the whole sequence
        ids = make_batch(backbone, [text], TEMPLATE)["input_ids"]
        for token in tokens[row]:
            step = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            with torch.no_grad():
                assert int(logits(module, step)[0, -1].argmax()) == token
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)


# -- refusals and configs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["bert", "t5"])
def test_an_unsupported_family_is_refused_naming_it(architecture, adaption, tiny_backbone):
    backbone = tiny_backbone(architecture)
    with pytest.raises(ConfigError) as raised:
        adaption(backbone)
    assert str(raised.value).startswith(f"backbone.family='{backbone.family}' is invalid: adaption_prompt needs a "
                                        "causal_lm backbone")


def test_the_cli_refuses_an_unsupported_family_in_one_line(run_as_main, capsys, tmp_path, local_task_overrides):
    status = run_as_main("softprompt.cli.train", "backbone=tiny_random_bert", "method=adaption_prompt",
                         "logger=none", "callbacks=none", *local_task_overrides,
                         "task.verbalizer={negative: n, positive: p}", f"hydra.run.dir={tmp_path / 'run'}")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("softprompt: error:")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert errors[0].startswith("softprompt: error: backbone.family='masked_lm' is invalid: adaption_prompt needs")
    assert not (tmp_path / "run" / "metrics.json").exists()


def preset() -> dict:
    return OmegaConf.to_container(OmegaConf.load(f"{config_dir()}/method/adaption_prompt.yaml"))


@pytest.mark.parametrize(
    ("changes", "key", "message"),
    [
        ({"gate": "token"}, "method.gate", "allowed: layer, head"),
        ({"adapter_layers": 0}, "method.adapter_layers", "integer >= 1 (or null)"),
        ({"num_virtual_tokens": 0}, "method.num_virtual_tokens", "integer >= 1"),
        ({"slots": "front"}, "method.slots", "allowed: none"),
        ({"init": "glove"}, "method.init", "allowed: random_uniform"),
        ({"reparam": "mlp"}, "method.reparam", "is not a setting of adaption_prompt"),
    ],
)
def test_config_errors_name_their_key(changes, key, message):
    with pytest.raises(ConfigError) as raised:
        check_method({**preset(), **changes})
    assert str(raised.value).startswith(key) and message in str(raised.value)


def test_more_adapter_layers_than_the_backbone_has_is_refused_naming_the_key(adaption, tiny_backbone):
    with pytest.raises(ConfigError, match=r"^method.adapter_layers=3 is invalid: LlamaForCausalLM has 2 attention"):
        adaption(tiny_backbone("llama"), layers=3)


def test_the_preset_parses_and_builds_with_every_layer_adapted(adaption, tiny_backbone):
    config = check_method(preset())
    assert (config.adapter_layers, config.gate, config.init, config.init_std) == (None, "layer", "random_normal", 1.0)
    module = adaption(tiny_backbone("llama"))
    assert module.layers == [0, 1] and module.prompt.shape == (2, N, 32) and module.gate.shape == (2, 1)
    assert module.num_trainable_params() == module.num_folded_params() == 2 * N * 32 + 2
    assert adaption(tiny_backbone("llama"), layers=1, gate="head").gate.shape == (1, 4)


def test_initial_state_becomes_the_trainable_tensors_and_a_wrong_shape_is_named(adaption, tiny_backbone,
                                                                                 classification_objective,
                                                                                 init_context, method_config):
    backbone = tiny_backbone("llama")
    state = {"prompt": torch.randn(1, N, 32), "gate": torch.tensor([[0.25]])}
    restart = {"num_virtual_tokens": N, "gate": "layer", "init": "from_artifact", "init_artifact": "a trained prompt"}
    common = {"backbone": backbone, "objective": classification_objective(backbone, WORDS), "tensors": state}
    module = AdaptionPrompt.folded(method_config("adaption_prompt", adapter_layers=1, **restart), **common)
    assert all(torch.equal(module.folded_state()[k], v) for k, v in state.items()) and module.layers == [1]
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {"prompt", "gate"}
    with pytest.raises(SoftPromptError, match=r"^folded prompt has shape \(1, 3, 32\); adaption_prompt expects "
                                              r"\(2, 3, 32\)"):
        AdaptionPrompt.folded(method_config("adaption_prompt", adapter_layers=2, **restart), **common)


# -- a trained run (conftest's trained_run: 1 adapted layer, lr 0.05): artifact, export, mixed batches, inspection --
@pytest.fixture(scope="module")
def trained(trained_run):
    return trained_run("adaption_prompt")


def test_the_artifact_reproduces_the_runs_test_predictions(trained, reloaded_prompt):
    out, metrics = trained
    assert metrics["backbone_fingerprint_start"] == metrics["backbone_fingerprint_end"]
    tensors = load_file(out / "prompt" / TENSORS_FILE)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"prompt": (1, N, 32), "gate": (1, 1)}
    assert tensors["gate"].abs().min() > 0  # trained away from its zero init
    predictor = reloaded_prompt(out)
    lines = describe(predictor, top_k=2)
    assert lines[0].endswith("3 virtual tokens as gated adaption prompts in the top 1 of 2 attention layers "
                             "(a gate per layer; a zero gate leaves its layer as the frozen model's)")
    assert lines[1].startswith(f"layer 1: gate {float(tensors['gate'][0, 0]):+.4f} | prompt L2 norm mean")
    assert len(lines) == 2 + N and lines[2].startswith("  virtual token 0: nearest by cosine: ")


def test_export_and_mixed_batches_are_refused_in_one_line(trained, tmp_path):
    out, _ = trained
    with pytest.raises(InteropError, match=r"^adaption_prompt has no PEFT export: PEFT's ADAPTION_PROMPT is not a "
                                           r"prompt-learning adapter"):
        export_peft(out / "prompt", tmp_path / "peft")
    with pytest.raises(ArtifactError, match="injects its prompt in a way mixed batches cannot reproduce"):
        softprompt.load_many([out / "prompt", out / "prompt"])


def test_the_benchmark_times_it_against_pefts_adaption_prompt(tmp_path, local_task_overrides):
    from softprompt.cli.bench import main as bench_main

    status = bench_main(["backbone=tiny_random", "methods=adaption_prompt", "steps=1", "warmup=0", "seq_len=8",
                         "num_virtual_tokens=3", "batch_size=4", "full_ft=false", f"out={tmp_path / 'bench'}", "--",
                         *local_task_overrides])
    assert status == 0
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {(data, "PEFT") for data in ("synthetic", "real")} <= {(r["data"], r["runner"]) for r in report["rows"]}
