"""Residual prompt tuning: the prompt is reparameterised by the authors' residual MLP, which the artifact computes
away; the artifact exports as a PEFT prompt-tuning adapter; inspect describes it; the docs' worked example is the
real module and yaml."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

import softprompt
from softprompt.artifacts.peft import export_peft
from softprompt.cli import inspect as inspect_prompt
from softprompt.config.compose import config_dir

N = 3
RESIDUAL_MODULE = "residual_prompt_tuning.py"


def test_residual_prompt_is_the_authors_residual_mlp(preset_module, tiny_backbone):
    """P' = LayerNorm(W_up ReLU(W_down P)) + P, the bottleneck m wide; the artifact's folded form is P'."""
    backbone = tiny_backbone()
    module = preset_module("residual_prompt_tuning", backbone, n=N, init="random_uniform")  # m = 12
    down, _, up, norm = module.encoder.module
    assert (down.in_features, down.out_features, up.out_features) == (32, 12, 32)
    with torch.no_grad():
        expected = F.layer_norm(up(torch.relu(down(module.prompt))), (32,), norm.weight, norm.bias) + module.prompt
        assert torch.allclose(module.prompt_embeddings(), expected, atol=1e-6)
        assert torch.equal(module.folded_state()["prompt"], module.prompt_embeddings())
    assert module.num_trainable_params() == N * 32 + (32 * 12 + 12) + (12 * 32 + 32) + 2 * 32
    scaled = preset_module("residual_prompt_tuning", backbone, n=N, init="random_uniform", match_embedding_std=True)
    target = backbone.model.get_input_embeddings().weight.std()
    with torch.no_grad():
        branch = scaled.encoder.module(scaled.prompt)
    assert torch.allclose(branch.std(), target, rtol=0.1)  # the residual branch starts at word-embedding scale


def test_the_artifact_exports_as_a_peft_prompt_tuning_adapter(trained_run, tmp_path):
    out = export_peft(trained_run("residual_prompt_tuning").prompt, tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"


def test_inspect_describes_the_prompt_in_the_input_embedding_space(trained_run, capsys):
    prompt = trained_run("residual_prompt_tuning").prompt
    capsys.readouterr()  # training output, if the run was made just now
    inspect_prompt.main([f"prompt={prompt}", "top_k=2"])
    lines = capsys.readouterr().out.splitlines()
    assert "residual_prompt_tuning on tiny_random" in lines[0] and "in the input embedding space (d=32)" in lines[0]
    assert sum(line.startswith("virtual token ") for line in lines) == N


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
