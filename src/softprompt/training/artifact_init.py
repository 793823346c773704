"""init=from_artifact: a new run starts from a trained prompt's folded tensors (and so does every other
`method.init` value the method class lists in `artifact_inits`, e.g. a source-task init).

The config check reads softprompt.json only (cheap, before anything loads); the tensors are read once the
backbone is loaded and has the fingerprint the prompt was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch

from softprompt.artifacts.format import ArtifactError, artifact_dir, read_spec, read_tensors
from softprompt.backbones.loading import fingerprint, fingerprint_algorithm
from softprompt.errors import ConfigError
from softprompt.methods import MethodConfig, SoftPromptMethod


def reads_init_artifact(cls: type[SoftPromptMethod], method: MethodConfig) -> bool:
    """Whether `method.init` starts from the trained prompt `method.init_artifact` (the class's `artifact_inits`)."""
    return method.init in cls.artifact_inits


def check_artifact_init(cls: type[SoftPromptMethod], method: MethodConfig) -> tuple[Path, dict]:
    """The artifact exists and holds this method's tensors at this prompt length, no reparameterisation would
    be stacked on its folded tensors (the method class's `folded_away` keys), and the method class accepts its
    tensor shapes (`check_init_artifact`). Returns (folder, spec)."""
    path = method.init_artifact
    try:
        directory = artifact_dir(Path(str(path)))
        spec = read_spec(directory)
    except ArtifactError as error:
        raise ConfigError("method.init_artifact", str(path), str(error)) from None
    name, stored = method.name, spec["method"]["name"]
    if stored != name:
        raise ConfigError("method.init_artifact", str(path), f"holds a {stored} prompt; method {name} can only "
                          f"start from a {name} prompt")
    if spec["num_virtual_tokens"] != method.num_virtual_tokens:
        raise ConfigError("method.num_virtual_tokens", method.num_virtual_tokens,
                          f"the artifact {path} has {spec['num_virtual_tokens']} virtual tokens")
    for key in cls.folded_away:
        folded = cls.folded_config[key]
        if getattr(method, key) != folded:
            raise ConfigError(f"method.{key}", getattr(method, key), f"init={method.init} trains the artifact's "
                              f"folded tensors directly (its {key} is folded away); set method.{key}={folded}")
    cls.check_init_artifact(method,
                            {key: list(tensor["shape"]) for key, tensor in spec.get("tensors", {}).items()})
    return directory, spec


def artifact_init_state(cls: type[SoftPromptMethod], method: MethodConfig,
                        model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The folded tensors of `method.init_artifact` (None unless `method.init` reads it), after checking that
    `model` (the run's frozen backbone) has the weights the prompt was trained on."""
    if not reads_init_artifact(cls, method):
        return None
    directory, spec = check_artifact_init(cls, method)
    expected = spec["backbone"]["fingerprint"]
    found = fingerprint(model, algorithm=fingerprint_algorithm(expected))
    if found != expected:
        raise ConfigError("method.init_artifact", str(method.init_artifact),
                          f"was trained on a backbone with fingerprint {expected}; this run's backbone has {found} "
                          "(its frozen weights differ)")
    try:
        return read_tensors(directory)
    except ArtifactError as error:
        raise ConfigError("method.init_artifact", str(method.init_artifact), str(error)) from None
