"""Structured logs: one line per event, key=value or JSON, to stderr.

Felix copies a driver's stderr into its own log, so each line carries the
component name and is self-contained.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

ROOT = "felix_nat64"


def _render_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        "time": _timestamp(record.created),
        "level": record.levelname.lower(),
        "component": record.name.removeprefix(ROOT + ".") or "main",
        "event": record.getMessage(),
    }


class KeyValueFormatter(logging.Formatter):
    """`time=... level=info component=loop event="..." key=value ...`"""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        fields.update(getattr(record, "kv", {}))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_render_value(v)}" for k, v in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        for key, value in getattr(record, "kv", {}).items():
            fields[key] = value if isinstance(value, (int, float, bool, type(None))) else str(value)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, separators=(",", ":"))


def _timestamp(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(created % 1 * 1000):03d}Z"


class EventLogger:
    """A logger whose calls take an event name plus key=value fields."""

    def __init__(self, name: str, **context: Any) -> None:
        self._logger = logging.getLogger(f"{ROOT}.{name}")
        self._context = context

    def bind(self, **context: Any) -> EventLogger:
        """A logger that adds these fields to every line."""
        bound = EventLogger.__new__(EventLogger)
        bound._logger = self._logger
        bound._context = {**self._context, **context}
        return bound

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"kv": {**self._context, **fields}})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)

    def enabled(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)


def configure(fmt: str = "keyvalue", level: str = "info", stream: TextIO | None = None) -> None:
    """Points felix-nat64's logs at stderr (or `stream`) in the chosen format."""
    root = logging.getLogger(ROOT)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
