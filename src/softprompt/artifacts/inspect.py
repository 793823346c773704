"""What a trained prompt's vectors look like (softprompt-inspect): a header naming the prompt, then what its
method declares (`SoftPromptMethod.inspect`): nearest vocabulary tokens for input-level prompts, per-layer
key/value norms for prefixes, nothing for a hard prompt."""

from __future__ import annotations

from pathlib import Path

from softprompt.artifacts.format import MIXTURE, artifact_dir, read_spec
from softprompt.artifacts.predictor import Predictor


def inspection_task(path: str | Path, task: str | None) -> str | None:
    """The task to load a prompt for inspection with: `task`, or any task of a task mixture (the tensors do not
    depend on it)."""
    spec = read_spec(artifact_dir(path))
    if task is None and spec["task"]["type"] == MIXTURE:
        return next(iter(spec["task"]["tasks"]))
    return task


def describe(predictor: Predictor, top_k: int) -> list[str]:
    """The lines softprompt-inspect prints."""
    spec, backbone = predictor.spec, predictor.spec["backbone"]
    kind = "task mixture" if spec["task"]["type"] == MIXTURE else "task"
    head = (f"{predictor.method} on {backbone['name']} ({backbone['family']}, fingerprint {backbone['fingerprint']}), "
            f"{kind} {spec['task']['name']}: {spec['num_virtual_tokens']} virtual tokens")
    first, *rest = predictor.module.inspect(predictor.datamodule.tokenizer, top_k)
    return [f"{head} {first}", *rest]
