"""Frozen backbones kept in memory between the jobs of one process.

Hydra's basic launcher runs a sweep's jobs one after another in one process; every job would
otherwise reload the same frozen weights. Jobs never change them (each job verifies its start and
end fingerprints), so the loaded object can be handed to the next job with the same backbone config.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from softprompt.backbones.loading import Backbone, freeze, load_backbone
from softprompt.config.precision import backbone_config_for_precision
from softprompt.errors import ConfigError

log = logging.getLogger("softprompt")


class BackboneCache:
    """Least-recently-used backbones, keyed by the whole backbone config (id, revision, dtype, family,
    checkpointing, ...) and the asset cache dir."""

    def __init__(self) -> None:
        self._entries: OrderedDict[str, Backbone] = OrderedDict()
        self.hits = 0

    def get(self, cfg: Mapping, cache_dir: Path, max_entries: int) -> Backbone:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
            raise ConfigError("backbone_cache.max_entries", max_entries, "must be an integer >= 0 (0 disables reuse)")
        key = json.dumps([dict(cfg), str(cache_dir)], sort_keys=True, default=str)
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            backbone = self._entries[key]
            log.info("backbone %s: reusing the copy loaded by an earlier job of this process", backbone.name)
            freeze(backbone.model)  # the previous job may have left it in training mode (backbone.dropout)
            return backbone
        backbone = load_backbone(cfg, cache_dir)
        if max_entries:
            self._entries[key] = backbone
            while len(self._entries) > max_entries:
                self._entries.popitem(last=False)
        else:
            self._entries.clear()
        return backbone

    def get_for_job(self, job: Mapping, cache_dir: Path) -> Backbone:
        """A job's backbone, from its whole resolved config: the backbone config with the dtype that
        `trainer.precision` gives the frozen weights (softprompt.config.precision), so the key holds the real dtype."""
        return self.get(backbone_config_for_precision(job), cache_dir, job["backbone_cache"]["max_entries"])

    def clear(self) -> None:
        self._entries.clear()


BACKBONES = BackboneCache()
