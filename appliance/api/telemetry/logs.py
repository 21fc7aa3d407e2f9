"""Log lines as text or JSON, each carrying the id of the request it was logged under, and
none of them forgeable by a client.

The request-context middleware sets ``CURRENT_REQUEST_ID`` for the duration of a request; a
filter on the handler copies it onto every record, so lines logged deep in a handler, in a
thread started with ``anyio.to_thread`` (which copies the context) or by a library all name
their request. A ContextVar is the one module-level object here: it holds no value shared
between requests, each task sees its own.

Client text (a path, an unknown field name) reaches log messages. In the text format a
newline in it would start a line that looks like a record of its own, so control characters
in a message are escaped (``\\x0a``), and the lines of a traceback are indented: a line that
starts at column 0 is always the start of a real record. The JSON format escapes by
construction (one ``json.dumps`` per line). Both cut a message at ``MAX_MESSAGE_CHARS``.

``Throttle`` bounds how often a repeated line is written (refusals under a flood, uvicorn's
"Invalid HTTP request received."): a few per window, then one line saying how many were
left out.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("appliance_request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
# Fields the access line passes with ``extra=``; the JSON formatter emits them as keys.
ACCESS_FIELDS = ("method", "path", "status", "latency_ms", "model", "key_id")
# One message, after its arguments are filled in: enough for any line the appliance writes,
# small enough that a client's 8 MB of unknown field names cannot become an 8 MB line.
MAX_MESSAGE_CHARS = 4096
# C0 and C1 controls, DEL, and the Unicode line and paragraph separators (some viewers
# break lines at them).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape: one line, as typed."""
    return _CONTROL.sub(_escape_one, text)


def shown(text: str, max_chars: int) -> str:
    """Client text as logs and the ledger keep it: controls escaped, at most ``max_chars``
    characters (a cut text ends in ``…`` and says how long it was)."""
    if len(text) > max_chars:
        text = f"{text[:max_chars]}… ({len(text)} chars)"
    return escape_controls(text)


def _capped(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}… (message cut: {len(message)} chars)"


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = CURRENT_REQUEST_ID.get() or "-"
        return True


class TextFormatter(logging.Formatter):
    """``TEXT_FORMAT`` with client text made harmless (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(_capped(record.message))
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(stack_info)


def _indented(block: str) -> str:
    lines = _CONTROL_BUT_NEWLINE.sub(_escape_one, block).splitlines()
    return "\n".join("    " + line for line in lines)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log collectors (Loki, journald, ELK) parse unaided."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "request_id": getattr(record, "request_id", None),
            "message": _capped(record.getMessage()),
        }
        if line["request_id"] == "-":
            line["request_id"] = None
        for name in ACCESS_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class Throttle:
    """At most ``burst`` events per ``window_s`` pass; the rest are counted.

    ``allow()`` answers whether this event may be logged, and how many were held back since
    the last one that was (so the line can say so). Thread-safe: uvicorn's lines and ours
    come from the event loop, a library's may come from a worker thread.
    """

    def __init__(self, burst: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        self._window_start = -float("inf")
        self._passed = 0
        self._held = 0

    def allow(self) -> tuple[bool, int]:
        with self._lock:
            now = self.clock()
            if now - self._window_start >= self.window_s:
                self._window_start, self._passed = now, 0
            if self._passed < self.burst:
                self._passed += 1
                held, self._held = self._held, 0
                return True, held
            self._held += 1
            return False, 0


class ThrottleFilter(logging.Filter):
    """Throttles each distinct message (by its format string) of the logger it is put on;
    the first line let through after a pause says how many like it were left out."""

    _MAX_MESSAGES = 256  # distinct format strings tracked; more start the count afresh

    def __init__(self, burst: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self._burst, self._window_s, self._clock = burst, window_s, clock
        self._throttles: dict[str, Throttle] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        throttle = self._throttles.get(key)
        if throttle is None:
            if len(self._throttles) >= self._MAX_MESSAGES:
                self._throttles.clear()
            throttle = self._throttles.setdefault(
                key, Throttle(self._burst, self._window_s, self._clock))
        allowed, held = throttle.allow()
        if allowed and held:
            record.msg = f"{record.getMessage()} ({held} more like this were not logged)"
            record.args = None
        return allowed


def log_handler(log_format: str, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    return handler


def configure_logging(log_format: str, level: str) -> None:
    """Installs one handler on the root logger; uvicorn's loggers propagate to it (the server
    passes ``log_config=None`` so uvicorn adds no handlers of its own). uvicorn's warnings
    about malformed requests and refused connections repeat once per request under a flood:
    they are throttled."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(log_handler(log_format))
    root.setLevel(level.upper())
    uvicorn_errors = logging.getLogger("uvicorn.error")
    for old_filter in list(uvicorn_errors.filters):
        if isinstance(old_filter, ThrottleFilter):
            uvicorn_errors.removeFilter(old_filter)
    uvicorn_errors.addFilter(ThrottleFilter())
