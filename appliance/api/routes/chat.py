"""POST /v1/chat/completions: OpenAI's chat.completion and chat.completion.chunk shapes.

The stream sends the role first, then a reasoning model's reasoning deltas
(``delta.reasoning_content`` and/or ``delta.reasoning``, as ``[server] reasoning_field`` says),
then content deltas, then exactly one chunk carrying ``finish_reason``, then (only with
``stream_options.include_usage``) a usage chunk with ``choices: []``, then ``data: [DONE]``.
An error after the stream started travels as an error frame, and the stream still ends with
[DONE]. A reasoning choice's message carries its reasoning the same way, and
``completion_tokens_details.reasoning_tokens`` counts it.

With ``store: true`` (and a state store) the completion, its request messages and metadata are
written before the answer ends: a plain body once stored, a stream's assembled completion
before its [DONE]; ``routes/stored_completions.py`` reads them back. A key whose storage quota
has no room for the request's messages is refused before the engine runs (429
``storage_quota_exceeded``, ``param: store``); a completion that turns out too large to keep
is still answered, the refusal logged once and named in ``x-appliance-not-stored`` (a plain
body; a stream's headers are gone by then, so only the log says it).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.note import RequestNote
from appliance.api.routes.engine_call import EngineCall, gone_is_499, note_of, owned
from appliance.api.routes.stored_state_access import NOT_STORED_HEADER, stored_or_refused
from appliance.api.services import Services
from appliance.api.stored_state import (
    StateStore,
    StorageQuotaExceeded,
    StoredCompletion,
    stored_size,
)
from appliance.api.wire.chat import ChatCompletionRequest, image_refs, to_chat_params
from appliance.api.wire.generation import (
    SYSTEM_FINGERPRINT,
    token_usage_json,
    total_token_usage,
)
from appliance.api.wire.generation_bounds import check_chat, check_choice_tokens
from appliance.api.wire.image_input import resolve_images
from appliance.api.wire.reasoning import reasoning_fields
from appliance.api.wire.sse import frame
from appliance.api.wire.stored_completions import stored_messages
from appliance.api.wire.validation import parse_json
from appliance.config import ReasoningField
from appliance.engines.base import (
    CHAT,
    CancelToken,
    ChatEvent,
    Finish,
    ReasoningDelta,
    Started,
    TextDelta,
    TokenChoice,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from appliance.errors import EngineFailure

log = logging.getLogger("appliance.api")


class _Identity:
    """What every chunk of one completion repeats: id, created, model."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, choices: list[dict[str, Any]], usage: Any = None,
              with_usage: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "service_tier": "default",
            "choices": choices,
        }
        if with_usage:
            body["usage"] = usage
        return body


@dataclass(frozen=True)
class _CallShape:
    """How tool calls go on the wire: ``tool_calls``, or the deprecated ``function_call``
    (one call, finish_reason "function_call") when the request used ``functions``; and the
    field(s) that carry reasoning."""

    legacy: bool
    offered: bool
    reasoning_field: ReasoningField = "both"  # where the reasoning goes ([server])

    def finish_reason(self, reason: str) -> str:
        return "function_call" if self.legacy and reason == "tool_calls" else reason

    def message_calls(self, calls: list[dict[str, Any]]) -> dict[str, Any]:
        if not calls:
            return {}
        if self.legacy:
            function: dict[str, Any] = calls[0]["function"]
            return {"function_call": function}
        return {"tool_calls": calls}

    def delta(self, event: ToolCallDelta) -> dict[str, Any] | None:
        function: dict[str, Any] = {"arguments": event.arguments}
        if event.name is not None:
            function = {"name": event.name, "arguments": event.arguments}
        if self.legacy:
            return {"function_call": function} if event.call_index == 0 else None
        call: dict[str, Any] = {"index": event.call_index}
        if event.id is not None:
            call.update(id=event.id, type="function")
        call["function"] = function
        return {"tool_calls": [call]}


def _record_tokens(note: RequestNote, usage: Usage) -> None:
    note.prompt_tokens = usage.prompt_tokens
    note.completion_tokens = usage.completion_tokens
    note.cached_tokens = usage.cached_tokens


@gone_is_499
async def create_chat_completion(request: Request) -> Response:
    services: Services = request.app.state.services
    note = note_of(request)
    bounds = services.bounds
    body = await parse_json(request, ChatCompletionRequest, services.bounds.max_body_bytes,
                            lambda data: check_chat(data, bounds))
    note.stream = bool(body.stream)
    engine = services.catalog.get(CHAT, body.model)
    note.model = engine.info.id
    check_choice_tokens(body.n or 1, body.max_completion_tokens or body.max_tokens
                        or engine.info.context_length, bounds)
    images = await resolve_images(image_refs(body, bounds), engine.info, bounds,
                                  services.image_fetch)
    params = owned(to_chat_params(body, storable=services.state is not None,
                                  model=engine.info, images=images), note)
    identity = _Identity(engine.info.id)
    calls = _CallShape(legacy=body.functions is not None or body.function_call is not None,
                       offered=params.tools is not None and params.tools.choice != "none",
                       reasoning_field=services.reasoning_field)
    wants_logprobs = params.sampling.logprobs is not None
    keep = _keeper(services, body, identity, note, wants_logprobs, calls)
    if keep is not None:
        await keep.check_room()
    cancel = CancelToken()
    events = engine.chat(params, cancel)
    call = EngineCall(request, note, cancel, [events])
    [started] = await call.started(Started, "The engine did not admit the request.")
    note.prompt_tokens = started.prompt_tokens
    if body.stream:
        return call.streamed(
            _stream(events, identity, note, body.wants_usage_chunk, params.n, calls, keep),
            "generating the completion", done=True)
    assembled = await call.gathered(_complete(events, note))
    completion = assembled.body(identity, wants_logprobs, calls)
    if keep is not None and not await keep.keep(assembled):
        return JSONResponse(completion, headers={NOT_STORED_HEADER: "storage_quota_exceeded"})
    return JSONResponse(completion)


@dataclass(frozen=True)
class _Keeper:
    """With ``store: true`` (and a store, which to_chat_params checked): what writes the
    completion, its request messages and metadata, scoped to the calling key. The response
    (a body, or a stream's [DONE]) is sent once the write is durable."""

    state: StateStore
    owner: str | None
    body: ChatCompletionRequest
    identity: _Identity
    messages: tuple[dict[str, Any], ...]
    wants_logprobs: bool
    shape: _CallShape

    async def check_room(self) -> None:
        """Before the engine runs: room for what is known of the completion, its messages
        (the answer's size is known only once it is generated; the write checks it)."""
        with stored_or_refused("store"):
            await self.state.room(self.owner, more_bytes=stored_size(self.messages))

    async def keep(self, assembled: _Assembled) -> bool:
        """Writes the completion; False (logged) when the key's quota has no room for it."""
        identity = self.identity
        try:
            await self.state.put_completion(StoredCompletion(
                id=identity.id, owner=self.owner, created_at=float(identity.created),
                model=identity.model, metadata=dict(self.body.metadata or {}),
                messages=self.messages,
                body=assembled.body(identity, self.wants_logprobs, self.shape)))
        except StorageQuotaExceeded as error:
            log.warning("completion %s answered but not stored: %s", identity.id,
                        error.message)
            return False
        return True


def _keeper(services: Services, body: ChatCompletionRequest, identity: _Identity,
            note: RequestNote, wants_logprobs: bool, shape: _CallShape) -> _Keeper | None:
    state = services.state
    if not body.store or state is None:
        return None
    messages = stored_messages(identity.id, [m.model_dump(exclude_none=True)
                                             for m in body.messages])
    return _Keeper(state, note.key_id, body, identity, messages, wants_logprobs, shape)


def logprobs_json(entries: Iterable[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's choice.logprobs: one entry per token, with its bytes and top alternatives."""
    def choice(c: TokenChoice) -> dict[str, Any]:
        return {"token": c.token, "logprob": c.logprob, "bytes": list(c.bytes)}

    return {"content": [{**choice(e.chosen), "top_logprobs": [choice(t) for t in e.top]}
                        for e in entries], "refusal": None}


def _message(text: str, calls: list[dict[str, Any]], shape: _CallShape,
             reasoning: str) -> dict[str, Any]:
    # OpenAI's content is null when the assistant only called tools.
    content = None if calls and not text.strip() else text
    # A choice that did not reason has no reasoning field at all (as llama-server and vLLM
    # answer), so a client that tests for the field does not show an empty block.
    thought = reasoning_fields(reasoning, shape.reasoning_field) if reasoning else {}
    return {"role": "assistant", "content": content, "refusal": None, "annotations": [],
            **thought, **shape.message_calls(calls)}


class _Assembled:
    """One completion's choices as its events arrive: reasoning, text, logprobs, calls and
    finishes by choice index. What a plain response returns, and what a stored stream keeps."""

    def __init__(self) -> None:
        self.reasoning: dict[int, list[str]] = {}
        self.parts: dict[int, list[str]] = {}
        self.logprobs: dict[int, list[TokenLogprob]] = {}
        self.calls: dict[int, list[dict[str, Any]]] = {}
        self.finishes: dict[int, Finish] = {}

    def add(self, event: ChatEvent) -> None:
        if isinstance(event, ReasoningDelta):
            self.reasoning.setdefault(event.index, []).append(event.text)
        elif isinstance(event, TextDelta):
            self.parts.setdefault(event.index, []).append(event.text)
            self.logprobs.setdefault(event.index, []).extend(event.logprobs)
        elif isinstance(event, ToolCallDelta):
            made = self.calls.setdefault(event.index, [])
            if event.id is not None:
                made.append({"id": event.id, "type": "function",
                             "function": {"name": event.name, "arguments": ""}})
            made[event.call_index]["function"]["arguments"] += event.arguments
        elif isinstance(event, Finish):
            self.finishes[event.index] = event

    def body(self, identity: _Identity, wants_logprobs: bool,
             shape: _CallShape) -> dict[str, Any]:
        finishes = self.finishes
        return {
            "id": identity.id,
            "object": "chat.completion",
            "created": identity.created,
            "model": identity.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "service_tier": "default",
            "choices": [{
                "index": index,
                "message": _message("".join(self.parts.get(index, [])),
                                    self.calls.get(index, []), shape,
                                    "".join(self.reasoning.get(index, []))),
                "logprobs": logprobs_json(self.logprobs.get(index, []))
                if wants_logprobs else None,
                "finish_reason": shape.finish_reason(finishes[index].reason),
            } for index in sorted(finishes)],
            "usage": token_usage_json(total_token_usage(list(finishes.values()))),
        }


async def _complete(events: AsyncGenerator[ChatEvent, None], note: RequestNote) -> _Assembled:
    assembled = _Assembled()
    async with aclosing(events):
        async for event in events:
            if isinstance(event, ReasoningDelta | TextDelta | ToolCallDelta):
                note.mark_first_token()
            assembled.add(event)
    if not assembled.finishes:
        raise EngineFailure("The engine stopped without finishing the completion.")
    _record_tokens(note, total_token_usage(list(assembled.finishes.values())))
    return assembled


async def _stream(events: AsyncGenerator[ChatEvent, None], identity: _Identity,
                  note: RequestNote, include_usage: bool, choices: int,
                  shape: _CallShape, keep: _Keeper | None = None) -> AsyncGenerator[bytes, None]:
    def choice(index: int, delta: dict[str, Any], finish_reason: str | None = None,
               logprobs: tuple[TokenLogprob, ...] = ()) -> dict[str, Any]:
        return {"index": index, "delta": delta,
                "logprobs": logprobs_json(logprobs) if logprobs else None,
                "finish_reason": finish_reason}

    finishes: list[Finish] = []
    assembled = _Assembled() if keep is not None else None
    # With tools the reply may be calls only, whose content is null (as OpenAI sends it).
    opening = None if shape.offered else ""
    for index in range(choices):
        yield frame(identity.chunk([choice(index, {"role": "assistant", "content": opening,
                                                   "refusal": None})],
                                   with_usage=include_usage))
    async with aclosing(events):
        async for event in events:
            if assembled is not None:
                assembled.add(event)
            if isinstance(event, ReasoningDelta):
                if not event.text:
                    continue
                note.mark_first_token()
                note.completion_tokens += 1  # provisional count, until Finish says exactly
                yield frame(identity.chunk(
                    [choice(event.index, reasoning_fields(event.text, shape.reasoning_field))],
                    with_usage=include_usage))
            elif isinstance(event, TextDelta):
                if not event.text and not event.logprobs:
                    continue
                note.mark_first_token()
                note.completion_tokens += 1  # provisional count, until Finish says exactly
                yield frame(identity.chunk(
                    [choice(event.index, {"content": event.text}, None, event.logprobs)],
                    with_usage=include_usage))
            elif isinstance(event, ToolCallDelta):
                delta = shape.delta(event)
                if delta is None:
                    continue
                note.mark_first_token()
                yield frame(identity.chunk([choice(event.index, delta)],
                                           with_usage=include_usage))
            elif isinstance(event, Finish):
                finishes.append(event)
                _record_tokens(note, total_token_usage(finishes))
                yield frame(identity.chunk(
                    [choice(event.index, {}, shape.finish_reason(event.reason))],
                    with_usage=include_usage))
    if include_usage and finishes:
        yield frame(identity.chunk([], token_usage_json(total_token_usage(finishes)), True))
    if keep is not None and assembled is not None and assembled.finishes:
        # Before [DONE]: a client that saw the stream end can read the completion back.
        await keep.keep(assembled)
