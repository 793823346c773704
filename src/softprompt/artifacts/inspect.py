"""What a trained prompt's vectors look like (softprompt-inspect): a header naming the prompt, then what its
method declares (`SoftPromptModule.inspect`): nearest vocabulary tokens for input-level prompts, per-layer
key/value norms for prefixes, nothing for a hard prompt."""

from __future__ import annotations

from softprompt.artifacts.predictor import Predictor


def describe(predictor: Predictor, top_k: int) -> list[str]:
    """The lines softprompt-inspect prints."""
    spec, backbone = predictor.spec, predictor.spec["backbone"]
    head = (f"{predictor.method} on {backbone['name']} ({backbone['family']}, fingerprint {backbone['fingerprint']}), "
            f"task {predictor.task.name}: {spec['num_virtual_tokens']} virtual tokens")
    first, *rest = predictor.module.inspect(predictor.datamodule.tokenizer, top_k)
    return [f"{head} {first}", *rest]
