"""Graceful shutdown: on SIGTERM or Ctrl-C, stop taking work, let in-flight requests finish.

uvicorn's own handling closes the listening socket at once, so a load balancer polling
``/ready`` would see connection errors, not a "not ready". Here the first signal only starts
draining: ``/ready`` answers 503, every new request (``/health`` aside: the process is alive)
gets a 503 in OpenAI's envelope with ``retry-after`` (the SDKs retry it, by then against a
replacement), and requests already running continue. Once none is left, uvicorn is told to
exit and the server flushes the ledger. Requests still running when the grace period is over
are cut here, not by uvicorn's blind cancellation: each is cancelled (its engine frees the
slot at the next step) and its client gets a proper ending: a 503 ``shutting_down`` if
nothing was sent yet, else an error frame (and ``[DONE]`` for chat streams) or the end of the
body; its ledger row says ``error``, code ``shutting_down``, not charged. A second signal
exits at once, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import socket
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.errors import error_frame, error_response, retry_headers
from appliance.api.note import RequestNote
from appliance.api.route_policy import policy_of
from appliance.api.wire.sse import DONE, SSE_MEDIA_TYPE
from appliance.errors import ServiceUnavailable

log = logging.getLogger("appliance.shutdown")

# What a refused client is told to wait: a restart of this box takes about this long.
RETRY_AFTER_S = 5.0
# How long cut requests get to deliver their ending before uvicorn is told to exit.
CUT_SETTLE_S = 2.0


class DrainState:
    """Whether the server is draining, and which requests are still in flight."""

    def __init__(self) -> None:
        self.draining = False
        self._running: set[asyncio.Task[object]] = set()
        self._cut: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def begin(self) -> None:
        self.draining = True

    def entered(self, task: asyncio.Task[object]) -> None:
        self._running.add(task)
        self._idle.clear()

    def left(self, task: asyncio.Task[object]) -> None:
        self._running.discard(task)
        self._cut.discard(task)
        if not self._running:
            self._idle.set()

    def cut_all(self) -> int:
        """Cancels every request still running (the grace period is over); returns how many."""
        for task in self._running - self._cut:
            self._cut.add(task)
            task.cancel("cut at shutdown: the grace period is over")
        return len(self._cut)

    def was_cut(self, task: asyncio.Task[object]) -> bool:
        return task in self._cut

    async def wait_idle(self, grace_s: float) -> bool:
        """True when every request finished within ``grace_s``."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            return False
        return True


class _ResponseWatch:
    """What of a response has gone out, so a cut request can be ended properly."""

    def __init__(self, send: Send):
        self._send = send
        self.started = False
        self.finished = False
        self.event_stream = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            content_type = dict(message.get("headers", [])).get(b"content-type", b"")
            self.event_stream = content_type.startswith(SSE_MEDIA_TYPE.encode())
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            self.finished = True
        await self._send(message)


class DrainMiddleware:
    """Counts in-flight requests, refuses new ones while draining, ends cut ones properly."""

    def __init__(self, app: ASGIApp, state: DrainState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not policy_of(scope).drains:
            await self.app(scope, receive, send)
            return
        if self.state.draining:
            refusal = _shutting_down()
            note: RequestNote | None = scope.get("state", {}).get("note")
            if note is not None:
                note.error_code = refusal.code
            await error_response(refusal, retry_headers(RETRY_AFTER_S))(scope, receive, send)
            return
        task: asyncio.Task[object] | None = asyncio.current_task()
        assert task is not None
        watch = _ResponseWatch(send)
        self.state.entered(task)
        try:
            await self.app(scope, receive, watch.send)
        except asyncio.CancelledError:
            if not self.state.was_cut(task):
                raise  # uvicorn's own cancellation (a second signal): not ours to end
            task.uncancel()
            await _end_cut(scope, receive, watch)
        finally:
            self.state.left(task)


def _shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The server is shutting down and takes no new requests; retry shortly.",
        code="shutting_down")


async def _end_cut(scope: Scope, receive: Receive, watch: _ResponseWatch) -> None:
    refusal = ServiceUnavailable("The server shut down before this request finished; "
                                 "retry it.", code="shutting_down")
    note: RequestNote | None = scope.get("state", {}).get("note")
    if note is not None:
        note.failed_mid_stream = True
        note.error_code = refusal.code
    if not watch.started:
        await error_response(refusal, retry_headers(RETRY_AFTER_S))(scope, receive, watch.send)
    elif not watch.finished:
        ending = b""
        if watch.event_stream:
            ending = error_frame(refusal) + (DONE if policy_of(scope).ends_with_done else b"")
        await watch.send({"type": "http.response.body", "body": ending, "more_body": False})


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
            cut = self.drain.cut_all()
            log.warning("%d request(s) still running after %.0fs; cutting them", cut,
                        self.grace_s)
            if not await self.drain.wait_idle(CUT_SETTLE_S):
                log.warning("%d request(s) did not end when cut; uvicorn cancels them",
                            self.drain.in_flight)
        self.should_exit = True
