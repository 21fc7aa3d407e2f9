"""Graceful shutdown: on SIGTERM or Ctrl-C, stop taking work, let in-flight requests finish.

uvicorn's own handling closes the listening socket at once, so a load balancer polling
``/ready`` would see connection errors, not a "not ready". Here the first signal only starts
draining: ``/ready`` answers 503, every new request (``/health`` aside: the process is alive)
gets a 503 in OpenAI's envelope with ``retry-after`` (the SDKs retry it, by then against a
replacement), and requests already running continue. Once none is left, or the grace period
is over, uvicorn is told to exit; it then cancels what still runs and the server flushes the
ledger. A second signal exits at once, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import socket
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from appliance.api.errors import error_response
from appliance.api.limits import retry_headers
from appliance.errors import ServiceUnavailable

log = logging.getLogger("appliance.shutdown")

# What a refused client is told to wait: a restart of this box takes about this long.
RETRY_AFTER_S = 5.0
ALWAYS_SERVED = ("/health",)


class DrainState:
    """Whether the server is draining, and how many requests are still in flight."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.draining = True

    def entered(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def left(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, grace_s: float) -> bool:
        """True when every request finished within ``grace_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True


class DrainMiddleware:
    """Counts in-flight requests and refuses new ones while draining."""

    def __init__(self, app: ASGIApp, state: DrainState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_SERVED:
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            refusal = ServiceUnavailable(
                "The server is shutting down and takes no new requests; retry shortly.",
                code="shutting_down")
            await error_response(refusal, retry_headers(RETRY_AFTER_S))(scope, receive, send)
            return
        self.state.entered()
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.left()


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before its own shutdown (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, state: DrainState, grace_s: float):
        super().__init__(config)
        self.drain = state
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drainer: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()  # signal handlers reach the loop through it
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not appending to uvicorn's captured signals: it would re-raise them after shutdown
        # and the process would die of SIGTERM instead of exiting 0.
        if self.drain.draining or self._loop is None:
            self.should_exit = True
            self.force_exit = self.drain.draining
            return
        # A fresh context: the handler interrupts whatever task runs, and must neither log
        # under that task's request id nor hand it to the drain task.
        outside_requests = contextvars.Context()
        outside_requests.run(log.info, "%s received: draining %d request(s), at most %.0fs",
                             signal.Signals(sig).name, self.drain.in_flight, self.grace_s)
        self.drain.begin()
        self._loop.call_soon_threadsafe(self._start_drain, context=outside_requests)

    def _start_drain(self) -> None:
        self._drainer = asyncio.ensure_future(self._finish_drain())

    async def _finish_drain(self) -> None:
        if await self.drain.wait_idle(self.grace_s):
            log.info("drained; shutting down")
        else:
            log.warning("%d request(s) still running after %.0fs; cancelling them",
                        self.drain.in_flight, self.grace_s)
        self.should_exit = True
