"""Trained prompts as artifacts: the file format, prediction (one prompt or mixed batches), PEFT interop and
inspection."""
