"""PEFT interop: softprompt-export writes an adapter PEFT loads with the same logits, softprompt-import reads
it (or a foreign PEFT adapter) back into an artifact that predicts the same, method.init=from_artifact
starts a run from an artifact, and whatever PEFT cannot represent is refused in one line."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from peft import PeftModel, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
from safetensors.torch import load_file, save_file

import softprompt
from softprompt.artifacts.format import SPEC_FILE, TENSORS_FILE
from softprompt.artifacts.peft import (
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
    InteropError,
    check_no_leading_specials,
    export_peft,
    import_peft,
)
from softprompt.backbones.loading import Backbone
from softprompt.backbones.tiny_random import byte_level_tokenizer
from softprompt.errors import ConfigError
from softprompt.training.run import run

pytestmark = pytest.mark.xdist_group("peft_interop")  # its tests share the module's trained prompts

N = 3
QUICK = ["backbone=tiny_random", "logger=none", "callbacks=none", "trainer.max_steps=2", "data.batch_size=4",
         "data.eval_batch_size=8", "data.max_samples.validation=null", f"method.num_virtual_tokens={N}"]
T5 = ["backbone=tiny_random_t5", "task.verbalizer={negative: n, positive: p}"]  # one-token words: one decoder step
RUNS = {  # name -> overrides; the encoder and the MLP are folded away in the artifact
    "prompt_tuning": ["method=prompt_tuning", "method.init=vocab"],
    "p_tuning": ["method=p_tuning", "method.encoder=mlp", "method.encoder_hidden=12"],
    "prefix_tuning": ["method=prefix_tuning", "method.reparam_hidden=16"],
    "p_tuning_v2": ["method=p_tuning_v2"],
    "hard_prompt": ["method=hard_prompt", "method.num_virtual_tokens=0"],
    "t5_prompt_tuning": ["method=prompt_tuning", "method.init=random_uniform", *T5],
    "t5_p_tuning_v2": ["method=p_tuning_v2", "method.init=random_uniform", *T5],
}
PEFT_TYPES = {"prompt_tuning": "PROMPT_TUNING", "p_tuning": "P_TUNING", "prefix_tuning": "PREFIX_TUNING",
              "p_tuning_v2": "PREFIX_TUNING"}
PLAIN = ["great fun", "a dull mess that goes on and on", "superb"]
TEXTS = [*PLAIN[:2], {"review": PLAIN[2]}]  # by the local task's dataset column too


@pytest.fixture(scope="module")
def trained(tmp_path_factory, run_job, local_task_overrides):
    """name -> the run's prompt/ folder, each trained once (2 steps on the tiny random backbone)."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            out = tmp_path_factory.mktemp(name) / "run"
            run_job([*QUICK, *local_task_overrides, *RUNS[name]], out)
            runs[name] = out / "prompt"
        return runs[name]

    return get


def our_logits(predictor, texts):
    """(our vocabulary logits over the whole prompted input, the batch), fp32."""
    batch = next(predictor.batches(texts))
    module = predictor.module
    with torch.no_grad():
        return module.adapter.vocab_logits(module.backbone, module.hidden_states(batch)), batch


def peft_model(predictor, adapter: Path):
    """PEFT's own loading path, on a copy of the frozen backbone (PEFT wraps the model it is given)."""
    return PeftModel.from_pretrained(copy.deepcopy(predictor.module.backbone), str(adapter)).eval()


def peft_inputs(predictor, batch):
    """PEFT adds the virtual tokens itself: input-level prompts drop our front slot columns."""
    n = N if predictor.method in ("prompt_tuning", "p_tuning") else 0
    return batch["input_ids"][:, n:], batch["attention_mask"][:, n:]


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"])
def test_exported_adapter_gives_our_logits_through_peft(trained, tmp_path, method):
    prompt = trained(method)
    out = export_peft(prompt, tmp_path / "adapter")
    config = json.loads((out / PEFT_CONFIG_FILE).read_text())
    assert (config["peft_type"], config["task_type"], config["num_virtual_tokens"]) == (PEFT_TYPES[method],
                                                                                         "CAUSAL_LM", N)
    assert config["inference_mode"] is True and config["num_transformer_submodules"] == 1
    assert config["base_model_name_or_path"] is None  # random weights: no folder or hub id holds them
    if method in ("prefix_tuning", "p_tuning_v2"):  # GQA: PEFT's token_dim is the key/value width
        assert (config["num_layers"], config["num_attention_heads"], config["token_dim"]) == (2, 2, 16)
        assert config["prefix_projection"] is False
    ours_tensor = next(iter(load_file(prompt / TENSORS_FILE).values()))
    assert torch.equal(load_file(out / PEFT_WEIGHTS_FILE)["prompt_embeddings"], ours_tensor)
    assert (out / SPEC_FILE).read_text() == (prompt / SPEC_FILE).read_text()

    predictor = softprompt.load(prompt)
    ours, batch = our_logits(predictor, TEXTS)
    ids, mask = peft_inputs(predictor, batch)
    with torch.no_grad():
        theirs = peft_model(predictor, out)(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == theirs.shape  # input-level: the virtual positions on both sides
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5), (ours[real] - theirs[real]).abs().max()


def test_seq2seq_prompt_tuning_exports_as_an_encoder_prompt(trained, tmp_path):
    prompt = trained("t5_prompt_tuning")
    out = export_peft(prompt, tmp_path / "adapter")
    config = json.loads((out / PEFT_CONFIG_FILE).read_text())
    assert (config["task_type"], config["num_transformer_submodules"]) == ("SEQ_2_SEQ_LM", 1)
    predictor = softprompt.load(prompt)
    ours, batch = our_logits(predictor, TEXTS)  # the decoder's first step
    ids, mask = peft_inputs(predictor, batch)
    start = torch.zeros(len(ids), 1, dtype=torch.long)  # decoder_start_token_id
    with torch.no_grad():
        theirs = peft_model(predictor, out)(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits
    assert ours.shape == theirs.shape == (3, 1, len(predictor.datamodule.tokenizer))
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


@pytest.mark.parametrize("method", ["p_tuning", "prefix_tuning"])
def test_round_trip_keeps_the_prompt_and_its_predictions(trained, tmp_path, method):
    prompt = trained(method)
    adapter = export_peft(prompt, tmp_path / "adapter")
    back = import_peft(adapter, tmp_path / "back")
    assert json.loads((back / SPEC_FILE).read_text()) == json.loads((prompt / SPEC_FILE).read_text())
    assert load_file(back / TENSORS_FILE).keys() == load_file(prompt / TENSORS_FILE).keys()
    for key, tensor in load_file(prompt / TENSORS_FILE).items():
        assert torch.equal(load_file(back / TENSORS_FILE)[key], tensor)
    original, imported = softprompt.load(prompt), softprompt.load(back)
    assert imported.predict(TEXTS) == original.predict(TEXTS)
    assert imported.score(TEXTS) == original.score(TEXTS)


def save_foreign_adapter(backbone, config, directory: Path, fill) -> torch.nn.Module:
    """A PEFT adapter made by PEFT itself on (a copy of) the tiny random `backbone` (no softprompt.json)."""
    model = get_peft_model(copy.deepcopy(backbone.model), config)
    torch.manual_seed(0)
    with torch.no_grad():
        fill(model.prompt_encoder["default"])
    model.save_pretrained(str(directory))
    assert not (directory / SPEC_FILE).exists()
    return model.eval()


@pytest.mark.parametrize("peft_type", ["PROMPT_TUNING", "PREFIX_TUNING"])
def test_foreign_peft_adapter_imports_with_a_task_preset(tmp_path, peft_type, tiny_backbone):
    if peft_type == "PROMPT_TUNING":
        config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
        fill = lambda encoder: encoder.embedding.weight.normal_(0, 0.5)  # noqa: E731
    else:  # trained with the MLP; PEFT saves its output (the folded prefix)
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4, prefix_projection=True,
                                    encoder_hidden_size=16)
        fill = lambda encoder: [p.normal_(0, 0.5) for p in encoder.parameters()]  # noqa: E731
    model = save_foreign_adapter(tiny_backbone(), config, tmp_path / "adapter", fill)
    out = import_peft(tmp_path / "adapter", tmp_path / "prompt", task="rotten_tomatoes", backbone="tiny_random")
    spec = json.loads((out / SPEC_FILE).read_text())
    method = "prompt_tuning" if peft_type == "PROMPT_TUNING" else "p_tuning_v2"
    assert (spec["method"]["name"], spec["num_virtual_tokens"], spec["task"]["name"]) == (method, 4,
                                                                                           "rotten_tomatoes")
    assert spec["run"]["imported_from"]["peft_type"] == peft_type and spec["init"] is None

    predictor = softprompt.load(out)  # the fingerprint the import recorded is the backbone's
    assert predictor.predict(["great fun"])[0] in ("negative", "positive")
    ours, batch = our_logits(predictor, PLAIN)
    n = 4 if peft_type == "PROMPT_TUNING" else 0
    with torch.no_grad():
        theirs = model(input_ids=batch["input_ids"][:, n:], attention_mask=batch["attention_mask"][:, n:]).logits
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5), (ours[real] - theirs[real]).abs().max()


def edited_copy(prompt: Path, directory: Path, edit) -> Path:
    shutil.copytree(prompt, directory)
    spec = json.loads((directory / SPEC_FILE).read_text())
    edit(spec)
    (directory / SPEC_FILE).write_text(json.dumps(spec))
    return directory


def test_what_peft_cannot_represent_is_refused_in_one_line(trained, tmp_path, tiny_backbone):
    def refused(prompt: Path) -> str:
        with pytest.raises(InteropError) as error:
            export_peft(prompt, tmp_path / "never")
        assert "\n" not in str(error.value) and not (tmp_path / "never").exists()
        return str(error.value)

    assert refused(trained("hard_prompt")) == ("hard_prompt has no trained tensors: there is nothing to export (its "
                                               "template and demonstrations are in softprompt.json)")
    assert refused(trained("t5_p_tuning_v2")) == (
        "p_tuning_v2 on a seq2seq backbone also prefixes the encoder's self-attention; PEFT's "
        "PREFIX_TUNING prefixes only the decoder's self- and cross-attention")
    middle = edited_copy(trained("p_tuning"), tmp_path / "middle",
                         lambda spec: spec.update(prompt_template="Review: [P:2]{text}\n[P:1]Sentiment:"))
    assert refused(middle) == ("p_tuning places virtual tokens inside the template 'Review: [P:2]{text}\\n[P:1]"
                               "Sentiment:'; PEFT's P_TUNING only prepends them before the input (export needs all 3 "
                               "at the front, method.slots=front)")
    masked = edited_copy(trained("prompt_tuning"), tmp_path / "masked",
                         lambda spec: spec["backbone"].update(family="masked_lm"))
    assert refused(masked).startswith("backbone tiny_random is a masked_lm model: PEFT has no task type that scores")
    demos = edited_copy(trained("prompt_tuning"), tmp_path / "demos",
                        lambda spec: spec["inputs"].update(num_demonstrations=2))
    assert refused(demos) == ("prompt_tuning follows 2 in-context demonstrations; PEFT's PROMPT_TUNING would put its "
                              "virtual tokens before them")

    # A tokenizer that starts every input with [CLS] (or BOS): our virtual tokens follow it, PEFT's precede it.
    tiny = tiny_backbone()
    cls_first = Backbone(tiny.model, byte_level_tokenizer(with_mask_token=True), "bert_like", "x", None, "causal_lm")
    with pytest.raises(InteropError) as error:
        check_no_leading_specials(cls_first, "PROMPT_TUNING")
    assert str(error.value) == ("backbone bert_like's tokenizer starts every input with ['<cls>']: our virtual tokens "
                                "go after it, PEFT's PROMPT_TUNING puts them before it, so the outputs would differ")
    check_no_leading_specials(tiny, "PROMPT_TUNING")  # the tiny random (and SmolLM2) tokenizers add nothing


def test_unreadable_adapters_are_refused_in_one_line(trained, tmp_path):
    def refused(directory: Path, **kwargs) -> str:
        with pytest.raises(InteropError) as error:
            import_peft(directory, tmp_path / "never", **kwargs)
        assert "\n" not in str(error.value) and not (tmp_path / "never").exists()
        return str(error.value)

    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / PEFT_CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM"}))
    assert refused(lora) == (f"{lora / PEFT_CONFIG_FILE}: peft_type 'LORA' is not a prompt we can import; supported: "
                             "CARTRIDGE, MULTITASK_PROMPT_TUNING, PREFIX_TUNING, PROMPT_TUNING, P_TUNING")

    ours = export_peft(trained("prompt_tuning"), tmp_path / "ours")
    assert refused(ours, task="rotten_tomatoes").startswith(
        f"task=rotten_tomatoes cannot apply: dir='{ours}' holds our softprompt.json")

    foreign = tmp_path / "foreign"
    shutil.copytree(ours, foreign)
    (foreign / SPEC_FILE).unlink()
    assert refused(foreign, backbone="tiny_random").startswith(
        "task=None: a foreign adapter holds no template or verbalizer; name the task preset it was trained on: ")
    assert refused(foreign, task="rotten_tomatoes", backbone="gpt5").startswith(
        "backbone='gpt5' is neither a preset (")
    config = json.loads((foreign / PEFT_CONFIG_FILE).read_text())
    (foreign / PEFT_CONFIG_FILE).write_text(json.dumps({**config, "num_transformer_submodules": 2,
                                                        "num_virtual_tokens": 1, "task_type": "SEQ_2_SEQ_LM"}))
    assert refused(foreign, task="rotten_tomatoes") == (
        f"{foreign / PEFT_CONFIG_FILE}: num_transformer_submodules=2 also prompts the decoder; our prompts go on the "
        "encoder input only (num_transformer_submodules=1)")
    (foreign / PEFT_CONFIG_FILE).write_text(json.dumps({**config, "peft_type": "PREFIX_TUNING",
                                                        "task_type": "SEQ_2_SEQ_LM"}))
    assert refused(foreign, task="rotten_tomatoes") == (
        f"{foreign / PEFT_CONFIG_FILE}: a SEQ_2_SEQ_LM PREFIX_TUNING adapter prefixes only the decoder's self- and "
        "cross-attention; our prefixes also go into the encoder's self-attention")
    (foreign / PEFT_CONFIG_FILE).write_text(json.dumps(config))  # a prompt for another backbone's width
    save_file({"prompt_embeddings": torch.zeros(N, 8)}, foreign / PEFT_WEIGHTS_FILE)
    assert refused(foreign, task="rotten_tomatoes", backbone="tiny_random") == (
        "the adapter does not fit backbone tiny_random: folded prompt has shape (3, 8); prompt_tuning expects (3, 32)")


# -- method.init=from_artifact -------------------------------------------------------------------------------
class SaveStartTensors(L.Callback):
    """Writes the module's folded tensors as training starts (step 0) to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        save_file({k: v.detach().clone() for k, v in module.folded_state().items()}, self.path)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning_v2"])
def test_from_artifact_starts_from_the_artifacts_tensors_and_trains(trained, run_job, local_task_overrides, tmp_path,
                                                                   method):
    prompt = trained(method)
    start = tmp_path / "start.safetensors"
    summary = run_job([*QUICK, *local_task_overrides, *RUNS[method], "method.init=from_artifact",
                       f"method.init_artifact={prompt}", "trainer.max_steps=3",
                       "+callbacks.start._target_=test_peft_interop.SaveStartTensors",
                       f"+callbacks.start.path={start}"],
                      tmp_path / "run")
    key = "prompt" if method == "prompt_tuning" else "prefix"
    given = load_file(prompt / TENSORS_FILE)[key]
    assert torch.equal(load_file(start)[key], given)  # step 0 is the artifact
    assert summary["init"] == "from_artifact" and summary["steps"] == 3
    trained_now = load_file(tmp_path / "run" / "prompt" / TENSORS_FILE)[key]
    assert trained_now.shape == given.shape and not torch.allclose(trained_now, given)  # and it trained


def refuse_backbone_loading(*args, **kwargs):
    raise AssertionError("a backbone was loaded")


def test_from_artifact_refusals_are_one_line_at_config_time(trained, make_cfg, tiny_overrides, local_task_overrides,
                                                            tmp_path, monkeypatch):
    prompt, prefix, p_tuning = trained("prompt_tuning"), trained("prefix_tuning"), trained("p_tuning")
    # Config-time refusals come before any backbone is loaded.
    monkeypatch.setattr("softprompt.backbones.cache.BACKBONES.get", refuse_backbone_loading)
    base = [*tiny_overrides, *local_task_overrides, f"method.num_virtual_tokens={N}"]
    cases = [
        (["method.init=from_artifact"],
         "method.init_artifact=None is invalid: init=from_artifact needs the path of a trained prompt (a run's "
         "prompt/ folder)"),
        (["method.init=from_artifact", f"method.init_artifact={tmp_path / 'nope'}"],
         f"method.init_artifact='{tmp_path / 'nope'}' is invalid: {tmp_path / 'nope'} holds no softprompt.json (give "
         "a run's prompt/ folder)"),
        (["method.init=from_artifact", f"method.init_artifact={prefix}"],
         f"method.init_artifact='{prefix}' is invalid: holds a prefix_tuning prompt; method prompt_tuning can only "
         "start from a prompt_tuning prompt"),
        (["method.init=from_artifact", f"method.init_artifact={prompt}", "method.num_virtual_tokens=5"],
         f"method.num_virtual_tokens=5 is invalid: the artifact {prompt} has 3 virtual tokens"),
        (["method=p_tuning", "method.init=from_artifact", f"method.init_artifact={p_tuning}"],
         "method.encoder='lstm' is invalid: init=from_artifact trains the artifact's folded tensors directly (its "
         "encoder is folded away); set method.encoder=none"),
        (["method=prefix_tuning", "method.init=from_artifact", f"method.init_artifact={prefix}"],
         "method.reparam='mlp' is invalid: init=from_artifact trains the artifact's folded tensors directly (its "
         "reparam is folded away); set method.reparam=none"),
        ([f"method.init_artifact={prompt}"],
         f"method.init_artifact='{prompt}' is invalid: is only read with method.init=from_artifact; set "
         "method.init_artifact=null"),
    ]
    for overrides, line in cases:
        with pytest.raises(ConfigError) as error:
            run(make_cfg([*base, *overrides]))
        assert str(error.value) == line


def test_from_artifact_on_other_weights_is_refused(trained, make_cfg, tiny_overrides, local_task_overrides):
    prompt = trained("prompt_tuning")
    expected = json.loads((prompt / SPEC_FILE).read_text())["backbone"]["fingerprint"]
    cfg = make_cfg([*tiny_overrides, *local_task_overrides, f"method.num_virtual_tokens={N}",
                    "method.init=from_artifact", f"method.init_artifact={prompt}", "backbone.random_init.seed=1"])
    with pytest.raises(ConfigError) as error:
        run(cfg)
    message = str(error.value)
    assert message.startswith(f"method.init_artifact='{prompt}' is invalid: was trained on a backbone with "
                              f"fingerprint {expected}; this run's backbone has ")
    assert message.endswith("(its frozen weights differ)") and "\n" not in message
