"""Stored chat completions (made with ``store: true``), read back, scoped to the calling key.

    GET    /v1/chat/completions                          list (model, metadata[k]=v, after,
                                                          limit, order asc by default)
    GET    /v1/chat/completions/{completion_id}
    POST   /v1/chat/completions/{completion_id}          update metadata
    DELETE /v1/chat/completions/{completion_id}          chat.completion.deleted
    GET    /v1/chat/completions/{completion_id}/messages  the request's messages, paged

``POST /v1/chat/completions`` (``routes/chat.py``) writes them. Another key's completion, an
expired or deleted one, and an unknown id are the same 404. Without a store every route here
is a 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.api.routes.stored_state_access import (
    owner_of,
    paged,
    state_of,
    stored_or_refused,
)
from appliance.api.services import Services
from appliance.api.wire.generation_bounds import check_metadata, too_long
from appliance.api.wire.listing import StoredJSON, list_json, list_query
from appliance.api.wire.stored_completions import (
    UpdateCompletion,
    completion_json,
    deleted_json,
    metadata_filter,
)
from appliance.api.wire.validation import parse_json
from appliance.errors import ModelNotFound, NotFound


def stored_completions_routes() -> list[Route]:
    one = "/v1/chat/completions/{completion_id}"
    return [
        Route("/v1/chat/completions", list_completions, methods=["GET"]),
        Route(one, retrieve_completion, methods=["GET"]),
        Route(one, update_completion, methods=["POST"]),
        Route(one, delete_completion, methods=["DELETE"]),
        Route(one + "/messages", list_messages, methods=["GET"]),
    ]


def _missing(completion_id: str) -> NotFound:
    return NotFound(f"Chat completion with id {completion_id[:128]!r} not found.",
                    param="completion_id")


def _model_filter(services: Services, request: Request) -> str | None:
    name = request.query_params.get("model")
    if name is None:
        return None
    if len(name) > services.bounds.max_name_chars:
        raise too_long("model", len(name), services.bounds.max_name_chars)
    # Stored under the canonical id: an alias lists its model's completions too. A name no
    # longer served (or not this key's) still filters, by the name as stored.
    try:
        return services.catalog.resolve(name).id
    except ModelNotFound:
        return name


async def list_completions(request: Request) -> Response:
    services, state = state_of(request)
    query = list_query(request.query_params, services.bounds, default_order="asc")
    model = _model_filter(services, request)
    metadata = metadata_filter(request.query_params, services.bounds)
    page = await paged(state.list_completions(owner_of(request), model=model,
                                              metadata=metadata, order=query.order,
                                              after=query.after, limit=query.limit))
    if page is None:  # the Protocol allows it; an owner's own list is never missing
        return StoredJSON(list_json((), has_more=False))
    return StoredJSON(list_json(page.items, page.has_more))


async def retrieve_completion(request: Request) -> Response:
    _, state = state_of(request)
    completion_id = request.path_params["completion_id"]
    completion = await state.get_completion(owner_of(request), completion_id)
    if completion is None:
        raise _missing(completion_id)
    return StoredJSON(completion_json(completion))


async def update_completion(request: Request) -> Response:
    services, state = state_of(request)
    owner, completion_id = owner_of(request), request.path_params["completion_id"]
    if await state.get_completion(owner, completion_id) is None:
        raise _missing(completion_id)
    bounds = services.bounds
    body = await parse_json(request, UpdateCompletion, bounds.max_body_bytes,
                            lambda data: check_metadata(data.get("metadata"), bounds))
    with stored_or_refused("metadata"):
        completion = await state.update_completion(owner, completion_id, body.metadata or {})
    if completion is None:
        raise _missing(completion_id)  # deleted between the two
    return StoredJSON(completion_json(completion))


async def delete_completion(request: Request) -> Response:
    _, state = state_of(request)
    completion_id = request.path_params["completion_id"]
    if not await state.delete_completion(owner_of(request), completion_id):
        raise _missing(completion_id)
    return StoredJSON(deleted_json(completion_id))


async def list_messages(request: Request) -> Response:
    services, state = state_of(request)
    completion_id = request.path_params["completion_id"]
    query = list_query(request.query_params, services.bounds, default_order="asc")
    page = await paged(state.completion_messages(owner_of(request), completion_id,
                                                 order=query.order, after=query.after,
                                                 limit=query.limit))
    if page is None:
        raise _missing(completion_id)
    return StoredJSON(list_json(page.items, page.has_more))
