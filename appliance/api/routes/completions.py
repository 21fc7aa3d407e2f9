"""POST /v1/completions: OpenAI's legacy text completions on the chat models, raw prompts.

A prompt (text or token ids, one or several) goes to the model as is, without a chat
template; each prompt gets ``n`` choices, numbered prompt by prompt. ``echo`` puts a text
prompt in front of its completions; ``logprobs`` (0-5) come in this endpoint's own shape
(parallel lists and text offsets). Refused by name: ``suffix`` (no shipped model can fill in
the middle), ``best_of`` above 1, ``logprobs`` with ``echo`` (no prompt logprobs).

A raw prompt has no reasoning: on a reasoning model the engine reads its output as plain text
(no template opened a thinking block). Should an engine split reasoning off one anyway, that
text is still the completion's (``_as_text``): nothing the model wrote is dropped.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.note import RequestNote
from appliance.api.routes.disconnect import unless_disconnected
from appliance.api.routes.engine_call import EngineCall, gone_is_499, note_of, owned
from appliance.api.services import Services
from appliance.api.wire.completions import CompletionRequest, to_completion_params
from appliance.api.wire.generation import SYSTEM_FINGERPRINT, token_usage_json, total_token_usage
from appliance.api.wire.generation_bounds import check_completion
from appliance.api.wire.sse import frame
from appliance.api.wire.validation import parse_json
from appliance.engines.base import (
    CHAT,
    CancelToken,
    ChatEvent,
    ChatParams,
    Finish,
    ReasoningDelta,
    Started,
    TextDelta,
    TokenLogprob,
    Usage,
)
from appliance.errors import EngineFailure, InvalidRequest

Tagged = tuple[int, ChatEvent]  # (prompt index, event)


class _CancelAll:
    """The cancel tokens of a request's prompts, cancelled together (the client left)."""

    def __init__(self, tokens: list[CancelToken]):
        self.tokens = tokens

    def cancel(self) -> None:
        for token in self.tokens:
            token.cancel()


async def _merged(generators: list[AsyncGenerator[ChatEvent, None]]) -> AsyncIterator[Tagged]:
    """Events of several prompts as they come, tagged with their prompt's index."""
    queue: asyncio.Queue[Tagged | BaseException | None] = asyncio.Queue()

    async def pump(index: int, events: AsyncGenerator[ChatEvent, None]) -> None:
        try:
            async for event in events:
                await queue.put((index, event))
        except Exception as exc:
            await queue.put(exc)
        finally:
            await events.aclose()
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(generators)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item[0], _as_text(item[1])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _admitted(call: EngineCall[ChatEvent],
                    generators: list[AsyncGenerator[ChatEvent, None]]) -> list[Started]:
    """Every prompt's ``Started``, all asked for at once: the request's prompts arrive at the
    engine's queue together, each checked before any of them queues its choices, as a burst
    of separate requests would be. Asked one after another (EngineCall.started), each prompt
    found the earlier ones' ``n`` choices queued: 16 prompts x n=5 passed ``queue_limit`` (64)
    and were a 503 on an idle server, on every retry. Errors and a client that leaves end as
    EngineCall.started ends them: everything stopped, the first prompt's error raised."""
    try:
        firsts = await unless_disconnected(call.request.receive, _first_events(generators))
        if not all(isinstance(first, Started) for first in firsts):
            raise EngineFailure("The engine did not admit the request.")
    except BaseException:
        call.cancel.cancel()
        for events in generators:
            await events.aclose()
        raise
    return [first for first in firsts if isinstance(first, Started)]


async def _first_events(generators: list[AsyncGenerator[ChatEvent, None]]) -> list[ChatEvent]:
    """Each generator's first event, awaited together; on the first failure the others are
    cancelled (a prompt still being prepared stops there) and the failure of the lowest prompt
    that failed is raised."""
    tasks = [asyncio.ensure_future(anext(events)) for events in generators]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()  # a no-op on the done ones
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            if isinstance(failure, StopAsyncIteration):
                raise EngineFailure("The engine did not admit the request.")
            raise failure
    return [task.result() for task in tasks]


def _as_text(event: ChatEvent) -> ChatEvent:
    """This endpoint has no reasoning field: reasoning an engine split off is text here."""
    return TextDelta(event.text, event.index) if isinstance(event, ReasoningDelta) else event


class _Completion:
    def __init__(self, model: str, params: list[ChatParams], echo: bool, logprobs: bool):
        self.logprobs = logprobs
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.n = params[0].n
        self.echoes = [p.prompt if echo and isinstance(p.prompt, str) else "" for p in params]

    def index(self, prompt: int, choice: int) -> int:
        return prompt * self.n + choice

    def body(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created,
                "model": self.model, "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": choices, **extra}


def _choice(index: int, text: str, finish_reason: str | None,
            logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


class _LegacyLogprobs:
    """The completions endpoint's logprobs: parallel lists, and each token's character
    offset in the choice's text (which starts after an echoed prompt)."""

    def __init__(self, offset: int):
        self.offset = offset

    def take(self, entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                               "text_offset": []}
        for entry in entries:
            out["tokens"].append(entry.chosen.token)
            out["token_logprobs"].append(entry.chosen.logprob)
            out["top_logprobs"].append({t.token: t.logprob for t in entry.top})
            out["text_offset"].append(self.offset)
            self.offset += len(entry.chosen.token)
        return out


def _usage(prompt_tokens: int, finishes: list[Finish]) -> Usage:
    total = total_token_usage(finishes) if finishes else Usage(prompt_tokens, 0)
    cached = sum(f.usage.cached_tokens for f in finishes if f.index == 0)
    return Usage(prompt_tokens, total.completion_tokens, cached, total.reasoning_tokens)


@gone_is_499
async def create_completion(request: Request) -> Response:
    services: Services = request.app.state.services
    note = note_of(request)
    bounds = services.bounds
    body = await parse_json(request, CompletionRequest, services.bounds.max_body_bytes,
                            lambda data: check_completion(data, bounds))
    note.stream = bool(body.stream)
    engine = services.catalog.get(CHAT, body.model)
    note.model = engine.info.id
    params = [owned(p, note) for p in to_completion_params(body, bounds)]
    if len(params) > engine.info.queue_limit:
        # Each prompt waits as one request: more than the queue holds is never admitted,
        # and a 503 would have the SDK retry it forever.
        raise InvalidRequest(
            f"Invalid 'prompt': {len(params)} prompts; the model `{engine.info.id}` queues at "
            f"most {engine.info.queue_limit} requests (its queue_limit), so send at most "
            f"{engine.info.queue_limit} prompts.", param="prompt", code="invalid_value")
    # A token per prompt: each prompt's generator cancels its own token when it ends, and a
    # shared one would stop the other prompts still generating.
    cancel = _CancelAll([CancelToken() for _ in params])
    generators = [engine.chat(p, token) for p, token in zip(params, cancel.tokens, strict=True)]
    call = EngineCall(request, note, cancel, generators)
    started = await _admitted(call, generators)
    prompt_tokens = sum(s.prompt_tokens for s in started)
    note.prompt_tokens = prompt_tokens
    completion = _Completion(engine.info.id, params, bool(body.echo), body.logprobs is not None)
    if body.stream:
        return call.streamed(
            _stream(generators, completion, note, prompt_tokens, body.wants_usage_chunk),
            "generating the completion", done=True)
    return await call.gathered(_complete(generators, completion, note, prompt_tokens))


async def _complete(generators: list[AsyncGenerator[ChatEvent, None]], completion: _Completion,
                    note: RequestNote, prompt_tokens: int) -> Response:
    texts: dict[int, list[str]] = {}
    logprobs: dict[int, list[TokenLogprob]] = {}
    finishes: dict[int, Finish] = {}
    async for prompt, event in _merged(generators):
        index = completion.index(prompt, event.index) \
            if isinstance(event, TextDelta | Finish) else -1
        if isinstance(event, TextDelta):
            note.mark_first_token()
            texts.setdefault(index, [completion.echoes[prompt]]).append(event.text)
            logprobs.setdefault(index, []).extend(event.logprobs)
        elif isinstance(event, Finish):
            finishes[index] = replace(event, index=index % completion.n)
    if len(finishes) != len(completion.echoes) * completion.n:
        raise EngineFailure("The engine stopped without finishing the completion.")
    usage = _usage(prompt_tokens, list(finishes.values()))
    note.completion_tokens = usage.completion_tokens
    choices = [_choice(i, "".join(texts.get(i, [completion.echoes[i // completion.n]])),
                       finishes[i].reason,
                       _LegacyLogprobs(0).take(logprobs.get(i, []))
                       if completion.logprobs else None) for i in sorted(finishes)]
    return JSONResponse(completion.body(choices, usage=token_usage_json(usage)))


async def _stream(generators: list[AsyncGenerator[ChatEvent, None]], completion: _Completion,
                  note: RequestNote, prompt_tokens: int,
                  include_usage: bool) -> AsyncGenerator[bytes, None]:
    extra: dict[str, Any] = {}  # usage comes only in the last chunk (the spec has no null)
    finishes: list[Finish] = []
    offsets: dict[int, _LegacyLogprobs] = {}
    for prompt, echo in enumerate(completion.echoes):
        for choice in range(completion.n) if echo else ():
            yield frame(completion.body(
                [_choice(completion.index(prompt, choice), echo, None)], **extra))
    async for prompt, event in _merged(generators):
        if isinstance(event, TextDelta) and (event.text or event.logprobs):
            note.mark_first_token()
            note.completion_tokens += 1
            index = completion.index(prompt, event.index)
            counter = offsets.setdefault(index, _LegacyLogprobs(0))
            yield frame(completion.body(
                [_choice(index, event.text, None,
                         counter.take(event.logprobs) if completion.logprobs else None)],
                **extra))
        elif isinstance(event, Finish):
            finishes.append(event)
            note.completion_tokens = _usage(prompt_tokens, finishes).completion_tokens
            yield frame(completion.body(
                [_choice(completion.index(prompt, event.index), "", event.reason)], **extra))
    if include_usage:
        usage = _usage(prompt_tokens, finishes)
        yield frame(completion.body([], usage=token_usage_json(usage)))
