"""Small builders shared by unit tests (tiny random backbone, batches)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from softprompt.backbones import Backbone, load_backbone
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.config.compose import config_dir
from softprompt.data.collate import PadCollator
from softprompt.data.task import TaskConfig, parse_task
from softprompt.data.templates import Template, special_tokens_around
from softprompt.data.verbalizer import label_token_ids
from softprompt.methods.attention_level import AttentionLevelPrefix
from softprompt.methods.hard_prompt import HardPrompt
from softprompt.methods.init import InitContext
from softprompt.methods.input_level import InputLevelPrompt
from softprompt.objectives import ClassificationObjective, GenerationObjective, Objective
from softprompt.objectives.decoding import DecodingConfig

OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 0.01, "weight_decay": 0.0,
             "scheduler": {"name": "constant", "warmup_steps": 0}}


# Tiny random configs of other causal-LM architectures (absolute positions, biases, ...).
ARCHITECTURES = {
    "llama": None,  # conf/backbone/tiny_random.yaml as shipped (GQA)
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 512},
    "qwen2": {"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512},
    "bert": "tiny_random_bert",  # the masked-LM family, as shipped in conf/backbone/
    "t5": "tiny_random_t5",  # the seq2seq family
    "bart": "tiny_random_bart",
    "roberta": {"model_type": "roberta", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "max_position_embeddings": 520},
}
ARCHITECTURES["bert_head"] = ARCHITECTURES["roberta"] | {"model_type": "bert"}  # family encoder_head, below
MASKED_LM = ("bert", "roberta")
SEQ2SEQ = ("t5", "bart")
ENCODER_HEAD = ("bert_head",)


def tiny_backbone(architecture: str = "llama", **settings) -> Backbone:
    preset = ARCHITECTURES[architecture] if isinstance(ARCHITECTURES[architecture], str) else "tiny_random"
    cfg = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "backbone" / f"{preset}.yaml"))
    if isinstance(ARCHITECTURES[architecture], dict):
        cfg["random_init"]["config"] = ARCHITECTURES[architecture]
    if architecture in ENCODER_HEAD:
        cfg["family"] = "encoder_head"
    cfg.update(settings)
    return load_backbone(cfg, Path("/nonexistent-cache-not-needed"))


def init_context(backbone: Backbone, token_ids, seed: int = 0, **overrides) -> InitContext:
    settings = {"init_range": 0.5, "init_std": None, "init_vocab_size": 50, "init_text": "so it goes"}
    settings.update(overrides)
    counts = torch.zeros(len(backbone.tokenizer), dtype=torch.long)
    counts[10:60] = torch.arange(50, 0, -1)  # ids 10..59 are "frequent", 10 the most
    return InitContext(embeddings=backbone.model.get_input_embeddings().weight.detach(),
                       tokenizer=backbone.tokenizer, token_counts=counts, label_token_ids=token_ids,
                       generator=torch.Generator().manual_seed(seed), **settings)


def prompt_module(backbone: Backbone, words: list[list[str]], n: int = 4, init: str = "random_uniform",
                  dropout: bool = False) -> InputLevelPrompt:
    return method_module("prompt_tuning", backbone, words, n=n, init=init, dropout=dropout)


INPUT_SETTINGS = {"encoder_hidden": None, "encoder_dropout": 0.0, "match_embedding_std": False}
PREFIX_SETTINGS = {"reparam_hidden": 16, "zero_init": False}
METHOD_SETTINGS = {  # the method presets' own settings, small sizes for tiny backbones
    "prompt_tuning": {"cls": InputLevelPrompt, **INPUT_SETTINGS, "encoder": "none"},
    "p_tuning_lstm": {"cls": InputLevelPrompt, **INPUT_SETTINGS, "encoder": "lstm", "encoder_hidden": 12},
    "p_tuning_mlp": {"cls": InputLevelPrompt, **INPUT_SETTINGS, "encoder": "mlp", "encoder_hidden": 12},
    "prefix_tuning": {"cls": AttentionLevelPrefix, **PREFIX_SETTINGS, "reparam": "mlp"},
    "p_tuning_v2": {"cls": AttentionLevelPrefix, **PREFIX_SETTINGS, "reparam": "none"},
}
INPUT_LEVEL = ("prompt_tuning", "p_tuning_lstm", "p_tuning_mlp")


def classification(backbone: Backbone, words: list[list[str]]) -> ClassificationObjective:
    return ClassificationObjective(label_token_ids(words, backbone.tokenizer), FAMILY_ADAPTERS[backbone.family],
                                   backbone.hidden_size)


def generation(backbone: Backbone, **decoding) -> GenerationObjective:
    config = DecodingConfig(**({"max_new_tokens": 6} | decoding))
    return GenerationObjective(backbone.tokenizer, config, FAMILY_ADAPTERS[backbone.family])


def method_module(method: str, backbone: Backbone, words: list[list[str]] | None, n: int = 4,
                  init: str = "random_uniform", dropout: bool = False, seed: int = 0,
                  objective: Objective | None = None, **overrides):
    """`words` make a classification module; `words=None` with a generation `objective` a generation one."""
    context_keys = ("init_text", "init_std", "init_range", "init_vocab_size")
    context = {k: overrides.pop(k) for k in context_keys if k in overrides}
    settings = {**METHOD_SETTINGS[method], **overrides}
    cls = settings.pop("cls")
    token_ids = label_token_ids(words, backbone.tokenizer) if words else []
    torch.manual_seed(seed)  # encoder / MLP weights
    return cls(num_virtual_tokens=n, init=init, init_context=init_context(backbone, token_ids, seed=seed, **context),
               backbone=backbone, objective=objective or classification(backbone, words), optimizer=OPTIMIZER,
               name=method, dropout=dropout, **settings)


def hard_prompt_module(backbone: Backbone, words: list[list[str]] | None,
                       objective: Objective | None = None) -> HardPrompt:
    return HardPrompt(backbone=backbone, objective=objective or classification(backbone, words),
                      optimizer=OPTIMIZER, name="hard_prompt")


def template_for(method: str, n: int, task_template: str = "Review: {text}\nSentiment:") -> str:
    return f"[P:{n}]{task_template}" if method in INPUT_LEVEL else task_template


def make_batch(backbone: Backbone, texts: list[str], template: str, padding_side: str = "right",
               labels: list[int] | None = None, max_length: int = 256) -> dict[str, torch.Tensor]:
    parsed = Template.parse(template, ["text"])
    answer = [backbone.tokenizer.mask_token_id] if backbone.family == "masked_lm" else []
    specials = special_tokens_around(backbone.tokenizer)
    rows = []
    for i, text in enumerate(texts):
        r = parsed.render({"text": text}, backbone.tokenizer, max_length, answer, specials)
        rows.append({"input_ids": r.input_ids, "slot_ids": r.slot_ids, "answer_index": r.answer_index,
                     "label": (labels or [0] * len(texts))[i], "row_index": i})
    return PadCollator(backbone.tokenizer.pad_token_id, padding_side)(rows)


def task_config(**task) -> TaskConfig:
    """A typed task config for tests that build DataModules directly: the given keys, plus what a
    classification (or, with type=generation, a generation) task needs and the test does not care about."""
    generation = task.get("type") == "generation"
    filled = {"name": "local", "type": "classification", "metric": "rougeL" if generation else "acc",
              "loss": "lm" if generation else "verbalizer", "prompt_init": "vocab" if generation else "class_labels",
              "splits": {"train": "train", "validation": "validation", "test": "test"}, **task}
    if generation:
        filled.setdefault("generation", {"max_new_tokens": 8, "num_beams": 1})
    return parse_task(filled)
