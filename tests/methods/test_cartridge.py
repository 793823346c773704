"""Cartridges: a key/value cache trained directly, its first virtual tokens frozen. Prefilled from a text of n tokens,
the untrained cache gives the logits of the backbone reading that text first (rotary and absolute positions); the
prefill is PEFT's initialize_kv_prefix_from_text and the same tensors give PEFT's CARTRIDGE logits; the frozen
tokens get no gradient, stay bit-identical and count as no trainable parameter; the artifact reproduces the run,
exports to PEFT and back, joins mixed batches; resume is exact; nonsensical settings are one line naming their key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from peft import CartridgeConfig, PeftModel, TaskType, get_peft_model, initialize_kv_prefix_from_text
from safetensors.torch import load_file

import softprompt
from softprompt.artifacts.format import SPEC_FILE, TENSORS_FILE, write_artifact
from softprompt.artifacts.peft import InteropError, export_peft, import_peft
from softprompt.backbones import fingerprint
from softprompt.backbones.families import FAMILY_ADAPTERS
from softprompt.cli import inspect as inspect_prompt
from softprompt.cli.bench import main as bench_main
from softprompt.config.compose import compose_train
from softprompt.data.verbalizer import label_token_ids
from softprompt.errors import ConfigError
from softprompt.methods import method_class
from softprompt.methods.cartridge import Cartridge, prefill_ids
from softprompt.methods.checks import check_method
from softprompt.objectives import ClassificationObjective

N, FROZEN = 3, 1
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]
TEMPLATE = "Review: {text}\nSentiment:"
WORDS = [["n"], ["p"]]
READ_TEXT = "The film"  # 8 tokens on the byte-level tiny tokenizers


@pytest.fixture(scope="module")
def build(init_context, method_config):
    """`build(backbone, n=N, frozen=FROZEN, init="random_normal", text=READ_TEXT, chat=False)`: a cartridge scoring
    WORDS; random inits draw N(0, 1), PEFT's."""

    def make(backbone, n: int = N, frozen: int = FROZEN, init: str = "random_normal", text: str = READ_TEXT,
             chat: bool = False) -> Cartridge:
        objective = ClassificationObjective(label_token_ids(WORDS, backbone.tokenizer),
                                            FAMILY_ADAPTERS[backbone.family], backbone.hidden_size)
        context = init_context(backbone, objective.label_token_ids, init_text=text, init_std=1.0)
        config = method_config("cartridge", num_virtual_tokens=n, num_frozen_tokens=frozen, init=init,
                               init_text=text, use_chat_template=chat)
        return Cartridge(config, init_context=context, backbone=backbone, objective=objective)

    return make


def vocab_logits(module: Cartridge, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return module.adapter.vocab_logits(module.backbone, module.hidden_states(batch))


# -- the cache -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["llama", "gpt2"])  # rotary and absolute positions
def test_a_cartridge_prefilled_from_a_text_gives_the_logits_of_reading_that_text_first(architecture, build, make_batch,
                                                                                       tiny_backbone):
    backbone = tiny_backbone(architecture)
    text_ids = prefill_ids(backbone.tokenizer, READ_TEXT, use_chat_template=False)
    module = build(backbone, n=len(text_ids), init="prefill").eval()
    batch = make_batch(backbone, TEXTS, TEMPLATE)  # right-padded rows of different lengths
    ours = vocab_logits(module, batch)
    difference = 0.0
    for row, mask in enumerate(batch["attention_mask"].bool()):
        ids = batch["input_ids"][row][mask]
        with torch.no_grad():  # the backbone reading the text, then the input, in one plain forward
            read = backbone.model(input_ids=torch.cat([torch.tensor(text_ids), ids])[None]).logits[0, len(text_ids):]
        difference = max(difference, float((ours[row][mask] - read).abs().max()))
    assert difference <= 1e-5, difference


def test_the_prefill_takes_the_first_n_positions_as_pefts_initialize_kv_prefix_from_text(build, tiny_backbone):
    backbone = tiny_backbone(fresh=True)  # PEFT wraps it
    module = build(backbone, n=5, init="prefill")  # 5 of the text's 8 tokens
    peft = get_peft_model(backbone.model, CartridgeConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5))
    theirs = initialize_kv_prefix_from_text(peft, backbone.tokenizer, text=READ_TEXT, use_chat_template=False)
    assert torch.allclose(module.folded_state()["prefix"], theirs, atol=1e-6, rtol=0)
    assert torch.equal(module.frozen_prefix, module.folded_state()["prefix"][:FROZEN])


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_logits_match_pefts_cartridge_with_the_same_tensors(architecture, build, make_batch, tiny_backbone):
    backbone = tiny_backbone(architecture, fresh=True)  # PEFT wraps it
    module = build(backbone, n=5, frozen=2).eval()
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    ours = vocab_logits(module, batch)
    config = CartridgeConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5, num_frozen_tokens=2)
    peft = get_peft_model(backbone.model, config).eval()
    peft.prompt_encoder["default"].load_prompt_embeddings(module.folded_state()["prefix"])
    with torch.no_grad():
        theirs = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = batch["attention_mask"].bool()
    difference = float((ours[real] - theirs[real]).abs().max())
    assert ours.shape == theirs.shape and difference <= 1e-5, difference


def test_frozen_tokens_get_no_gradient_and_stay_bit_identical_while_the_rest_trains(build, make_batch, tiny_backbone):
    backbone = tiny_backbone()
    module = build(backbone, n=4, frozen=2, init="prefill")
    width = 2 * 2 * 2 * 8  # layers x (key, value) x kv_heads x head_dim
    assert {name for name, p in module.named_parameters() if p.requires_grad} == {"trainable_prefix"}
    assert module.num_trainable_params() == 2 * width and module.num_folded_params() == 4 * width
    frozen, trainable = module.frozen_prefix.clone(), module.trainable_prefix.detach().clone()
    before = fingerprint(backbone.model)
    optimizer = torch.optim.Adam(module.trainable_parameters(), lr=0.05)
    batch = make_batch(backbone, TEXTS, TEMPLATE, labels=[0, 1, 1])
    module.train()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(module(batch), batch["labels"]).backward()
        optimizer.step()
    assert module.frozen_prefix.grad is None and torch.equal(module.frozen_prefix, frozen)
    assert torch.equal(module.folded_state()["prefix"][:2], frozen)
    assert bool(((module.trainable_prefix.detach() - trainable).abs().amax(-1) > 0).all())  # every trained row
    assert fingerprint(backbone.model) == before


def test_gradient_checkpointing_gives_the_same_gradients(build, checkpointing_gradients):
    plain, _, modules = checkpointing_gradients(lambda backbone: build(backbone, init="prefill"), TEXTS, TEMPLATE)
    assert all(module.frozen_prefix.grad is None for module in modules)
    assert plain.keys() == {"trainable_prefix"} and torch.any(plain["trainable_prefix"] != 0)


def test_the_cache_stays_float32_on_a_bfloat16_backbone(build, make_batch, tiny_backbone):
    backbone = tiny_backbone(dtype="bfloat16")
    module = build(backbone, init="prefill")
    assert module.frozen_prefix.dtype == module.trainable_prefix.dtype == torch.float32
    batch = make_batch(backbone, TEXTS, TEMPLATE, labels=[0, 1, 1])
    F.cross_entropy(module(batch).float(), batch["labels"]).backward()
    assert module.trainable_prefix.grad is not None and module.trainable_prefix.grad.dtype == torch.float32


# -- configs ---------------------------------------------------------------------------------------------------
def preset(**changes) -> dict:
    method = OmegaConf.to_container(compose_train(["method=cartridge"]).method, resolve=True)
    return {**method, **changes}


def test_the_preset_prefills_a_task_neutral_text_and_freezes_one_token():
    config = check_method(preset())
    assert method_class(preset()) is Cartridge and Cartridge.mixed_batch_kind() == "attention"
    assert (config.init, config.num_virtual_tokens, config.num_frozen_tokens, config.lr) == ("prefill", 20, 1, 0.02)
    form = Cartridge.peft_form(config, "causal_lm")
    assert (form.peft_type, form.tensor, dict(form.options), dict(form.training_options)) == (
        "CARTRIDGE", "prefix", {"num_frozen_tokens": 1}, {"num_frozen_tokens": 1})


@pytest.mark.parametrize(
    ("changes", "line"),
    [
        ({"init": "vocab"}, "method.init='vocab' is invalid: allowed: prefill, random_uniform, random_normal, "
                            "from_artifact"),
        ({"init_text": ""}, "method.init_text='' is invalid: init=prefill needs a non-empty text to prefill"),
        ({"num_frozen_tokens": 20}, "method.num_frozen_tokens=20 is invalid: must be below "
                                    "method.num_virtual_tokens=20: with every virtual token frozen nothing trains"),
        ({"num_frozen_tokens": -1}, "method.num_frozen_tokens=-1 is invalid: must be an integer >= 0"),
        ({"use_chat_template": "yes"}, "method.use_chat_template='yes' is invalid: must be true or false"),
        ({"init_artifact": "/x"}, "method.init_artifact='/x' is invalid: is only read with method.init=from_artifact; "
                                  "set method.init_artifact=null"),
    ],
)
def test_nonsensical_settings_are_one_line_naming_their_key(changes, line):
    with pytest.raises(ConfigError) as raised:
        check_method(preset(**changes))
    assert str(raised.value) == line


def test_a_text_shorter_than_the_cache_or_a_missing_chat_template_is_one_line(build, tiny_backbone):
    backbone = tiny_backbone()
    with pytest.raises(ConfigError) as raised:
        build(backbone, n=9, init="prefill")
    assert str(raised.value) == ("method.init_text='The film' is invalid: is 8 tokens on this backbone's tokenizer; "
                                 "init=prefill takes the first method.num_virtual_tokens=9 cached positions: give a "
                                 "longer text or fewer virtual tokens")
    with pytest.raises(ConfigError) as raised:
        build(backbone, init="prefill", chat=True)
    assert str(raised.value) == ("method.use_chat_template=True is invalid: the backbone's tokenizer has no chat "
                                 "template; set method.use_chat_template=false to prefill the text as plain tokens")


# -- runs, artifacts, interop ----------------------------------------------------------------------------------
RUN = ["backbone=tiny_random", "logger=none", "trainer.max_steps=2", "trainer.val_check_interval=2",
       "data.batch_size=4", "data.eval_batch_size=8", "data.max_samples.validation=null", "method=cartridge",
       f"method.num_virtual_tokens={N}", "optimizer.scheduler.name=constant"]  # constant: 2 steps = 4's first 2
WIDTH = 2 * 2 * 2 * 8  # tiny_random: layers x (key, value) x kv_heads x head_dim


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_job, local_task_overrides) -> Path:
    """A 2-step run of the preset (prefilled from its init_text) on the local sentiment task: its output dir."""
    out = tmp_path_factory.mktemp("cartridge") / "run"
    run_job([*RUN, *local_task_overrides], out)
    return out


def test_the_artifact_reproduces_the_runs_predictions(trained, local_task_files, run_as_main, tmp_path, capsys,
                                                     reloaded_prompt):
    summary = json.loads((trained / "metrics.json").read_text())
    assert (summary["trainable_params"], summary["folded_params"]) == ((N - FROZEN) * WIDTH, N * WIDTH)
    assert {k: list(v.shape) for k, v in load_file(trained / "prompt" / TENSORS_FILE).items()} == {"prefix": [N, WIDTH]}
    expected = [json.loads(line) for line in (trained / "test_predictions.jsonl").read_text().splitlines()]
    reloaded_prompt(trained)
    capsys.readouterr()
    assert run_as_main("softprompt.cli.predict", f"prompt={trained / 'prompt'}", f"input={local_task_files['test']}",
                       f"output={tmp_path / 'preds.jsonl'}") == 0
    predicted = [json.loads(line) for line in (tmp_path / "preds.jsonl").read_text().splitlines()]
    for row, want in zip(predicted, expected, strict=True):
        assert list(row["probabilities"].values()) == pytest.approx(want["probabilities"], abs=1e-5)


def test_a_run_resumes_exactly_from_a_checkpoint_holding_both_parts(trained, run_job, local_task_overrides,
                                                                    tmp_path):
    last = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {k: list(v.shape) for k, v in last["state_dict"].items()} == {
        "method.frozen_prefix": [FROZEN, WIDTH], "method.trainable_prefix": [N - FROZEN, WIDTH]}
    four = [*RUN, *local_task_overrides, "trainer.max_steps=4"]
    straight = run_job(four, tmp_path / "straight")
    resumed = run_job([*four, f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}"], tmp_path / "resumed")
    assert resumed["steps"] == straight["steps"] == 4 and resumed["test"] == straight["test"]
    ends = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
            for run in ("straight", "resumed")]
    assert torch.equal(ends[1]["method.frozen_prefix"], ends[0]["method.frozen_prefix"])
    torch.testing.assert_close(ends[1]["method.trainable_prefix"], ends[0]["method.trainable_prefix"], rtol=0,
                               atol=1e-6)
    # The frozen rows are the checkpoint's, not rebuilt from the init: a marked checkpoint resumes marked.
    last["state_dict"]["method.frozen_prefix"] = torch.full((FROZEN, WIDTH), 0.5)
    torch.save(last, tmp_path / "marked.ckpt")
    run_job([*four, f"ckpt_path={tmp_path / 'marked.ckpt'}"], tmp_path / "marked")
    marked = torch.load(tmp_path / "marked" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(marked["method.frozen_prefix"], torch.full((FROZEN, WIDTH), 0.5))


def test_a_cartridge_row_in_a_mixed_batch_equals_it_alone(trained, tmp_path, positive_reviews, negative_reviews):
    spec = json.loads((trained / "prompt" / SPEC_FILE).read_text())
    shorter = load_file(trained / "prompt" / TENSORS_FILE)["prefix"][:2] * 1.5  # another cache, 2 positions
    spec["num_virtual_tokens"] = spec["method"]["config"]["num_virtual_tokens"] = 2
    spec["tensors"]["prefix"]["shape"] = [2, WIDTH]
    other = write_artifact(tmp_path / "other", {"prefix": shorter}, spec)
    mixed = softprompt.load_many({"trained": trained / "prompt", "other": other}, batch_size=8)
    assert mixed.kinds == ["attention", "attention"]
    texts = positive_reviews[:4] + negative_reviews[:4]
    prompts = ["trained", "other"] * 4
    scores = mixed.score(texts, prompts)
    for name, path in (("trained", trained / "prompt"), ("other", other)):
        rows = [i for i, p in enumerate(prompts) if p == name]
        alone = softprompt.load(path).score([texts[i] for i in rows])
        for i, want in zip(rows, alone, strict=True):
            assert list(scores[i].values()) == pytest.approx(list(want.values()), abs=1e-6, rel=0)


def test_inspect_shows_per_layer_norms_and_the_frozen_tokens(trained, capsys):
    capsys.readouterr()
    inspect_prompt.main([f"prompt={trained / 'prompt'}", "top_k=2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f"{N} virtual tokens as key/value prefixes in 2 attention layers, the first {FROZEN} "
                             "frozen (never trained)")
    assert any(line.startswith("self 1") for line in lines)


def test_export_to_peft_reproduces_the_logits_and_imports_back(trained, tmp_path):
    prompt = trained / "prompt"
    out = export_peft(prompt, tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["num_virtual_tokens"], config["num_frozen_tokens"]) == ("CARTRIDGE", N, FROZEN)
    predictor = softprompt.load(prompt)
    batch = next(predictor.batches(TEXTS))
    ours = vocab_logits(predictor.module, batch)
    with torch.no_grad():
        peft = PeftModel.from_pretrained(copy.deepcopy(predictor.module.backbone), str(out)).eval()
        theirs = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(peft.prompt_encoder["default"].frozen_embedding, load_file(prompt / TENSORS_FILE)["prefix"][:1])
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5)
    back = import_peft(out, tmp_path / "back")
    assert torch.equal(load_file(back / TENSORS_FILE)["prefix"], load_file(prompt / TENSORS_FILE)["prefix"])
    (out / SPEC_FILE).unlink()  # as PEFT alone would have saved it
    config["num_frozen_tokens"] = 2
    (out / "adapter_config.json").write_text(json.dumps(config))
    foreign = import_peft(out, tmp_path / "foreign", task="rotten_tomatoes", backbone="tiny_random")
    spec = json.loads((foreign / SPEC_FILE).read_text())
    assert (spec["method"]["name"], spec["method"]["config"]["num_frozen_tokens"]) == ("cartridge", 2)
    (out / "adapter_config.json").write_text(json.dumps({**config, "num_frozen_tokens": N}))
    with pytest.raises(InteropError) as refused:
        import_peft(out, tmp_path / "never", task="rotten_tomatoes", backbone="tiny_random")
    assert str(refused.value) == (f"{out / 'adapter_config.json'}: num_frozen_tokens={N} freezes all {N} virtual "
                                  "tokens: a cartridge here keeps at least one trainable")


def test_the_benchmark_times_it_against_pefts_cartridge(tmp_path, local_task_overrides):
    status = bench_main(["backbone=tiny_random", "methods=cartridge", "steps=1", "warmup=0", "seq_len=8",
                         f"num_virtual_tokens={N}", "batch_size=4", "full_ft=false", f"out={tmp_path / 'bench'}",
                         "--", *local_task_overrides])
    assert status == 0
    report = json.loads((tmp_path / "bench" / "bench.json").read_text())
    runners = {(r["data"], r["runner"]) for r in report["rows"]}
    assert {(data, "PEFT") for data in ("synthetic", "real")} <= runners
