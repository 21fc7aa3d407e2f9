"""One request's engine work under a client that may leave: the choreography every generating
route shares, written once.

A route says what to produce (the params, how events become chunks or one body); this module
says how the work survives the client: the wait for the engine's first event (admission, or an
error that is still a plain 4xx/5xx), a client gone meanwhile (the work is cancelled, its place
given up, the answer a 499 that the ledger records as ``cancelled``), a plain response gathered
while watching the client, and a stream whose late error becomes an error frame and which ends
with ``[DONE]`` where the route's protocol has one. Cancellation from outside (the shutdown cut
in middleware/drain.py) is a BaseException and passes through untouched: the middleware writes
that ending itself.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from appliance.api.errors import mid_stream_failure
from appliance.api.note import RequestNote
from appliance.api.routes.disconnect import ClientGone, unless_disconnected
from appliance.api.wire.sse import DONE, SSE_HEADERS, SSE_MEDIA_TYPE
from appliance.errors import EngineFailure

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

E = TypeVar("E")
S = TypeVar("S")
T = TypeVar("T")
Owned = TypeVar("Owned", bound="DataclassInstance")
Handler = Callable[[Request], Awaitable[Response]]
Release = Callable[[], Awaitable[None]]


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def note_of(request: Request) -> RequestNote:
    note: RequestNote = request.scope["state"]["note"]
    return note


def owned(params: Owned, note: RequestNote) -> Owned:
    """The params stamped with the caller's key: engines share slots and workers per key."""
    return replace(params, owner=note.key_id)


def gone_is_499(handler: Handler) -> Handler:
    """A route whose client left (ClientGone, raised once its work is stopped) answers 499."""
    @functools.wraps(handler)
    async def serve(request: Request) -> Response:
        try:
            return await handler(request)
        except ClientGone:
            note_of(request).client_gone = True
            return Response(status_code=499)  # nobody reads it; the ledger says "cancelled"
    return serve


async def watched(request: Request, work: Awaitable[T], cancel: Cancellable | None = None) -> T:
    """Runs a plain response's work while watching the client; ClientGone if it leaves first.
    The engine's work ends with the response either way: ``cancel`` is always cancelled."""
    try:
        return await unless_disconnected(request.receive, work)
    finally:
        if cancel is not None:
            cancel.cancel()


class Lease:
    """Something the response needs until it is done (an upload's spooled file): released
    when the handler returns, unless a stream took it over to release after its last frame."""

    def __init__(self, release: Release):
        self._release = release
        self._streamed = False

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if not self._streamed:
            await self._release()

    def hand_to_stream(self) -> Release:
        self._streamed = True
        return self._release


class EngineCall(Generic[E]):
    """The event streams of one request's engine work (one per prompt) and what stops them."""

    def __init__(self, request: Request, note: RequestNote, cancel: Cancellable,
                 streams: Sequence[AsyncGenerator[E, None]]):
        self.request = request
        self.note = note
        self.cancel = cancel
        self.streams = streams

    async def started(self, kind: type[S], refused: str) -> list[S]:
        """Each stream's first event, which must be a ``kind`` (the admission). Errors before
        generation become plain 4xx/5xx; a client that leaves while its work is prepared or
        queued stops that work and gives its place up (ClientGone)."""
        firsts: list[S] = []
        try:
            for events in self.streams:
                first = await unless_disconnected(self.request.receive, anext(events))
                if not isinstance(first, kind):
                    raise EngineFailure(refused)
                firsts.append(first)
        except BaseException:
            self.cancel.cancel()
            for events in self.streams:
                await events.aclose()
            raise
        return firsts

    async def gathered(self, work: Awaitable[T]) -> T:
        """A plain response's body, gathered while watching the client (see ``watched``)."""
        return await watched(self.request, work, self.cancel)

    def streamed(self, chunks: AsyncGenerator[bytes, None], doing: str, *, done: bool,
                 after: Release | None = None) -> StreamingResponse:
        """An SSE response of ``chunks``; an error once it began is an error frame (about
        ``doing``), then ``[DONE]`` if the protocol ``done``; ``after`` runs when it ends."""
        return StreamingResponse(self._frames(chunks, doing, done, after),
                                 media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)

    async def _frames(self, chunks: AsyncGenerator[bytes, None], doing: str, done: bool,
                      after: Release | None) -> AsyncIterator[bytes]:
        try:
            # Closing the chunks closes the engine's events inside them, before the cancel.
            async with aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
        except Exception as exc:
            yield mid_stream_failure(self.note, exc, doing)
        finally:
            self.cancel.cancel()
            if after is not None:
                await after()
        if done:
            yield DONE
