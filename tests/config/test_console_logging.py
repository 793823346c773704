import io
import logging
import sys

from omegaconf import OmegaConf

from softprompt.config.compose import config_dir
from softprompt.config.console import ConsoleHandler


def test_console_handler_writes_to_the_stream_current_at_emit_time(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", first)
    handler = ConsoleHandler("stdout")  # made inside one capture...
    record = logging.LogRecord("softprompt", logging.INFO, __file__, 1, "hello", None, None)
    handler.emit(record)
    first.close()  # ...which then ends, as a test's capsys does
    monkeypatch.setattr(sys, "stdout", second)
    monkeypatch.setattr(sys, "stderr", second)  # where logging would print "--- Logging error ---"
    handler.emit(record)
    assert second.getvalue() == "hello\n"


def test_a_plain_stream_handler_fails_where_the_console_handler_does_not(monkeypatch):
    captured, later = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", captured)
    plain = logging.StreamHandler(sys.stdout)
    captured.close()
    monkeypatch.setattr(sys, "stderr", later)
    monkeypatch.setattr(logging, "raiseExceptions", True)
    plain.emit(logging.LogRecord("softprompt", logging.INFO, __file__, 1, "hello", None, None))
    assert "--- Logging error ---" in later.getvalue()  # the failure ConsoleHandler exists to avoid


def test_hydra_console_handlers_are_capture_safe():
    hydra = OmegaConf.load(f"{config_dir()}/hydra/default.yaml")
    for section in ("job_logging", "hydra_logging"):
        console = hydra[section]["handlers"]["console"]
        assert console["class"] == "softprompt.config.console.ConsoleHandler" and console["stream"] == "stdout"
