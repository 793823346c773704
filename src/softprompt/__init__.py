"""softprompt: soft prompts on frozen pretrained language models."""

__version__ = "0.1.0"
