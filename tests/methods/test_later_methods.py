"""Residual prompt tuning, DePT and late prompt tuning: what every method must do (frozen backbone, padding
invariance, lossless folding, equal gradients under checkpointing, artifacts that reproduce the run, inspection,
mixed batches or their refusal, PEFT or its refusal, config errors naming their key)."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from peft import PeftModel
from safetensors.torch import load_file

import softprompt
from softprompt.artifacts.format import TENSORS_FILE, ArtifactError
from softprompt.artifacts.peft import InteropError, export_peft
from softprompt.backbones import fingerprint
from softprompt.cli import inspect as inspect_prompt
from softprompt.config.compose import compose_train, config_dir
from softprompt.data.verbalizer import label_token_ids
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.methods import method_class
from softprompt.methods.checks import check_method
from softprompt.methods.dept import DecomposedPrompt
from softprompt.methods.late_prompt_tuning import LatePrompt
from softprompt.methods.residual_prompt_tuning import ResidualPrompt

N = 3
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]
PROMPT_SETTINGS = {"encoder": "none", "encoder_hidden": None, "encoder_dropout": 0.0, "match_embedding_std": False}
LATE_SETTINGS = {"insert_layer": None, "generator_hidden": 8, "generator_dropout": 0.0}
# Module-level settings, small sizes for tiny backbones: (class, preset name, settings).
MODULES = {
    "residual_prompt_tuning": (ResidualPrompt, {**PROMPT_SETTINGS, "residual": True, "residual_hidden": 12,
                                                "residual_dropout": 0.0, "residual_layer_norm": True}),
    "dept": (DecomposedPrompt, {**PROMPT_SETTINGS, "lowrank_rank": 4, "lowrank_positions": 64, "lowrank_alpha": 8.0,
                                "lowrank_lr": 0.01}),
    "late_prompt_tuning": (LatePrompt, {**LATE_SETTINGS, "generator": "npg"}),
    "late_prompt_tuning_plain": (LatePrompt, {**LATE_SETTINGS, "generator": "none"}),
}
METHODS = list(MODULES)
# The folded form of each (what an artifact builds): the residual network computed away, the rest as trained.
FOLDED = {"residual_prompt_tuning": {"residual": False}}
RESIDUAL_MODULE = "residual_prompt_tuning.py"


def words_for(backbone) -> list[list[str]]:
    return [["n"], ["p"]] if backbone.family in ("masked_lm", "seq2seq") else [[" bad"], [" good"]]


@pytest.fixture(scope="module")
def build(init_context, classification_objective, method_config):
    """`build(method, backbone, seed=0, **changes)`: the method module on `backbone` with N virtual tokens."""

    def make(method: str, backbone, seed: int = 0, init: str = "random_uniform", objective=None, **changes):
        cls, settings = MODULES[method]
        words = words_for(backbone)
        torch.manual_seed(seed)
        if settings.get("generator") == "npg":
            init = "random_uniform"  # the generator starts from PyTorch's Linear init, whatever the prompt inits
        config = method_config(method.removesuffix("_plain"), num_virtual_tokens=N, init=init,
                               **{**settings, **changes})
        return cls(config, init_context=init_context(backbone, label_token_ids(words, backbone.tokenizer), seed=seed),
                   backbone=backbone, objective=objective or classification_objective(backbone, words), dropout=False)

    return make


def backbone_for(tiny_backbone, method: str, architecture: str = "llama", **settings):
    """Late prompt tuning puts (inert) hooks on its backbone, so it gets a fresh one; the others share."""
    return tiny_backbone(architecture, fresh=method.startswith("late"), **settings)


def nonzero_lowrank(module) -> None:
    """DePT's B starts at zero (no update): give it values so that the update is exercised."""
    if isinstance(module, DecomposedPrompt):
        with torch.no_grad():
            module.lowrank_b.normal_(0, 0.05)

def assert_padding_invariant(module, backbone, make_batch, sides) -> None:
    """Each text scores the same alone as in a padded batch, for each padding side."""
    module.eval()
    template = f"[P:{N}]Review: {{text}}\nSentiment:"
    with torch.no_grad():
        alone = torch.cat([module(make_batch(backbone, [t], template)) for t in TEXTS])
        for side in sides:
            assert torch.allclose(alone, module(make_batch(backbone, TEXTS, template, padding_side=side)), atol=1e-5)



@pytest.fixture(scope="module")
def train_a_little(make_batch):
    def train(module, backbone, steps: int = 3) -> None:
        optimizer = torch.optim.Adam(module.trainable_parameters(), lr=0.05)
        batch = make_batch(backbone, TEXTS, f"[P:{N}]Review: {{text}}\nSentiment:", labels=[0, 1, 1])
        module.train()
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(module(batch), batch["labels"]).backward()
            optimizer.step()
        module.eval()

    return train


# -- the module ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_training_moves_only_the_methods_tensors(method, build, tiny_backbone, train_a_little):
    backbone = backbone_for(tiny_backbone, method)
    module = build(method, backbone)
    before = fingerprint(backbone.model)
    own = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    train_a_little(module, backbone)
    assert fingerprint(backbone.model) == before
    assert own and all(not name.startswith("backbone.") for name in own)
    assert all(not p.requires_grad for p in backbone.model.parameters())
    moved = [name for name, p in module.named_parameters() if p.requires_grad and not torch.equal(p, own[name])]
    assert moved == list(own)  # every trainable tensor learns (DePT's A once B has left zero)


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "bert", "roberta", "bert_head"])
@pytest.mark.parametrize("method", METHODS)
def test_padding_invariance(method, architecture, build, make_batch, tiny_backbone):
    backbone = backbone_for(tiny_backbone, method, architecture)
    module = build(method, backbone, init="random_normal")
    nonzero_lowrank(module)
    assert_padding_invariant(module, backbone, make_batch, ("right", "left"))


@pytest.mark.parametrize("method", ["residual_prompt_tuning", "dept"])
def test_input_level_methods_serve_seq2seq_with_right_padding(method, build, make_batch, tiny_backbone):
    backbone = tiny_backbone("t5")
    module = build(method, backbone, init="random_normal")
    nonzero_lowrank(module)
    assert_padding_invariant(module, backbone, make_batch, ("right",))


@pytest.mark.parametrize("method", METHODS)
def test_fold_then_reload_gives_identical_outputs(method, build, make_batch, tiny_backbone, train_a_little):
    backbone = backbone_for(tiny_backbone, method)
    module = build(method, backbone)
    train_a_little(module, backbone)
    batch = make_batch(backbone, TEXTS, f"[P:{N}]Review: {{text}}\nSentiment:", padding_side="left")
    with torch.no_grad():
        trained = module(batch)
    folded = module.folded_state()
    fresh = build(method, backbone, seed=7, **FOLDED.get(method, {})).eval()
    fresh.load_folded_state(folded)
    assert fresh.num_trainable_params() == module.num_folded_params()
    with torch.no_grad():
        assert torch.allclose(fresh(batch), trained, atol=1e-6)
    key = next(iter(folded))
    with pytest.raises(SoftPromptError, match="expects"):
        build(method, backbone).load_folded_state({**folded, key: folded[key][:-1]})


@pytest.mark.parametrize("architecture", ["llama", "bert"])
@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_gives_the_same_gradients(method, architecture, build, checkpointing_gradients):
    def module_for(backbone):
        module = build(method, backbone)
        nonzero_lowrank(module)
        return module

    plain, _, _ = checkpointing_gradients(module_for, TEXTS, f"[P:{N}]Review: {{text}}\nSentiment:", architecture)
    for name in plain:
        assert torch.any(plain[name] != 0), name


def test_residual_prompt_is_the_authors_residual_mlp(build, tiny_backbone):
    """P' = LayerNorm(W_up ReLU(W_down P)) + P, the bottleneck m wide; the artifact's folded form is P'."""
    backbone = tiny_backbone()
    module = build("residual_prompt_tuning", backbone)
    down, _, up, norm = module.encoder.module
    assert (down.in_features, down.out_features, up.out_features) == (32, 12, 32)
    with torch.no_grad():
        expected = F.layer_norm(up(torch.relu(down(module.prompt))), (32,), norm.weight, norm.bias) + module.prompt
        assert torch.allclose(module.prompt_embeddings(), expected, atol=1e-6)
        assert torch.equal(module.folded_state()["prompt"], module.prompt_embeddings())
    assert module.num_trainable_params() == N * 32 + (32 * 12 + 12) + (12 * 32 + 32) + 2 * 32
    scaled = build("residual_prompt_tuning", backbone, match_embedding_std=True)
    target = backbone.model.get_input_embeddings().weight.std()
    with torch.no_grad():
        branch = scaled.encoder.module(scaled.prompt)
    assert torch.allclose(branch.std(), target, rtol=0.1)  # the residual branch starts at word-embedding scale


# -- configs -------------------------------------------------------------------------------------------------
def preset(name: str, **changes) -> dict:
    method = OmegaConf.to_container(compose_train([f"method={name}"]).method, resolve=True)
    return {**method, **changes}


def test_presets_parse_into_their_typed_configs():
    for name, cls in (("residual_prompt_tuning", ResidualPrompt), ("dept", DecomposedPrompt),
                      ("late_prompt_tuning", LatePrompt)):
        settings = preset(name)
        config = check_method(settings)
        assert method_class(settings) is cls and isinstance(config, cls.Config) and config.name == name
    assert preset("dept")["lowrank_positions"] == 128  # s: the default task's max_length


@pytest.mark.parametrize(
    ("name", "changes", "key", "message"),
    [
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
    ],
)
def test_nonsensical_settings_are_rejected_naming_their_key(name, changes, key, message):
    with pytest.raises(ConfigError) as raised:
        check_method(preset(name, **changes))
    assert str(raised.value).startswith(key) and message in str(raised.value)


def test_late_prompt_settings_the_backbone_cannot_take_are_one_line(build, tiny_backbone):
    with pytest.raises(ConfigError, match=r"^method.insert_layer=2 is invalid: the backbone has 2 layers: allowed 0 "
                                          r"to 1 \(null: the middle one, 1\)$"):
        build("late_prompt_tuning", tiny_backbone(fresh=True), insert_layer=2)
    with pytest.raises(ConfigError, match=r"^method='late_prompt_tuning' is invalid: an encoder-decoder backbone is "
                                          "not served"):
        build("late_prompt_tuning", tiny_backbone("t5", fresh=True))


# -- runs, artifacts, inspection, mixed batches, PEFT --------------------------------------------------------
RUN = ["backbone=tiny_random", "logger=none", "trainer.max_steps=4", "trainer.val_check_interval=2",
       "data.batch_size=4", "data.eval_batch_size=8", "data.max_samples.validation=null"]
RUNS = {
    "residual_prompt_tuning": ["method.num_virtual_tokens=3", "method.residual_hidden=8"],
    "dept": ["method.num_virtual_tokens=3", "method.lowrank_rank=4"],
    "late_prompt_tuning": ["method.num_virtual_tokens=3", "method.generator_hidden=8"],
}
FOLDED_KEYS = {"residual_prompt_tuning": {"prompt"}, "dept": {"prompt", "lowrank_a", "lowrank_b"},
               "late_prompt_tuning": {f"generator.proj_{side}.{kind}" for side in ("down", "up")
                                      for kind in ("weight", "bias")}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_job, local_task_overrides):
    """`trained(method)`: (run dir, metrics.json) of a 4-step run on the local sentiment task, once per module."""
    runs: dict[str, tuple[Path, dict]] = {}

    def get(method: str) -> tuple[Path, dict]:
        if method not in runs:
            out = tmp_path_factory.mktemp(method) / "run"
            runs[method] = out, run_job([*RUN, *local_task_overrides, f"method={method}", *RUNS[method]], out)
        return runs[method]

    return get


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", list(RUNS))
def test_loaded_prompt_reproduces_the_runs_test_predictions(trained, reloaded_prompt, method):
    out, summary = trained(method)
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
    assert summary["folded_params"] == sum(t.numel() for t in load_file(out / "prompt" / TENSORS_FILE).values())
    predictor = reloaded_prompt(out)
    own = {n for n, _ in predictor.module.named_parameters() if not n.startswith("backbone.")}
    assert own == FOLDED_KEYS[method]


def test_inspect_describes_each_prompt(trained, capsys):
    prompts = {method: trained(method)[0] / "prompt" for method in ("residual_prompt_tuning", "dept",
                                                                    "late_prompt_tuning")}
    capsys.readouterr()  # training output, if the runs were made just now
    inspect_prompt.main([f"prompt={prompts['residual_prompt_tuning']}", "top_k=2"])
    lines = capsys.readouterr().out.splitlines()
    assert "residual_prompt_tuning on tiny_random" in lines[0] and "in the input embedding space (d=32)" in lines[0]
    assert sum(line.startswith("virtual token ") for line in lines) == N
    inspect_prompt.main([f"prompt={prompts['dept']}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "low-rank update A B of the input embeddings: rank 4 over 128 positions, scale 4.0000"
    assert lines[-1].startswith("update L2 norm per position: mean ")
    inspect_prompt.main([f"prompt={prompts['late_prompt_tuning']}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("3 virtual tokens inserted before layer 1 of 2, in that layer's hidden space, "
                             "generated per input from the answer position's hidden state entering that layer")
    assert lines[1].startswith("prompt generator: Linear(32, 8), ReLU, Linear(8, 96) = 3 x 32; weight L2 norms ")


def test_residual_prompts_join_mixed_batches_and_the_others_are_refused(trained, positive_reviews, tmp_path):
    residual = trained("residual_prompt_tuning")[0] / "prompt"
    copy = Path(shutil.copytree(residual, tmp_path / "copy"))
    mixed = softprompt.load_many({"a": residual, "b": copy})
    alone = softprompt.load(residual).score(positive_reviews[:4])
    for got, want in zip(mixed.score(positive_reviews[:4], ["a", "b", "b", "a"]), alone, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    for method in ("dept", "late_prompt_tuning"):
        with pytest.raises(ArtifactError, match=rf"^prompt '1': method {method} \(.*\) injects its prompt in a way "
                                                "mixed batches cannot reproduce row by row; predict with "
                                                "softprompt.load$"):
            softprompt.load_many([residual, trained(method)[0] / "prompt"])


def test_residual_prompt_exports_to_peft_and_the_others_are_refused(trained, tmp_path):
    prompt = trained("residual_prompt_tuning")[0] / "prompt"
    out = export_peft(prompt, tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    predictor = softprompt.load(prompt)
    batch = next(predictor.batches(TEXTS))
    module = predictor.module
    with torch.no_grad():
        ours = module.adapter.vocab_logits(module.backbone, module.hidden_states(batch))
        peft = PeftModel.from_pretrained(copy.deepcopy(module.backbone), str(out)).eval()
        theirs = peft(input_ids=batch["input_ids"][:, N:], attention_mask=batch["attention_mask"][:, N:]).logits
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)
    for method, reason in (("dept", "also adds a low-rank update"), ("late_prompt_tuning", "intermediate layer")):
        with pytest.raises(InteropError, match=reason):
            export_peft(trained(method)[0] / "prompt", tmp_path / method)
        assert not (tmp_path / method).exists()


def example_block(marker: str) -> list[str]:
    """The lines of the code block that follows `marker` in docs/extending.md."""
    text = (Path(softprompt.__file__).parents[2] / "docs" / "extending.md").read_text()
    return text.split(marker, 1)[1].split("```", 2)[1].splitlines()[1:]


def test_the_worked_example_in_the_docs_is_the_real_module():
    package = Path(softprompt.__file__).parent
    for marker, real in (("sync with methods/residual_prompt_tuning.py", package / "methods" / RESIDUAL_MODULE),
                         ("sync with conf/method/residual_prompt_tuning.yaml", Path(config_dir()) / "method" /
                          "residual_prompt_tuning.yaml")):
        source = real.read_text().splitlines()
        shown = [line for line in example_block(marker) if line.strip() and "..." not in line]
        assert len(shown) >= 10 and [line for line in shown if line not in source] == []
