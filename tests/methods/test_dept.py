"""DePT: the low-rank update lands on the input's own tokens, position by position, and trains at its own
learning rate beside the prompt's; the preset spans the task's input budget; inspect describes the update; PEFT
export is refused naming the update."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from softprompt.artifacts.peft import InteropError, export_peft
from softprompt.cli import inspect as inspect_prompt
from softprompt.config.compose import compose_train
from softprompt.data.verbalizer import label_token_ids
from softprompt.methods import build_method
from softprompt.methods.dept import DecomposedPrompt
from softprompt.training.module import training_module

N = 3
TEXTS = ["ok", "a much longer review that goes on and on", "mid-length text here"]
TEMPLATE = f"[P:{N}]Review: {{text}}\nSentiment:"
WORDS = [[" bad"], [" good"]]
OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 0.01, "weight_decay": 0.0,
             "scheduler": {"name": "linear", "warmup_steps": 0}}


@pytest.fixture(scope="module")
def backbone(tiny_backbone):
    return tiny_backbone()


@pytest.fixture(scope="module")
def dept(init_context, classification_objective, backbone, method_config):
    """`dept(positions=64, rank=4, lowrank_lr=0.001, initial_state=None)`: DePT on the shared tiny Llama, B drawn
    (not zero) unless restarted from `initial_state`."""

    def make(positions: int = 64, rank: int = 4, lowrank_lr: float = 0.001, initial_state=None) -> DecomposedPrompt:
        torch.manual_seed(0)
        init = ({"init": "random_normal"} if initial_state is None
                else {"init": "from_artifact", "init_artifact": "a trained prompt"})
        config = method_config("dept", num_virtual_tokens=N, match_embedding_std=False, lowrank_rank=rank,
                               lowrank_positions=positions, lowrank_alpha=8.0, lowrank_lr=lowrank_lr, **init)
        module = build_method(config, backbone=backbone, objective=classification_objective(backbone, WORDS),
                              dropout=False, initial_state=initial_state,
                              init_context=lambda: init_context(backbone, label_token_ids(WORDS, backbone.tokenizer)))
        if initial_state is None:
            assert torch.count_nonzero(module.lowrank_b) == 0  # the update starts at zero, as the authors' code
            with torch.no_grad():
                module.lowrank_b.normal_(0, 0.05)
        return module

    return make


@pytest.mark.parametrize("positions", [64, 5])
def test_the_update_lands_on_the_inputs_own_tokens_by_position(positions, dept, make_batch, backbone):
    module = dept(positions=positions)
    batch = make_batch(backbone, TEXTS, TEMPLATE, padding_side="left")
    with torch.no_grad():
        embeds = module.embed_inputs(batch)
        words = module.backbone.get_input_embeddings()(batch["input_ids"])
        update = 8.0 / math.sqrt(4) * module.lowrank_a @ module.lowrank_b
    for row in range(len(TEXTS)):
        position = 0
        for column, (slot, real) in enumerate(zip(batch["slot_ids"][row].tolist(),
                                                  batch["attention_mask"][row].tolist(), strict=True)):
            if slot >= 0:
                expected = module.prompt[slot]
            elif not real:
                expected = words[row, column]  # padding: untouched
            else:
                expected = words[row, column] + (update[position] if position < positions else 0)
                position += 1
            assert torch.allclose(embeds[row, column], expected, atol=1e-6), (row, column)


def test_the_prompt_and_the_pair_train_at_their_own_learning_rates(dept, make_batch, backbone):
    module = dept(lowrank_lr=0.001)
    trained = training_module(module, OPTIMIZER)
    trained._trainer = SimpleNamespace(estimated_stepping_batches=10)  # what the scheduler reads
    settings = trained.configure_optimizers()
    optimizer, scheduler = settings["optimizer"], settings["lr_scheduler"]["scheduler"]
    assert [group["lr"] for group in optimizer.param_groups] == [0.01, 0.001]
    names = {id(p): n for n, p in module.named_parameters()}
    assert [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups] == [
        ["prompt"], ["lowrank_a", "lowrank_b"]]
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    batch = make_batch(backbone, TEXTS, TEMPLATE, labels=[0, 1, 1])
    F.cross_entropy(module(batch), batch["labels"]).backward()
    optimizer.step()
    scheduler.step()
    # AdamW's first step moves each entry by its group's lr (times the sign of its gradient).
    for name, lr in (("prompt", 0.01), ("lowrank_a", 0.001), ("lowrank_b", 0.001)):
        step = float((getattr(module, name).detach() - before[name]).abs().max())
        assert step == pytest.approx(lr, rel=1e-3), name
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.009, 0.0009])  # both scheduled


def test_from_artifact_restarts_from_the_prompt_and_the_pair(dept, make_batch, backbone):
    trained = dept()
    restarted = dept(initial_state=trained.folded_state())
    assert set(trained.folded_state()) == {"prompt", "lowrank_a", "lowrank_b"}
    batch = make_batch(backbone, TEXTS, TEMPLATE)
    with torch.no_grad():
        assert torch.equal(restarted(batch), trained(batch))


def test_the_preset_spans_the_tasks_input_budget():
    method = OmegaConf.to_container(compose_train(["method=dept"]).method, resolve=True)
    assert method["lowrank_positions"] == 128  # s: the default task's max_length


def test_inspect_describes_the_low_rank_update(trained_run, capsys):
    prompt = trained_run("dept").prompt
    capsys.readouterr()  # training output, if the run was made just now
    inspect_prompt.main([f"prompt={prompt}"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "low-rank update A B of the input embeddings: rank 4 over 128 positions, scale 4.0000"
    assert lines[-1].startswith("update L2 norm per position: mean ")


def test_peft_export_is_refused_naming_the_low_rank_update(trained_run, tmp_path):
    with pytest.raises(InteropError, match="also adds a low-rank update"):
        export_peft(trained_run("dept").prompt, tmp_path / "dept")
    assert not (tmp_path / "dept").exists()
