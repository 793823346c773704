"""Prompt tuning, P-tuning, prefix tuning and P-tuning v2: parameter-count formulas, where the prompt goes, how it
starts; and every preset's nonsensical settings, refused naming their key. (What every method must do is in
test_method_contract.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from softprompt.backbones.attention_prefix import PREFIX_KWARG
from softprompt.config.compose import compose_train
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.methods import method_class, preset_classes
from softprompt.methods.checks import check_method

METHODS = ["p_tuning_lstm", "p_tuning_mlp", "p_tuning_v2", "prefix_tuning", "prompt_tuning"]  # method_settings
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]
WORDS = [[" bad"], [" good"]]  # multi-token words with the byte-level tokenizer
N = 4


def lstm_params(d: int, h: int) -> int:
    first = 2 * (4 * h * d + 4 * h * h + 8 * h)
    second = 2 * (4 * h * 2 * h + 4 * h * h + 8 * h)
    return first + second + (2 * h * 2 * h + 2 * h) + (2 * h * d + d)


@pytest.fixture(scope="module")
def expected_counts(method_settings):
    """`expected_counts(method)`: (trainable, folded) for tiny_random: hidden 32, 2 layers, 2 kv heads of dim 8."""
    return lambda method: _expected_counts(method, method_settings[method])


def _expected_counts(method: str, settings: dict) -> tuple[int, int]:
    d, layers, kv_dim = 32, 2, 16
    flat = layers * 2 * kv_dim
    h = settings.get("encoder_hidden") or settings.get("reparam_hidden") or 0
    return {
        "prompt_tuning": (N * d, N * d),
        "p_tuning_mlp": (N * d + (d * h + h) + (h * h + h) + (h * d + d), N * d),
        "p_tuning_lstm": (N * d + lstm_params(d, h), N * d),
        "prefix_tuning": (N * kv_dim + (kv_dim * h + h) + (h * flat + flat), N * flat),
        "p_tuning_v2": (N * flat, N * flat),
    }[method]


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone()


@pytest.mark.parametrize("method", METHODS)
def test_parameter_counts_match_their_formulas(backbone, method, method_module, expected_counts):
    module = method_module(method, backbone, WORDS, n=N)
    assert (module.num_trainable_params(), module.num_folded_params()) == expected_counts(method)
    assert all(not n.startswith("backbone.") for n, p in module.named_parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def train_a_little(make_batch, template_for):
    """`train_a_little(module, backbone, method, steps=3)`: a few Adam steps on TEXTS."""

    def train(module, backbone, method, steps: int = 3) -> None:
        optimizer = torch.optim.Adam(module.trainable_parameters(), lr=0.05)
        batch = make_batch(backbone, TEXTS, template_for(method, N), labels=[0, 1, 1])
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(module(batch), batch["labels"]).backward()
            optimizer.step()

    return train


def test_p_tuning_places_the_prompt_at_slots_between_anchors(backbone, make_batch, method_module):
    module = method_module("p_tuning_lstm", backbone, WORDS, n=3)
    batch = make_batch(backbone, ["fine"], "[P:2]{text} ?[P:1] It was")
    with torch.no_grad():
        embeds = module.embed_inputs(batch)[0]
        prompt = module.prompt_embeddings()
    slots = batch["slot_ids"][0]
    assert slots.tolist().index(2) > slots.tolist().index(1) + 1  # anchor text between the slots
    for position, slot in enumerate(slots.tolist()):
        expected = prompt[slot] if slot >= 0 else backbone.model.get_input_embeddings().weight[
            batch["input_ids"][0, position]]
        assert torch.equal(embeds[position], expected)


def test_prefix_text_init_is_the_words_own_activations(backbone, make_batch, method_module):
    """A prefix initialised from real words acts exactly like those words preceding the input."""
    text = "so it goes"
    module = method_module("p_tuning_v2", backbone, WORDS, n=len(text), init="text", init_text=text)
    words = backbone.tokenizer(text, add_special_tokens=False).input_ids
    assert len(words) == len(text)  # byte-level: one token per character
    batch = make_batch(backbone, ["fine"], "{text}")
    with torch.no_grad():
        ours = module.hidden_states(batch)
        reference = backbone.model.base_model(input_ids=torch.cat([torch.tensor([words]), batch["input_ids"]], 1))
    assert torch.allclose(ours[0], reference.last_hidden_state[0, len(words):], atol=1e-5)


def test_prefix_is_computed_once_per_forward(backbone, monkeypatch, make_batch, method_module, template_for):
    module = method_module("prefix_tuning", backbone, WORDS, n=N)
    calls = []
    original = module.reparam.forward
    monkeypatch.setattr(module.reparam, "forward", lambda x: calls.append(1) or original(x))
    module(make_batch(backbone, TEXTS, template_for("prefix_tuning", N)))
    assert len(calls) == 1
    assert PREFIX_KWARG in module.attention_kwargs()


def preset(name: str, **changes) -> dict:
    """A method preset as softprompt-train composes it, with some settings changed."""
    method = OmegaConf.to_container(compose_train([f"method={name}"]).method, resolve=True)
    return {**method, **changes}


DROPPED = object()  # a setting left out of the preset


@pytest.mark.parametrize(
    ("name", "changes", "key", "message"),  # a preset (composed in the test) with some settings changed
    [
        ("hard_prompt", {"init": "class_labels"}, "method.init", "hard_prompt has no trainable tensors"),
        ("hard_prompt", {"num_demonstrations": -1}, "method.num_demonstrations", ">= 0"),
        ("p_tuning", {"encoder": "gru"}, "method.encoder", "none, mlp, lstm"),
        ("prefix_tuning", {"reparam": "lora"}, "method.reparam", "mlp, none"),
        ("prompt_tuning", {"num_virtual_tokens": 0}, "method.num_virtual_tokens", "integer >= 1"),
        ("prompt_tuning", {"init_range": float("nan")}, "method.init_range", "finite number > 0"),
        ("prompt_tuning", {"slots": "none"}, "method.slots", "allowed: front, template"),
        ("p_tuning", {"slots": "template"}, "method.template", "slots=template needs a template"),
        ("p_tuning", {"encoder_dropout": 1.0}, "method.encoder_dropout", ">= 0 and < 1"),
        ("prefix_tuning", {"encoder": "lstm"}, "method.encoder", "is not a setting of prefix_tuning"),
        ("prefix_tuning", {"zero_init": DROPPED}, "method.zero_init", "is missing"),
        ("residual_prompt_tuning", {"residual_hidden": 0}, "method.residual_hidden", "integer >= 1"),
        ("residual_prompt_tuning", {"encoder": "mlp"}, "method.encoder", "allowed: none"),
        ("residual_prompt_tuning", {"residual_dropout": 1.0}, "method.residual_dropout", ">= 0 and < 1"),
        ("dept", {"lowrank_rank": 0}, "method.lowrank_rank", "integer >= 1"),
        ("dept", {"lowrank_lr": 0.0}, "method.lowrank_lr", "finite number > 0"),
        ("dept", {"lowrank_positions": None}, "method.lowrank_positions", "integer >= 1"),
        ("late_prompt_tuning", {"generator": "appg"}, "method.generator", "allowed: npg, none"),
        ("late_prompt_tuning", {"insert_layer": -1}, "method.insert_layer", ">= 0"),
        ("late_prompt_tuning", {"init": "vocab"}, "method.init", "generator=npg starts from PyTorch's Linear init"),
        ("late_prompt_tuning", {"slots": "template"}, "method.slots", "allowed: front"),
        ("late_prompt_tuning", {"reparam": "mlp"}, "method.reparam", "is not a setting of late_prompt_tuning"),
        (None, {"name": "x", "_target_": "softprompt.methods.nope.Nope", "slots": "none"}, "method._target_",
         "importable"),  # no preset: these settings alone
    ],
)
def test_nonsensical_method_settings_are_rejected(name, changes, key, message):
    method = {**(preset(name) if name else {}), **changes}
    method = {k: v for k, v in method.items() if v is not DROPPED}
    with pytest.raises(ConfigError) as raised:
        check_method(method)
    assert str(raised.value).startswith(key) and message in str(raised.value)


def test_configs_written_before_each_method_had_its_module_find_its_class():
    """Artifacts and metrics.json of earlier runs name the shared modules the first four methods lived in."""
    old = {"prompt_tuning": "input_level.InputLevelPrompt", "p_tuning": "input_level.InputLevelPrompt",
           "prefix_tuning": "attention_level.AttentionLevelPrefix",
           "p_tuning_v2": "attention_level.AttentionLevelPrefix"}
    for name, target in old.items():
        assert method_class({"_target_": f"softprompt.methods.{target}", "name": name}) is preset_classes()[name]
    assert {name: cls.__module__.rsplit(".", 1)[1] for name, cls in preset_classes().items() if name in old} == {
        name: name for name in old}  # each in the module named for it


def test_zero_init_starts_prefix_tuning_from_an_all_zero_prefix(backbone, method_module, train_a_little):
    module = method_module("prefix_tuning", backbone, WORDS, n=N, zero_init=True)
    assert torch.count_nonzero(module.flat_prefix()) == 0
    train_a_little(module, backbone, "prefix_tuning", steps=2)
    assert torch.count_nonzero(module.flat_prefix()) > 0  # and it trains away from zero


def test_p_tuning_encoder_starts_at_word_embedding_scale(backbone, method_module):
    module = method_module("p_tuning_lstm", backbone, WORDS, n=8, match_embedding_std=True)
    target = backbone.model.get_input_embeddings().weight.std()
    assert torch.allclose(module.prompt_embeddings().std(), target, rtol=1e-4)


def test_non_finite_loss_stops_training_with_a_clear_error(backbone, make_batch, method_module, template_for,
                                                           lightning_module):
    module = lightning_module(method_module("prompt_tuning", backbone, WORDS, n=N))
    with torch.no_grad():
        module.prompt[0, 0] = float("nan")
    batch = make_batch(backbone, TEXTS, template_for("prompt_tuning", N), labels=[0, 1, 1])
    with pytest.raises(SoftPromptError, match=r"train/loss is nan at step 0 of prompt_tuning"):
        module.training_step(batch, 0)


def test_prefix_mlp_starts_from_the_words_activations(backbone, method_module, expected_counts):
    """With reparam=mlp, word-based inits solve the MLP's last layer to output the activations exactly."""
    mlp = method_module("prefix_tuning", backbone, WORDS, n=N, init="text", init_text="so it goes")
    direct = method_module("p_tuning_v2", backbone, WORDS, n=N, init="text", init_text="so it goes")
    with torch.no_grad():
        assert torch.allclose(mlp.flat_prefix(), direct.prefix, atol=1e-5)
    assert mlp.num_trainable_params() == expected_counts("prefix_tuning")[0]
