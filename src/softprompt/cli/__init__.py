"""Command-line tools. softprompt-train is a Hydra app; the others take `key=value` arguments with one
shared parser (softprompt.cli.args), so every tool reads alike."""
