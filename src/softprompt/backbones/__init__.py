"""Backbones: loading by hub id, path or offline asset; freezing; fingerprints."""

from softprompt.backbones.loading import Backbone, count_unique_params, fingerprint, load_backbone

__all__ = ["Backbone", "count_unique_params", "fingerprint", "load_backbone"]
