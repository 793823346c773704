"""Data: sources, templates, verbalizers, folds and the shared DataModule."""

from softprompt.data.datamodule import PromptDataModule

__all__ = ["PromptDataModule"]
