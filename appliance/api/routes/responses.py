"""The Responses API: ``POST /v1/responses`` (plain, ``stream: true``, ``background: true``),
``GET /v1/responses/{id}`` (with ``include``; a background one also as a stream from
``starting_after``), ``POST /v1/responses/{id}/cancel`` and ``POST /v1/responses/input_tokens``.

A response is a chat generation (the same engine call as /v1/chat/completions, through
routes/engine_call.py) of the history it continues plus its input, its result built in
OpenAI's shapes (wire/responses_*.py). What is stored belongs to the caller's key. A server
without a state store (``Services.state`` None) stores nothing: ``store`` is then false in
effect (and echoed so), a retrieve is a 404, and ``background``, ``previous_response_id`` and
``conversation`` cannot be served. Built-in tools a client offers are withheld from the model
and named in ``x-appliance-withheld-tools``; messages ``truncation: auto`` dropped are counted
in ``x-appliance-truncated-messages``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from appliance.api.bounds import RequestBounds
from appliance.api.note import RequestNote
from appliance.api.route_policy import KEYED, route, serving
from appliance.api.routes.disconnect import unless_disconnected
from appliance.api.routes.engine_call import EngineCall, gone_is_499, note_of, owned, watched
from appliance.api.routes.responses_background import (
    CANCEL_WAIT_S,
    BackgroundJob,
    BackgroundResponses,
)
from appliance.api.routes.responses_history import continued
from appliance.api.routes.responses_run import Admitted, Keeping, ResponseRun, admit
from appliance.api.routes.stored_state_access import NOT_STORED_HEADER
from appliance.api.services import Services
from appliance.api.stored_state import StateStore, StorageQuotaExceeded, StoredResponse
from appliance.api.wire.image_input import resolve_images
from appliance.api.wire.responses import (
    ENCRYPTED_REASONING,
    INCLUDABLE,
    LOGPROBS,
    CreateResponseRequest,
    ResponseAsk,
    ResponseInputs,
    echoed,
    translate,
    translate_inputs,
    wants_sealed_reasoning,
)
from appliance.api.wire.responses_bounds import check_response
from appliance.api.wire.responses_input import Unseal, image_refs, with_fresh_ids
from appliance.api.wire.responses_object import (
    ENDING_EVENTS,
    EventNumbers,
    ResponseShape,
    Status,
    error_json,
    sse_frame,
    with_sealed_reasoning,
    without_logprobs,
)
from appliance.api.wire.responses_output import Seal, new_id, replayed_events
from appliance.api.wire.sse import SSE_HEADERS, SSE_MEDIA_TYPE
from appliance.api.wire.validation import parse_json
from appliance.engines.base import CHAT, CancelToken, ChatEngine, ChatEvent, ChatParams, Started
from appliance.errors import EngineFailure, InvalidRequest, NotFound, ServiceUnavailable

log = logging.getLogger("appliance.api")
JSON = dict[str, Any]
T = TypeVar("T")
WITHHELD_HEADER = "x-appliance-withheld-tools"
TRUNCATED_HEADER = "x-appliance-truncated-messages"
_REFUSED = "The engine did not admit the request."


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"No response found with id '{response_id[:128]}'.", param="response_id")


def _headers(ask: ResponseAsk, dropped: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if ask.tools.withheld:
        headers[WITHHELD_HEADER] = ", ".join(ask.tools.withheld)
    if dropped:
        headers[TRUNCATED_HEADER] = str(dropped)
    return headers


def _unseal(services: Services, owner: str | None) -> Unseal:
    """Opens the encrypted_content of this owner's reasoning items (a 400 naming the field
    for a token past the bound of one item's text, or one that does not open)."""
    seal, bound = services.reasoning_seal, services.bounds.max_message_chars

    def unseal(token: str, param: str) -> str:
        return seal.open(token, owner, param, bound)

    return unseal


def _seal(services: Services, owner: str | None) -> Seal:
    seal = services.reasoning_seal

    def sealed(text: str) -> str:
        return seal.seal(text, owner)

    return sealed


class _Prepared:
    """A create request, read and translated, with the history it continues."""

    def __init__(self, services: Services, note: RequestNote, body: CreateResponseRequest,
                 ask: ResponseAsk, engine: ChatEngine, params: ChatParams):
        self.services = services
        self.note = note
        self.body = body
        self.ask = ask
        self.engine = engine
        self.params = params
        state = services.state
        store = body.store is not False and state is not None
        self.shape = ResponseShape(new_id("resp"), int(time.time()), engine.info.id,
                                   echoed(body, ask, store))
        self.keeping = Keeping(state, store, note.key_id, tuple(with_fresh_ids(ask.items)),
                               ask.previous_response_id, ask.conversation_id)

    def run(self, first_status: Status = "in_progress") -> ResponseRun:
        seal = _seal(self.services, self.note.key_id) if wants_sealed_reasoning(self.body) \
            else None
        return ResponseRun(self.shape, self.ask.tools, self.note, self.keeping, first_status,
                           seal=seal)


async def _prepare(request: Request) -> _Prepared:
    services: Services = request.app.state.services
    note = note_of(request)
    bounds = services.bounds
    body = await parse_json(request, CreateResponseRequest, bounds.max_body_bytes,
                            lambda data: check_response(data, bounds))
    note.stream = bool(body.stream)
    ask = translate(body)
    engine = services.catalog.get(CHAT, body.model)
    note.model = engine.info.id
    if body.background and services.state is None:
        raise InvalidRequest("Background responses are stored, and this server runs without "
                             "a state store.", param="background", code="unsupported_value")
    earlier = await continued(services.state, note.key_id, ask, bounds)
    images = await resolve_images(image_refs(ask.sourced(earlier), bounds), engine.info,
                                  bounds, services.image_fetch)
    params = owned(ask.params(earlier, _unseal(services, note.key_id),
                              reasons=engine.info.reasoning is not None, images=images), note)
    if ask.tools.withheld:
        log.info("built-in tools withheld from the model (not run here): %s",
                 ", ".join(ask.tools.withheld))
    prepared = _Prepared(services, note, body, ask, engine, params)
    await prepared.keeping.check_room()
    return prepared


async def create_response(request: Request, background: BackgroundResponses) -> Response:
    prepared = await _prepare(request)
    if prepared.body.background:
        return await _start_background(prepared, background)
    note = prepared.note
    holder: list[EngineCall[ChatEvent]] = []

    async def first(events: AsyncGenerator[ChatEvent, None], cancel: CancelToken) -> Started:
        call = EngineCall(request, note, cancel, [events])
        holder[:] = [call]
        [started] = await call.started(Started, _REFUSED)
        return started

    async def watch(work: Awaitable[T]) -> T:
        return await unless_disconnected(request.receive, work)

    admitted = await admit(prepared.engine, prepared.params,
                           prepared.ask.truncation == "auto", first, watch)
    note.prompt_tokens = admitted.started.prompt_tokens
    call = holder[0]
    headers = _headers(prepared.ask, admitted.dropped)
    run = prepared.run()
    if prepared.body.stream:
        numbers = EventNumbers()

        async def frames() -> AsyncGenerator[bytes, None]:
            async for event in run.events(admitted.events, in_band=True):
                yield sse_frame(numbers.number(event))

        streamed = call.streamed(frames(), "generating the response", done=False)
        streamed.headers.update(headers)
        return streamed
    body = await call.gathered(run.final(admitted.events))
    if not run.stored:
        headers[NOT_STORED_HEADER] = "storage_quota_exceeded"
    return JSONResponse(body, headers=headers)


async def _start_background(prepared: _Prepared, background: BackgroundResponses) -> Response:
    services, note = prepared.services, prepared.note
    bounds = services.bounds
    background.admit(note.key_id, bounds.max_background_responses,
                     bounds.max_background_per_key)
    run = prepared.run("queued")
    queued = run.latest
    if not await prepared.keeping.keep(prepared.shape, queued):  # GET finds it from now on
        raise StorageQuotaExceeded("A background response is stored, and this key's stored "
                                   "state has no room for it.", param="background")
    job = BackgroundJob(prepared.shape.id, note.key_id, queued)
    job.on_forget = run.forget

    async def work(job: BackgroundJob) -> None:
        await _background_work(prepared, run, job)

    await background.start(job, work, note, services.drain)
    headers = _headers(prepared.ask, 0)
    if prepared.body.stream:
        return StreamingResponse(job.follow(-1), media_type=SSE_MEDIA_TYPE,
                                 headers={**SSE_HEADERS, **headers})
    return JSONResponse(queued, headers=headers)


async def _background_work(prepared: _Prepared, run: ResponseRun, job: BackgroundJob) -> None:
    """The generation of a background response, its events published to the job."""
    note = prepared.note

    async def first(events: AsyncGenerator[ChatEvent, None], cancel: CancelToken) -> Started:
        job.cancel = cancel
        try:
            started = await anext(events)
        except BaseException:
            cancel.cancel()
            await events.aclose()
            raise
        if not isinstance(started, Started):
            raise EngineFailure(_REFUSED)
        return started

    async def engine_events() -> AsyncGenerator[ChatEvent, None]:
        admitted: Admitted = await admit(prepared.engine, prepared.params,
                                         prepared.ask.truncation == "auto", first, _unwatched)
        note.prompt_tokens = admitted.started.prompt_tokens
        async for event in admitted.events:
            yield event

    try:
        async for event in run.events(engine_events(), in_band=True):
            job.publish(event)
            if event["type"] == "response.in_progress":
                # Stored as it progresses: a GET after a restart knows the work had begun.
                await run.keeping.keep(prepared.shape, event["response"])
    except asyncio.CancelledError:
        job.cancel.cancel()
        if job.cancel_requested:
            note.client_gone = True  # the ledger's "cancelled": the client stopped it
            for made in await run.ended("cancelled", None):
                job.publish(made)
        else:
            note.failed_mid_stream = True
            note.error_code = "shutting_down"
            for made in await run.ended("failed", ServiceUnavailable(
                    "The server shut down before this background response finished.")):
                job.publish(made)


async def _unwatched(work: Awaitable[T]) -> T:
    return await work


def _include(request: Request) -> set[str]:
    values = [*request.query_params.getlist("include"),
              *request.query_params.getlist("include[]")]
    bounds: RequestBounds = request.app.state.services.bounds
    if len(values) > bounds.max_include:
        raise InvalidRequest(f"Invalid 'include': {len(values)} values; this server allows at "
                             f"most {bounds.max_include}.", param="include",
                             code="invalid_value")
    for value in values:
        if value not in INCLUDABLE:
            raise InvalidRequest(f"Invalid value for 'include': {value[:64]!r}.",
                                 param="include", code="invalid_value")
    return set(values)


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false"):
        raise InvalidRequest(f"Invalid value for '{name}': expected true or false.",
                             param=name, code="invalid_value")
    return value == "true"


def _starting_after(request: Request) -> int:
    raw = request.query_params.get("starting_after")
    if raw is None:
        return -1
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise InvalidRequest("Invalid value for 'starting_after': expected a sequence number "
                             "(an integer from 0).", param="starting_after",
                             code="invalid_value")
    return int(raw)


async def _stored(state: StateStore | None, owner: str | None,
                  response_id: str) -> StoredResponse:
    """A stored response of this owner; one left queued or in progress by a server that
    stopped (nothing runs it any more) is failed, and stored so."""
    stored = await state.get_response(owner, response_id) if state is not None else None
    if stored is None or state is None:
        raise _not_found(response_id)
    if stored.body.get("status") in ("queued", "in_progress"):
        body = {**stored.body, "status": "failed", "error": error_json(EngineFailure(
            "The server stopped before this background response finished."))}
        stored = StoredResponse(stored.id, stored.owner, stored.created_at, stored.model,
                                stored.previous_response_id, stored.conversation_id,
                                stored.input_items, body)
        await state.put_response(stored)
    return stored


def _replay(body: JSON, after: int) -> AsyncIterator[bytes]:
    """A finished response's stream rebuilt from its stored body (its own frames are gone):
    one delta per part, so fewer events than it streamed live. A client resuming after an
    event of the live stream still gets the ending, numbered after that event (the stream
    answered 200 with no events at all)."""
    numbers = EventNumbers()
    events = [numbers.number(event)
              for event in replayed_events(body, ENDING_EVENTS[str(body.get("status"))])]
    rest = events[after + 1:] or [{**events[-1], "sequence_number": after + 1}]
    frames = [sse_frame(event) for event in rest]

    async def follow() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    return follow()


async def retrieve_response(request: Request, background: BackgroundResponses) -> Response:
    services: Services = request.app.state.services
    owner = note_of(request).key_id
    response_id = request.path_params["response_id"]
    include = _include(request)
    stream = _flag(request, "stream")
    _flag(request, "include_obfuscation")  # accepted: no obfuscation field is sent
    after = _starting_after(request)
    job = background.find(owner, response_id)
    if stream:
        if job is not None:
            return StreamingResponse(job.follow(after), media_type=SSE_MEDIA_TYPE,
                                     headers=SSE_HEADERS)
        stored = await _stored(services.state, owner, response_id)
        if not stored.body.get("background"):
            raise InvalidRequest("Only background responses can be streamed again: this one "
                                 "was answered when it was made.", param="stream",
                                 code="invalid_value")
        return StreamingResponse(_replay(stored.body, after), media_type=SSE_MEDIA_TYPE,
                                 headers=SSE_HEADERS)
    body = job.latest if job is not None and not job.finished else \
        (await _stored(services.state, owner, response_id)).body
    body = with_sealed_reasoning(body, _seal(services, owner)
                                 if ENCRYPTED_REASONING in include else None)
    return JSONResponse(body if LOGPROBS in include else without_logprobs(body))


async def cancel_response(request: Request, background: BackgroundResponses) -> Response:
    services: Services = request.app.state.services
    owner = note_of(request).key_id
    response_id = request.path_params["response_id"]
    job = background.find(owner, response_id)
    if job is None or job.finished:
        stored = await _stored(services.state, owner, response_id)
        if not stored.body.get("background"):
            raise InvalidRequest("Only background responses can be cancelled.",
                                 param="response_id", code="invalid_value")
        raise InvalidRequest(f"Cannot cancel a response that is {stored.body.get('status')}.",
                             param="response_id", code="invalid_value")
    job.stop("cancelled by the client")
    await job.wait_done(CANCEL_WAIT_S)
    return JSONResponse(job.latest)


@gone_is_499
async def count_input_tokens(request: Request) -> Response:
    services: Services = request.app.state.services
    note = note_of(request)
    bounds = services.bounds
    body = await parse_json(request, ResponseInputs, bounds.max_body_bytes,
                            lambda data: check_response(data, bounds))
    ask = translate_inputs(body)
    engine = services.catalog.get(CHAT, body.model)  # not charged: no model on the row
    earlier = await continued(services.state, note.key_id, ask, bounds)
    images = await resolve_images(image_refs(ask.sourced(earlier), bounds), engine.info,
                                  bounds, services.image_fetch)
    cancel = CancelToken()
    params = ask.params(earlier, _unseal(services, note.key_id),
                        reasons=engine.info.reasoning is not None, images=images)
    count = await watched(request, engine.count_tokens(params, cancel), cancel)
    return JSONResponse({"object": "response.input_tokens", "input_tokens": count})


def responses_routes(background: BackgroundResponses) -> list[Route]:
    """The routes, over the app's one registry of background responses (DELETE, in
    routes/stored_responses.py, forgets from it too)."""

    @gone_is_499
    async def create(request: Request) -> Response:
        return await create_response(request, background)

    async def retrieve(request: Request) -> Response:
        return await retrieve_response(request, background)

    async def cancel(request: Request) -> Response:
        return await cancel_response(request, background)

    chat = serving(CHAT.name)
    # Counting tokens is no model request: its rows carry no kind, so the usage reports
    # do not count them among the completions.
    return [
        route("/v1/responses", create, "POST", chat),
        route("/v1/responses/input_tokens", count_input_tokens, "POST", KEYED),
        route("/v1/responses/{response_id}", retrieve, "GET", KEYED),
        route("/v1/responses/{response_id}/cancel", cancel, "POST", KEYED),
    ]
