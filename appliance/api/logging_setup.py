"""Log lines as text or JSON, each carrying the id of the request it was logged under.

The request-context middleware sets ``CURRENT_REQUEST_ID`` for the duration of a request; a
filter on the handler copies it onto every record, so lines logged deep in a handler, in a
thread started with ``anyio.to_thread`` (which copies the context) or by a library all name
their request. A ContextVar is the one module-level object here: it holds no value shared
between requests, each task sees its own.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any

CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("appliance_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Fields the access line passes with ``extra=``; the JSON formatter emits them as keys.
ACCESS_FIELDS = ("method", "path", "status", "latency_ms", "model", "key_id")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = CURRENT_REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log collectors (Loki, journald, ELK) parse unaided."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", None),
            "message": record.getMessage(),
        }
        if line["request_id"] == "-":
            line["request_id"] = None
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def log_handler(log_format: str, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json"
                         else logging.Formatter(TEXT_FORMAT))
    return handler


def configure_logging(log_format: str, level: str) -> None:
    """Installs one handler on the root logger; uvicorn's loggers propagate to it (the server
    passes ``log_config=None`` so uvicorn adds no handlers of its own)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(log_handler(log_format))
    root.setLevel(level.upper())
