"""The HTTP/1.1 connection edge: uvicorn's h11 protocol with a cap on open connections and
deadlines for a request's headers and body, so clients that connect and trickle bytes cannot
hold the server's sockets.

uvicorn closes an idle keep-alive connection after a few seconds, but once a client has sent
one byte of a request it waits for the rest forever (slowloris), and its ``limit_concurrency``
answers only after a request's headers are in, with a plain-text 503. Here, per connection:

- the request's headers must be complete within ``header_timeout_s`` of the connection
  opening (or of the previous response ending): bytes trickling in do not extend it;
- while a body is arriving, no pause between two of its pieces may last ``body_timeout_s``
  (pauses the server causes, when the app is behind and reading stopped, do not count);
- past ``max_connections`` open connections, a new one is answered, as soon as its headers
  are in, with a 503 in OpenAI's envelope (``retry-after``; the SDKs retry it) and closed
  (``/health`` is still answered, then closed: the process is alive); past twice that, it is
  closed at once without reading anything (file descriptors are finite).

A connection that misses a deadline is closed; a request whose body stalled sees the client
as gone (its ledger row says ``cancelled``). Each kind of close is logged at most a few times
a minute, with a count of the rest. The line and headers together are bounded by h11
(``RequestBounds.max_header_bytes``; uvicorn answers a larger one with a 400). TLS is
unaffected: asyncio hands the protocol decrypted bytes once the handshake is done (the
handshake has asyncio's own 60 s timeout).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from appliance.api.errors import error_response, retry_headers
from appliance.api.telemetry.logs import Throttle
from appliance.errors import Overloaded

log = logging.getLogger("appliance.connections")

# What a client turned away at the cap is told to wait: about one header timeout of the
# connections ahead of it.
_RETRY_AFTER_S = 2.0
# Files the process holds besides connections: model files, SQLite, logs, pipes.
_OTHER_FILES = 256
ALWAYS_ANSWERED = ("/health",)


@dataclass(frozen=True)
class EdgeBounds:
    max_connections: int = 512
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


class _EdgeLog:
    """One throttle per kind of close, shared by every connection of one server."""

    def __init__(self) -> None:
        self._throttles: dict[str, Throttle] = {}

    def note(self, kind: str, message: str, *args: object) -> None:
        throttle = self._throttles.setdefault(kind, Throttle(burst=3, window_s=60.0))
        allowed, held = throttle.allow()
        if allowed:
            suffix = f" ({held} more like this since the last line)" if held else ""
            log.warning(message + suffix, *args)


def edge_protocol(bounds: EdgeBounds) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with ``bounds`` (pass it as ``uvicorn.Config(http=...)``).

    A class per server: what its connections share (the log throttles) lives in this closure,
    not in a module global.
    """
    edge_log = _EdgeLog()
    hard_cap = 2 * bounds.max_connections

    def over_capacity(app: ASGIApp) -> ASGIApp:
        async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
            if scope.get("path") in ALWAYS_ANSWERED:
                await app(scope, receive, _closing(send))
            else:
                await _refuse(scope, receive, send)
        return refuse

    async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
        error = Overloaded(
            f"The server has more than {bounds.max_connections} connections open (its "
            "max_connections); retry shortly.", retry_after=_RETRY_AFTER_S)
        headers = {**retry_headers(_RETRY_AFTER_S), "connection": "close",
                   "x-content-type-options": "nosniff"}
        await error_response(error, headers)(scope, receive, send)

    class EdgeProtocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._phase: str | None = None  # "headers", "body", or None (no deadline)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            open_now = len(self.connections)
            if open_now > hard_cap:
                edge_log.note("hard_cap", "%d connections open: closing new ones unanswered "
                              "(max_connections = %d)", open_now, bounds.max_connections)
                transport.close()
                return
            if open_now > bounds.max_connections:
                edge_log.note("cap", "%d connections open: answering new ones with 503 "
                              "(max_connections = %d)", open_now, bounds.max_connections)
                self.app = over_capacity(self.app)
            self._watch(data_arrived=False)

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch(data_arrived=True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch(data_arrived=False)

        def _watch(self, *, data_arrived: bool) -> None:
            """Arms the deadline the connection's state calls for."""
            if self.transport.is_closing():
                self._cancel()
                return
            state = self.conn.their_state
            if state is h11.IDLE:  # waiting for (the rest of) a request's headers
                if self._phase != "headers":
                    self._arm("headers", bounds.header_timeout_s, self._headers_late)
            elif state is h11.SEND_BODY:
                if self._phase != "body" or data_arrived:
                    self._arm("body", bounds.body_timeout_s, self._body_stalled)
            else:  # the request is in: the app takes as long as it takes
                self._cancel()

        def _arm(self, phase: str, delay: float, callback: Any) -> None:
            self._cancel()
            self._phase = phase
            self._deadline = self.loop.call_later(delay, callback)

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = None
            self._phase = None

        def _headers_late(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                edge_log.note("headers", "closed a connection from %s: its request headers "
                              "were not complete within %gs", _peer(self.client),
                              bounds.header_timeout_s)
                self.transport.close()

        def _body_stalled(self) -> None:
            self._deadline = None
            if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
                return
            if self.flow.read_paused:  # the app is behind, not the client
                self._arm("body", bounds.body_timeout_s, self._body_stalled)
                return
            edge_log.note("body", "closed a connection from %s: its request body paused "
                          "for over %gs", _peer(self.client), bounds.body_timeout_s)
            self.transport.close()

    return EdgeProtocol


def _closing(send: Send) -> Send:
    async def send_and_close(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []),
                                              (b"connection", b"close")]}
        await send(message)
    return send_and_close


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown address"


def ensure_file_limit(bounds: EdgeBounds) -> None:
    """Raises the process's soft limit on open files so that twice the connection cap (and
    the models, the ledger and the logs) fit; warns when the hard limit does not allow it."""
    try:
        import resource
    except ImportError:  # not on this platform (Windows): nothing to raise
        return
    needed = 2 * bounds.max_connections + _OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        log.warning("open-file limit %d is below the %d that max_connections = %d needs; "
                    "lower max_connections or raise the limit (ulimit -n)", target, needed,
                    bounds.max_connections)
