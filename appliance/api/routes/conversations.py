"""The Conversations API, on the state store (``Services.state``), scoped to the calling key.

    POST   /v1/conversations                            create (metadata, up to 20 items)
    GET    /v1/conversations/{conversation_id}
    POST   /v1/conversations/{conversation_id}          update metadata
    DELETE /v1/conversations/{conversation_id}          conversation.deleted
    POST   /v1/conversations/{conversation_id}/items    add up to 20 items: the list of them
    GET    /v1/conversations/{conversation_id}/items    list (order, after, limit, include)
    GET    /v1/conversations/{conversation_id}/items/{item_id}
    DELETE /v1/conversations/{conversation_id}/items/{item_id}   the conversation

Another key's conversation, an expired or deleted one, and an unknown id are the same 404.
A write past the key's storage quota is a 429 ``storage_quota_exceeded``, items past the
conversation's bound a 400 naming ``items``; either keeps nothing. Without a store
(``Services.state`` None) every route is a 404, as a server without them.
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
from appliance.api.stored_state import StateStore
from appliance.api.wire.conversations import (
    CreateConversation,
    CreateItems,
    UpdateConversation,
    check_conversation_body,
    conversation_json,
    deleted_json,
    stored_items,
)
from appliance.api.wire.listing import StoredJSON, check_include, list_json, list_query
from appliance.api.wire.validation import parse_json
from appliance.errors import NotFound


def conversations_routes() -> list[Route]:
    one, items = "/v1/conversations/{conversation_id}", "/v1/conversations/{conversation_id}/items"
    return [
        Route("/v1/conversations", create_conversation, methods=["POST"]),
        Route(one, retrieve_conversation, methods=["GET"]),
        Route(one, update_conversation, methods=["POST"]),
        Route(one, delete_conversation, methods=["DELETE"]),
        Route(items, create_items, methods=["POST"]),
        Route(items, list_items, methods=["GET"]),
        Route(items + "/{item_id}", retrieve_item, methods=["GET"]),
        Route(items + "/{item_id}", delete_item, methods=["DELETE"]),
    ]


def _missing(conv_id: str) -> NotFound:
    return NotFound(f"Conversation with id {conv_id[:128]!r} not found.",
                    param="conversation_id")


def _item_missing(item_id: str) -> NotFound:
    return NotFound(f"Item with id {item_id[:128]!r} not found.", param="item_id")


def _context(request: Request) -> tuple[Services, StateStore, str | None, str]:
    services, state = state_of(request)
    return services, state, owner_of(request), request.path_params.get("conversation_id", "")


async def create_conversation(request: Request) -> Response:
    services, state, owner, _ = _context(request)
    bounds = services.bounds
    body = await parse_json(request, CreateConversation, bounds.max_body_bytes,
                            lambda data: check_conversation_body(data, bounds))
    items = stored_items(body.items)
    with stored_or_refused("items" if items else "metadata"):
        conversation = await state.create_conversation(owner, body.metadata or {}, items)
    return StoredJSON(conversation_json(conversation))


async def retrieve_conversation(request: Request) -> Response:
    _, state, owner, conv_id = _context(request)
    conversation = await state.get_conversation(owner, conv_id)
    if conversation is None:
        raise _missing(conv_id)
    return StoredJSON(conversation_json(conversation))


async def update_conversation(request: Request) -> Response:
    services, state, owner, conv_id = _context(request)
    bounds = services.bounds
    # The id first: a body for a conversation that is not there is not worth reading.
    if await state.get_conversation(owner, conv_id) is None:
        raise _missing(conv_id)
    body = await parse_json(request, UpdateConversation, bounds.max_body_bytes,
                            lambda data: check_conversation_body(data, bounds))
    with stored_or_refused("metadata"):
        conversation = await state.update_conversation(owner, conv_id, body.metadata or {})
    if conversation is None:
        raise _missing(conv_id)  # deleted between the two
    return StoredJSON(conversation_json(conversation))


async def delete_conversation(request: Request) -> Response:
    _, state, owner, conv_id = _context(request)
    if not await state.delete_conversation(owner, conv_id):
        raise _missing(conv_id)
    return StoredJSON(deleted_json(conv_id))


async def create_items(request: Request) -> Response:
    services, state, owner, conv_id = _context(request)
    bounds = services.bounds
    check_include(request.query_params, bounds)
    if await state.get_conversation(owner, conv_id) is None:
        raise _missing(conv_id)
    body = await parse_json(request, CreateItems, bounds.max_body_bytes,
                            lambda data: check_conversation_body(data, bounds))
    items = stored_items(body.items)
    with stored_or_refused("items"):
        appended = await state.append_items(owner, conv_id, items)
    if not appended:
        raise _missing(conv_id)
    return StoredJSON(list_json(items, has_more=False))


async def list_items(request: Request) -> Response:
    services, state, owner, conv_id = _context(request)
    query = list_query(request.query_params, services.bounds, default_order="desc")
    check_include(request.query_params, services.bounds)
    page = await paged(state.list_items(owner, conv_id, order=query.order, after=query.after,
                                        limit=query.limit))
    if page is None:
        raise _missing(conv_id)
    return StoredJSON(list_json(page.items, page.has_more))


async def retrieve_item(request: Request) -> Response:
    services, state, owner, conv_id = _context(request)
    check_include(request.query_params, services.bounds)
    item_id = request.path_params["item_id"]
    if await state.get_conversation(owner, conv_id) is None:
        raise _missing(conv_id)
    item = await state.get_item(owner, conv_id, item_id)
    if item is None:
        raise _item_missing(item_id)
    return StoredJSON(item)


async def delete_item(request: Request) -> Response:
    _, state, owner, conv_id = _context(request)
    item_id = request.path_params["item_id"]
    if await state.get_conversation(owner, conv_id) is None:
        raise _missing(conv_id)
    if not await state.delete_item(owner, conv_id, item_id):
        raise _item_missing(item_id)
    conversation = await state.get_conversation(owner, conv_id)
    if conversation is None:
        raise _missing(conv_id)
    return StoredJSON(conversation_json(conversation))
