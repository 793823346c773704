"""Task mixtures: a `tasks` list (or the shorthand `task=[a,b]`) becomes the job's `task` node, a mixture whose
members are the listed tasks' own configs (conf/task/NAME.yaml, each with the entry's changes merged in).

    tasks: [rotten_tomatoes, bbc_topic]                              # examples-proportional mixing
    tasks: [{task: rotten_tomatoes, weight: 2}, {task: bbc_topic, weight: 1, max_length: 128}]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from softprompt.errors import ConfigError

log = logging.getLogger("softprompt")

ENTRY_KEYS = ("task", "weight")  # an entry's own keys; every other key changes that task's config
SHARED_INIT = "vocab"  # the mixture's prompt_init when its tasks name different ones (task-agnostic words)


def task_list_override(overrides: Sequence[str]) -> list[str] | None:
    """The names in a `task=[a,b]` override, or None. Hydra would merge a list of group options into one node
    (the last task's keys winning silently), so the job reads the list from the override instead."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "task"]
    for override in OverridesParser.create().parse_overrides(candidates):
        value = override.value()
        if isinstance(value, list):
            return [str(v) for v in value]
    return None


def _compose_task(name: str) -> DictConfig:
    """conf/task/NAME.yaml as composed (its defaults list and the app's search path included)."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    from softprompt.config.compose import compose_train

    overrides = [f"task={name}"]
    config = compose("train", overrides=overrides) if GlobalHydra.instance().is_initialized() else \
        compose_train(overrides)
    return config.task


def _entry(index: int, entry: Any) -> tuple[str, Any, dict[str, Any]]:
    """(task name, weight, changes) of one `tasks` entry."""
    if isinstance(entry, str):
        return entry, None, {}
    if isinstance(entry, Mapping) and isinstance(entry.get("task"), str):
        return entry["task"], entry.get("weight"), {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    raise ConfigError(f"tasks[{index}]", entry, "a task name from conf/task/, or {task: NAME, weight: W, KEY: VALUE} "
                      "(KEY: a task setting changed for this task)")


def tasks_from_overrides(cfg: DictConfig, overrides: Sequence[str]) -> list[str] | None:
    """`task=[a,b]` on the command line (softprompt-train's `overrides`): the `tasks` list the job runs (None for
    none); the config itself is left as Hydra composed it."""
    shorthand = task_list_override(overrides)
    if shorthand is None:
        return None
    if cfg.get("tasks"):
        raise ConfigError("tasks", OmegaConf.to_container(cfg.tasks), "set either task=[...] or tasks=[...]")
    changed = [o for o in overrides if o.lstrip("+~").startswith("task.")]
    if changed:
        raise ConfigError("task", changed[0], "with task=[...] a task.* key would change a merge of the tasks; "
                          "change it per task: tasks=[{task: NAME, KEY: VALUE}, ...]")
    return shorthand


def with_task_mixture(cfg: DictConfig, tasks: Sequence[Any] | None = None) -> DictConfig:
    """The job config with its task mixture in place: `cfg` itself for a single task; else a copy whose `task` is
    the mixture of `tasks` (or `cfg.tasks`), so the method presets' ${task.*} read the mixture. `cfg` is unchanged."""
    mixture = expand_task_mixture(cfg, tasks)
    if mixture is None:
        return cfg
    copy = writable_copy(cfg)
    with open_dict(copy):
        copy.tasks, copy.task = tasks if tasks is not None else cfg.tasks, mixture
    return copy


def writable_copy(cfg: DictConfig) -> DictConfig:
    """A deep copy of `cfg` that may be changed (the composed config may be read-only)."""
    copy = deepcopy(cfg)
    OmegaConf.set_readonly(copy, False)
    return copy


def expand_task_mixture(cfg: DictConfig, tasks: Sequence[Any] | None = None) -> dict[str, Any] | None:
    """The mixture task node of `tasks` (default `cfg.tasks`): the listed tasks' configs; None for a single task or
    a node already expanded. `cfg` is unchanged."""
    entries = tasks if tasks is not None else cfg.get("tasks")
    if not entries or cfg.task.get("type") == "mixture":
        return None
    nodes: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    plain = entries if isinstance(entries, list) else OmegaConf.to_container(entries)
    for index, entry in enumerate(plain):
        name, weight, changes = _entry(index, entry)
        try:
            node = _compose_task(name)
        except Exception as error:  # Hydra raises several types for a missing option
            raise ConfigError(f"tasks[{index}].task", name, f"not a task config in conf/task/ ({error})") from None
        node = OmegaConf.merge(node, changes)
        key = str(node.get("name"))
        if key in nodes:
            raise ConfigError(f"tasks[{index}].task", name, f"task {key} is listed twice")
        nodes[key], weights[key] = node, weight
    given = [w is not None for w in weights.values()]
    if any(given) and not all(given):
        missing = next(name for name, w in weights.items() if w is None)
        raise ConfigError(f"tasks[{list(weights).index(missing)}].weight", None,
                          "give every task a weight (or none: examples-proportional mixing)")
    inits = {str(node.get("prompt_init")) for node in nodes.values()}
    prompt_init = inits.pop() if len(inits) == 1 else SHARED_INIT
    mixture = {"name": "+".join(nodes), "type": "mixture", "metric": "macro", "tasks": nodes,
               "weights": weights if all(given) else None,
               # What method presets read from the task node (${task.prompt_init}, ${task.max_length}).
               "prompt_init": prompt_init,
               "max_length": max(int(node.get("max_length")) for node in nodes.values())}
    log.info("task mixture %s (%s mixing)", mixture["name"], "weighted" if all(given) else "examples-proportional")
    return mixture
