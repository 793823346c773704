"""Data: sources, templates, verbalizers, folds and the shared DataModule."""

from softprompt.data.datamodule import PromptDataModule
from softprompt.data.settings import CVSettings, DataSettings, Rendering

__all__ = ["CVSettings", "DataSettings", "PromptDataModule", "Rendering"]
