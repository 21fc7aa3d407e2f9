"""One response's generation, whoever waits for it (a plain request, a stream, a background
task): the engine admitted (with ``truncation: auto`` fitting the history to the context
first), its events made into the output items, the stream events and the final body, and the
finished response kept (stored, appended to its conversation) before its last event goes out,
so a client that saw it end can read it back at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from appliance.api.note import RequestNote
from appliance.api.routes.stored_state_access import stored_or_refused
from appliance.api.stored_state import (
    ConversationFull,
    StateStore,
    StorageQuotaExceeded,
    StoredResponse,
    stored_size,
)
from appliance.api.wire.responses_object import (
    ENDING_EVENTS,
    ResponseShape,
    Status,
    error_event,
    error_json,
)
from appliance.api.wire.responses_output import OutputBuilder, Seal
from appliance.api.wire.responses_tools import OfferedTools
from appliance.engines.base import (
    CancelToken,
    ChatEngine,
    ChatEvent,
    ChatMessage,
    ChatParams,
    Finish,
    ReasoningDelta,
    Started,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from appliance.errors import ApplianceError, ContextLengthExceeded, EngineFailure, InvalidRequest

log = logging.getLogger("appliance.api")
JSON = dict[str, Any]
T = TypeVar("T")
First = Callable[[AsyncGenerator[ChatEvent, None], CancelToken], Awaitable[Started]]


class Watch(Protocol):
    """Runs work the way its caller waits (a request: while watching that its client stays)."""

    def __call__(self, work: Awaitable[T]) -> Awaitable[T]: ...


@dataclass(frozen=True)
class Admitted:
    """The engine took the request: its events after ``Started``, and what stops them."""

    events: AsyncGenerator[ChatEvent, None]
    started: Started
    cancel: CancelToken
    dropped: int  # history messages ``truncation: auto`` left out


async def _attempt(engine: ChatEngine, params: ChatParams, first: First,
                   dropped: int) -> Admitted:
    cancel = CancelToken()
    events = engine.chat(params, cancel)
    try:
        started = await first(events, cancel)
    except InvalidRequest as refused:
        if refused.param == "messages":  # the engine's name for what is `input` here
            refused.param = "input"
        raise
    return Admitted(events, started, cancel, dropped)


async def admit(engine: ChatEngine, params: ChatParams, auto_truncate: bool,
                first: First, watch: Watch) -> Admitted:
    """The engine's first event for ``params`` (``first`` waits for it the caller's way).
    Too long for the context: a 400, or with ``auto_truncate`` the oldest messages after the
    leading system text dropped until the prompt fits (counted under ``watch``)."""
    try:
        return await _attempt(engine, params, first, 0)
    except ContextLengthExceeded:
        if not auto_truncate:
            raise
    fitted, dropped = await watch(fit_context(engine, params))
    log.info("truncation auto: dropped the oldest %d of %d messages to fit the context of "
             "%d tokens", dropped, len(params.messages), engine.info.context_length)
    return await _attempt(engine, fitted, first, dropped)


async def fit_context(engine: ChatEngine, params: ChatParams) -> tuple[ChatParams, int]:
    """The params with the fewest oldest messages dropped that fit the context, found by
    bisection over the places a history may start (never between a call and its outputs),
    each step one count of the prompt's tokens, stopped past the context."""
    messages = params.messages
    head = 1 if messages and messages[0].role == "system" else 0
    starts = [i for i in range(head, len(messages)) if messages[i].role != "tool"]
    room = engine.info.context_length - (params.max_tokens or 1)

    def cut(start: int) -> ChatParams:
        kept: tuple[ChatMessage, ...] = (*messages[:head], *messages[start:])
        return replace(params, messages=kept)

    async def fits(start: int) -> bool:
        count = await engine.count_tokens(cut(start), CancelToken(),
                                          limit=engine.info.context_length)
        return count <= room

    if not starts or not await fits(starts[-1]):
        raise ContextLengthExceeded(
            f"This model's maximum context length is {engine.info.context_length} tokens; "
            "even the last input item alone does not fit it (with 'max_output_tokens').",
            param="input")
    low, high = 0, len(starts) - 1  # starts[high] fits; the full history did not
    while low < high:
        middle = (low + high) // 2
        if await fits(starts[middle]):
            high = middle
        else:
            low = middle + 1
    return cut(starts[high]), starts[high] - head


@dataclass(frozen=True)
class Keeping:
    """Where a finished response goes: the store (``store: true``) and its conversation."""

    state: StateStore | None
    store: bool
    owner: str | None
    input_items: tuple[JSON, ...]  # this turn's, with their stored ids
    previous_response_id: str | None
    conversation_id: str | None

    async def check_room(self) -> None:
        """Before the engine runs: room in the key's storage quota for what is known of the
        response (its input items), and in its conversation for them and an answer."""
        if self.state is None:
            return
        items = list(self.input_items)
        if self.store:
            with stored_or_refused("store"):
                await self.state.room(self.owner, more_bytes=stored_size(items))
        if self.conversation_id is not None:
            with stored_or_refused("conversation"):
                await self.state.room(self.owner, more_bytes=stored_size(items),
                                      conversation_id=self.conversation_id,
                                      more_items=len(items) + 1)

    async def keep(self, shape: ResponseShape, body: JSON) -> bool:
        """Stores the response and adds a finished one to its conversation. False (logged)
        when the key's storage quota or the conversation's bound had no room for it: the
        answer is still delivered (the size of an answer is known only once it is made)."""
        if self.state is None:
            return True
        try:
            if self.store:
                await self.state.put_response(StoredResponse(
                    id=shape.id, owner=self.owner, created_at=float(shape.created_at),
                    model=shape.model, previous_response_id=self.previous_response_id,
                    conversation_id=self.conversation_id,
                    input_items=tuple(dict(i) for i in self.input_items), body=dict(body)))
            output = body.get("output")
            if self.conversation_id is not None and body.get("status") in ("completed",
                                                                            "incomplete"):
                added = [dict(i) for i in self.input_items]
                added += [dict(i) for i in output] if isinstance(output, list) else []
                if not await self.state.append_items(self.owner, self.conversation_id, added):
                    log.warning("conversation %s is gone: response %s was not added to it",
                                self.conversation_id, shape.id)
        except (StorageQuotaExceeded, ConversationFull) as refused:
            log.warning("response %s answered but not stored: %s", shape.id, refused.message)
            return False
        return True


class ResponseRun:
    """One response's events, from ``response.created`` to its ending."""

    def __init__(self, shape: ResponseShape, tools: OfferedTools, note: RequestNote,
                 keeping: Keeping, first_status: Status = "in_progress", *,
                 seal: Seal | None = None):
        self.shape = shape
        self.note = note
        self.keeping = keeping
        # seal: reasoning items carry their encrypted_content (include asked for it)
        self.builder = OutputBuilder(tools, seal)
        self._first_status = first_status
        self.latest: JSON = shape.body(first_status)
        self.stored = True  # False: the final body was delivered but could not be kept

    def _body(self, status: Status, *, usage: Usage | None = None, error: JSON | None = None,
              incomplete: str | None = None, completed_at: int | None = None) -> JSON:
        self.latest = self.shape.body(status, self.builder.output, usage=usage, error=error,
                                      incomplete=incomplete, completed_at=completed_at)
        return self.latest

    async def events(self, engine_events: AsyncGenerator[ChatEvent, None], *,
                     in_band: bool) -> AsyncGenerator[JSON, None]:
        """The stream's events (without sequence numbers). ``in_band``: a failure becomes an
        ``error`` event and ``response.failed`` (streams, background work); otherwise it
        propagates, and a plain request answers it with an error status."""
        yield {"type": "response.created", "response": self.latest}
        yield {"type": "response.in_progress", "response": self._body("in_progress")}
        try:
            finish: Finish | None = None
            async with aclosing(engine_events):
                async for event in engine_events:
                    for made in self._made(event):
                        yield made
                    if isinstance(event, Finish):
                        finish = event
            if finish is None:
                raise EngineFailure("The engine stopped without finishing the response.")
            status: Status = "incomplete" if finish.reason == "length" else "completed"
            for made in self.builder.finish("completed" if status == "completed"
                                            else "incomplete"):
                yield made
            usage = finish.usage
            self.note.prompt_tokens = usage.prompt_tokens
            self.note.completion_tokens = usage.completion_tokens
            self.note.cached_tokens = usage.cached_tokens
            body = self._body(status, usage=usage, completed_at=int(time.time()),
                              incomplete="max_output_tokens" if status == "incomplete" else None)
            self.stored = await self.keeping.keep(self.shape, body)
        except Exception as exc:
            if not in_band:
                raise
            async for made in self._failed(exc):
                yield made
            return
        yield {"type": ENDING_EVENTS[status], "response": body}

    def _made(self, event: ChatEvent) -> list[JSON]:
        if isinstance(event, ReasoningDelta):
            if event.text:
                self.note.mark_first_token()
                self.note.completion_tokens += 1  # provisional, until Finish says exactly
            return list(self.builder.reasoning(event))
        if isinstance(event, TextDelta):
            if event.text or event.logprobs:
                self.note.mark_first_token()
                self.note.completion_tokens += 1  # provisional, until Finish says exactly
            return list(self.builder.text(event))
        if isinstance(event, ToolCallDelta):
            self.note.mark_first_token()
            return list(self.builder.call(event))
        return []

    async def _failed(self, exc: Exception) -> AsyncGenerator[JSON, None]:
        error = exc if isinstance(exc, ApplianceError) else EngineFailure(
            "The server had an error while generating the response.")
        if not isinstance(exc, ApplianceError):
            log.error("response %s failed", self.shape.id, exc_info=exc)
        self.note.failed_mid_stream = True
        self.note.error_code = error.code or error.error_type
        for made in self.builder.stop():
            yield made
        yield error_event(error)
        body = self._body("failed", error=error_json(error))
        await self.keeping.keep(self.shape, body)
        yield {"type": ENDING_EVENTS["failed"], "response": body}

    async def ended(self, status: Status, error: ApplianceError | None) -> list[JSON]:
        """The ending of work stopped from outside (a cancel, the shutdown cut): the open
        item closed, the body kept, and the last events returned."""
        closing = self.builder.stop()
        body = self._body(status, error=error_json(error) if error else None)
        await self.keeping.keep(self.shape, body)
        return [*closing, {"type": ENDING_EVENTS[status], "response": body}]

    def forget(self) -> None:
        """The response was deleted while it ran: nothing more of it is stored (nor added to
        its conversation), so the deleted row does not come back when the work ends."""
        self.keeping = replace(self.keeping, store=False, conversation_id=None)

    async def final(self, engine_events: AsyncGenerator[ChatEvent, None]) -> JSON:
        """A plain response: the events gathered into the final body."""
        async for _ in self.events(engine_events, in_band=False):
            pass
        return self.latest

