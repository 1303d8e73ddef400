"""Log lines people can read and machines can parse: ``LOG_FORMAT=text`` or ``json``.

An event carries its facts as ``extra={"fields": {...}}``; the text format appends them
as ``key=value`` pairs, the JSON format as keys of the same object, so both formats say
the same thing. Only ``chat_server`` logs at LOG_LEVEL; every other library at WARNING
and above (the Gemini SDK and its HTTP client otherwise log every request at INFO), unless
LOG_LEVEL is debug.

Never put a token, a secret or message text in ``fields``: a test greps for them.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


def _text_value(value: Any) -> str:
    text = str(value)
    return repr(text) if (not text or any(c in text for c in ' "=\n')) else text


class TextFormatter(logging.Formatter):
    """``2026-11-30 18:00:00,123 INFO chat_server.turns: turn conversation=… model=…``"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        head, sep, tail = line.partition("\n")  # keep a traceback below the fields
        pairs = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
        return f"{head} {pairs}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, then the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update((k, v) for k, v in _fields(record).items() if v is not None)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _ClientFaults(logging.Filter):
    """Drop uvicorn's traceback for each invalid UTF-8 frame: the client gets 1007, and
    anyone could otherwise flood the log with tracebacks, even before ``hello``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Invalid UTF-8 sequence received from client")


def _level(name: str) -> int:
    return logging.getLevelNamesMapping()[name.upper()]


def configure(level: str, fmt: str) -> None:
    """Route every logger to stderr in the chosen format; quiet third-party INFO."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level == "debug" else max(logging.WARNING, _level(level)))
    logging.getLogger("chat_server").setLevel(_level(level))
    # uvicorn installs handlers of its own; make its loggers use ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    if level != "debug":
        logging.getLogger("uvicorn.error").addFilter(_ClientFaults())
