"""What every method preset in conf/method/ must do, checked for each preset by existing (in the spirit of PEFT's
common tester): its training moves only its own tensors and leaves the backbone bit-identical; scores do not depend
on batch-mates or the padding side; the folded tensors give the trained module's outputs; gradient checkpointing
gives the same gradients; the artifact of a run reproduces its predictions; a declared PEFT form exports with PEFT
giving our logits (or the export is refused in one line); a declared mixed-batch kind joins mixed batches row by row
(or they are refused); a run resumed from a checkpoint ends as the uninterrupted run did.

Where a preset cannot do something (a family it does not serve, nothing trainable), the test asserts that it says so,
never skips. Method modules come from the `preset_module` fixture, runs from `trained_run`."""

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
from softprompt.artifacts.peft import PEFT_CONFIG_FILE, InteropError, export_peft
from softprompt.backbones import fingerprint
from softprompt.config.compose import compose_train
from softprompt.errors import ConfigError, SoftPromptError
from softprompt.methods import method_class, preset_classes
from softprompt.methods.checks import check_method

PRESETS = sorted(preset_classes())
# Settings that take another forward path than the preset's own (the other P-tuning encoder, the plain late prompt):
# checked like presets wherever the module alone is checked.
VARIANTS = {"p_tuning_mlp": ("p_tuning", {"encoder": "mlp"}),
            "late_prompt_tuning_plain": ("late_prompt_tuning", {"generator": "none"})}
CASES = {**{name: (name, {}) for name in PRESETS}, **VARIANTS}
ARCHITECTURES = ["llama", "gpt2", "qwen2", "bert", "roberta", "bert_head", "t5", "bart"]  # every family
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]
N = 3


def refused(error: ConfigError) -> bool:
    """A preset refusing a backbone says so in one line naming the family or the method."""
    line = str(error)
    return "\n" not in line and line.startswith(("backbone.family=", "method=")) and " is invalid: " in line


def open_zero_tensors(module) -> object:
    """Zero-initialised trainable tensors (DePT's B, adaption gates) start as a no-op: give them values, so that the
    path behind them is exercised."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return module


def trainable(module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


@pytest.fixture
def case(request, preset_module, preset_settings, preset_template, tiny_backbone, make_batch):
    """(build(backbone, **more), template, batch(backbone, texts, side, labels)) of the parametrised case."""
    name, changes = CASES[request.param]

    def build(backbone, **more):
        return preset_module(name, backbone, n=N, **{**changes, **more})

    template = preset_template(preset_settings(name, n=N, **changes))

    def batch(backbone, texts=TEXTS, padding_side="right", labels=None):
        return make_batch(backbone, list(texts), template, padding_side=padding_side, labels=labels)

    return build, template, batch


def train_a_little(module, batch, steps: int = 3) -> None:
    """A few Adam steps on the batch's labels."""
    optimizer = torch.optim.Adam(trainable(module).values(), lr=0.05)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(module(batch), batch["labels"]).backward()
        optimizer.step()
    module.eval()


# -- the preset ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", PRESETS)
def test_the_preset_parses_into_its_classes_typed_config(method):
    settings = OmegaConf.to_container(compose_train([f"method={method}"]).method, resolve=True)
    config = check_method(settings)
    cls = method_class(settings)
    assert cls is preset_classes()[method] and isinstance(config, cls.Config) and config.name == method


# -- the module alone ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_training_moves_only_the_methods_tensors_and_leaves_the_backbone_bit_identical(case, tiny_backbone):
    build, _, batch_of = case
    backbone = tiny_backbone(fresh=True)  # trained against, and some methods hook into it
    module = build(backbone)
    before = fingerprint(backbone.model)
    own = {name: p.detach().clone() for name, p in trainable(module).items()}
    module.train()
    assert module.training and not any(m.training for m in backbone.model.modules())  # no backbone dropout
    assert not any(p.requires_grad for p in backbone.model.parameters())
    batch = batch_of(backbone, labels=[0, 1, 1])
    if not own:  # nothing trainable (the hard prompt): nothing to train, nothing folded, the backbone untouched
        assert module.num_trainable_params() == 0 and module.folded_state() == {}
        with torch.no_grad():
            module(batch)
        assert fingerprint(backbone.model) == before
        return
    train_a_little(module, batch)
    assert fingerprint(backbone.model) == before
    assert all(not name.startswith("backbone.") for name in own)
    assert all(not p.requires_grad and p.grad is None for p in backbone.model.parameters())
    moved = [name for name, p in trainable(module).items() if not torch.equal(p, own[name])]
    assert moved == list(own)  # every trainable tensor learns (DePT's A once B has left zero, gates and prompts)


@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_backbone_dropout_is_on_only_when_asked(case, tiny_backbone):
    build, _, _ = case
    backbone = tiny_backbone(fresh=True)  # put in training mode
    module = build(backbone, dropout=True)
    module.train()
    assert all(m.training for m in backbone.model.modules())


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_scores_do_not_depend_on_batch_mates_or_the_padding_side(case, architecture, tiny_backbone):
    build, _, batch_of = case
    backbone = tiny_backbone(architecture, fresh=True)  # some methods hook into it
    try:
        module = open_zero_tensors(build(backbone)).eval()
    except ConfigError as error:  # a family the method does not serve
        assert refused(error), error
        return
    sides = ("right",) if backbone.family == "seq2seq" else ("right", "left")  # seq2seq tokenizers pad right
    with torch.no_grad():
        alone = torch.cat([module(batch_of(backbone, [text])) for text in TEXTS])
        for side in sides:
            assert torch.allclose(alone, module(batch_of(backbone, padding_side=side)), atol=1e-5), side


@pytest.mark.parametrize("architecture", ["llama", "bert_head", "t5", "bart"])  # a causal LM, a head, seq2seq
@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_folded_tensors_give_the_trained_modules_outputs(case, architecture, tiny_backbone):
    build, _, batch_of = case
    backbone = tiny_backbone(architecture, fresh=True)
    try:
        module = build(backbone)
    except ConfigError as error:  # a family the method does not serve
        assert refused(error), error
        return
    if not trainable(module):  # nothing trainable: nothing to fold
        assert module.folded_state() == {} and module.num_folded_params() == 0
        return
    train_a_little(module, batch_of(backbone, labels=[0, 1, 1]))
    side = "right" if backbone.family == "seq2seq" else "left"
    batch = batch_of(backbone, padding_side=side)
    atol = 1e-6 if architecture == "llama" else 1e-5
    with torch.no_grad():
        trained = module(batch)
    folded = module.folded_state()
    # A fresh module of the folded form (no encoder, no MLP, no residual network), another init, given the tensors.
    fresh = build(backbone, seed=7, folded=True).eval()
    fresh.load_folded_state(folded)
    assert fresh.num_folded_params() == module.num_folded_params()
    # Every folded tensor trains again, but what the method keeps frozen (a cartridge's first tokens, a buffer).
    kept_frozen = sum(b.numel() for name, b in fresh.named_buffers()
                      if not name.startswith(("backbone.", "objective.")))
    assert fresh.num_trainable_params() + kept_frozen == module.num_folded_params()
    with torch.no_grad():
        assert torch.allclose(fresh(batch), trained, atol=atol)
    # A wrong shape is refused in one line, for the method's own tensors and for the task head's (encoder families).
    own = next(k for k in folded if not k.startswith("classifier."))
    for key in (own, *[k for k in folded if k.startswith("classifier.")][:1]):
        with pytest.raises(SoftPromptError, match="expects"):
            build(backbone).load_folded_state({**folded, key: folded[key][:-1]})
    module.load_folded_state(folded)  # folding in place
    with torch.no_grad():
        assert torch.allclose(module(batch), trained, atol=atol)


@pytest.mark.parametrize("architecture", ["llama", "bert", "t5"])
@pytest.mark.parametrize("case", list(CASES), indirect=True)
def test_gradient_checkpointing_gives_the_same_gradients(case, architecture, tiny_backbone, checkpointing_gradients):
    build, template, _ = case
    try:
        module = build(tiny_backbone(architecture, fresh=True))
    except ConfigError as error:  # a family the method does not serve
        assert refused(error), error
        return
    if not trainable(module):  # nothing trainable: no gradient to checkpoint
        assert module.num_trainable_params() == 0
        return
    plain, _, _ = checkpointing_gradients(lambda backbone: open_zero_tensors(build(backbone)), TEXTS, template,
                                          architecture)
    for name in plain:
        assert torch.any(plain[name] != 0), name  # every trainable tensor gets a gradient


# -- a trained run ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", PRESETS)
def test_the_artifact_reproduces_the_runs_test_predictions(method, trained_run, reloaded_prompt):
    out, summary = trained_run(method)
    assert summary["backbone_fingerprint_start"] == summary["backbone_fingerprint_end"]
    tensors = load_file(out / "prompt" / TENSORS_FILE)
    assert summary["folded_params"] == sum(t.numel() for t in tensors.values())
    predictor = reloaded_prompt(out)  # scores the test split as the run did, within 1e-5
    folded = predictor.module.folded_state()  # the loaded module is the folded form of exactly these tensors
    assert folded.keys() == tensors.keys() and all(torch.equal(folded[k], v) for k, v in tensors.items())


def peft_inputs(batch: dict, adapter: Path) -> dict:
    """What PEFT's forward takes for our batch: PEFT adds the virtual tokens itself (our front slots dropped), and
    a multitask adapter takes each row's task (task 0 here)."""
    columns = batch["input_ids"].shape[1]
    real = (batch["slot_ids"] < 0).all(0) if "slot_ids" in batch else torch.ones(columns, dtype=torch.bool)
    inputs = {"input_ids": batch["input_ids"][:, real], "attention_mask": batch["attention_mask"][:, real]}
    if json.loads((adapter / PEFT_CONFIG_FILE).read_text())["peft_type"] == "MULTITASK_PROMPT_TUNING":
        inputs["task_ids"] = torch.zeros(len(batch["input_ids"]), dtype=torch.long)
    return inputs


@pytest.mark.parametrize("method", PRESETS)
def test_a_declared_peft_form_exports_with_our_logits_and_the_others_are_refused(method, trained_run, peft_exportable,
                                                                                  tmp_path):
    prompt = trained_run(method).prompt
    if not peft_exportable(method):
        with pytest.raises(InteropError) as refusal:
            export_peft(prompt, tmp_path / "adapter")
        assert "\n" not in str(refusal.value) and not (tmp_path / "adapter").exists()
        return
    out = export_peft(prompt, tmp_path / "adapter")
    predictor = softprompt.load(prompt)
    batch = next(predictor.batches(TEXTS))
    module = predictor.module
    with torch.no_grad():
        ours = module.adapter.vocab_logits(module.backbone, module.hidden_states(batch))
        peft = PeftModel.from_pretrained(copy.deepcopy(module.backbone), str(out)).eval()
        theirs = peft(**peft_inputs(batch, out)).logits
    assert ours.shape == theirs.shape  # input-level: the virtual positions on both sides
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5), (ours[real] - theirs[real]).abs().max()


@pytest.mark.parametrize("method", PRESETS)
def test_a_declared_mixed_batch_kind_scores_each_row_as_alone_and_the_others_are_refused(method, trained_run,
                                                                                         positive_reviews, tmp_path):
    prompt = trained_run(method).prompt
    if preset_classes()[method].mixed_batch_kind() is None:
        with pytest.raises(ArtifactError, match=rf"^prompt '0': method {method} \(.*\) injects its prompt in a way "
                                                "mixed batches cannot reproduce row by row; predict with "
                                                "softprompt.load$"):
            softprompt.load_many([prompt, prompt])
        return
    other = Path(shutil.copytree(prompt, tmp_path / "copy"))
    mixed = softprompt.load_many({"a": prompt, "b": other})
    alone = softprompt.load(prompt).score(positive_reviews[:4])
    for got, want in zip(mixed.score(positive_reviews[:4], ["a", "b", "b", "a"]), alone, strict=True):
        assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("method", PRESETS)
def test_a_run_resumed_from_its_step_2_checkpoint_trains_as_the_uninterrupted_run(method, trained_run,
                                                                                   trained_run_overrides, run_job,
                                                                                   tmp_path):
    """Resumed into another output folder: the checkpoint's random state gives a method's dropout the uninterrupted
    run's masks, and the selected checkpoint is the one the uninterrupted run tested."""
    out, straight = trained_run(method)
    if straight["trainable_params"] == 0:  # nothing trained: fitting is skipped, so there is nothing to resume
        assert not list(out.glob("checkpoints/*.ckpt"))
        return
    step2 = out / "checkpoints" / "step_000002.ckpt"
    state = torch.load(step2, map_location="cpu", weights_only=False)["state_dict"]
    assert state and not [k for k in state if k.removeprefix("method.").startswith("backbone.")]  # trainable only
    resumed = run_job([*trained_run_overrides(method), f"ckpt_path={step2}"], tmp_path / "resumed")
    assert resumed["steps"] == straight["steps"] == 4
    assert (resumed["best_step"], resumed["val"]) == (straight["best_step"], straight["val"])
    assert resumed["test"] == pytest.approx(straight["test"], abs=1e-6, rel=0)
    ends = [torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
            for run in (out, tmp_path / "resumed")]
    # Both validations, the one before the checkpoint (restored) and the one after it (rerun), as the straight run's
    # (to float32 round-off: a resumed forward may sum in another order).
    records = [end["callbacks"]["ValidationHistory"]["records"] for end in ends]
    assert [r["step"] for r in records[1]] == [r["step"] for r in records[0]] == [2, 4]
    for got, want in zip(records[1], records[0], strict=True):
        assert got == pytest.approx(want, abs=1e-6, rel=0)
    assert ends[0]["state_dict"].keys() == ends[1]["state_dict"].keys()
    for key in ends[0]["state_dict"]:
        torch.testing.assert_close(ends[1]["state_dict"][key], ends[0]["state_dict"][key], rtol=0, atol=1e-6)
