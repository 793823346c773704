"""softprompt: soft prompts on frozen pretrained language models."""

from softprompt.resolvers import register as _register_resolvers

__version__ = "0.1.0"
_register_resolvers()
