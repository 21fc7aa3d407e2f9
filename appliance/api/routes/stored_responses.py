"""Stored responses, read back and deleted, scoped to the calling key.

    DELETE /v1/responses/{response_id}              {"id", "object": "response", "deleted"}
    GET    /v1/responses/{response_id}/input_items  list (order desc by default, after,
                                                     limit, include)

``GET /v1/responses/{response_id}``, ``cancel`` and ``input_tokens`` are ``routes/responses.py``'s.
Another key's response, an expired or deleted one, and an unknown id are the same 404.
Without a store (``Services.state`` None) both routes are a 404.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from appliance.api.routes.responses_background import BackgroundResponses
from appliance.api.routes.stored_state_access import owner_of, paged, state_of
from appliance.api.wire.listing import StoredJSON, check_include, list_json, list_query
from appliance.errors import NotFound


def stored_responses_routes(background: BackgroundResponses) -> list[Route]:
    async def delete(request: Request) -> Response:
        return await delete_response(request, background)

    return [
        Route("/v1/responses/{response_id}", delete, methods=["DELETE"]),
        Route("/v1/responses/{response_id}/input_items", list_input_items, methods=["GET"]),
    ]


def _missing(response_id: str) -> NotFound:
    return NotFound(f"Response with id {response_id[:128]!r} not found.", param="response_id")


async def delete_response(request: Request, background: BackgroundResponses) -> Response:
    """A background response still running is stopped first (its ledger row says
    cancelled), or its ending would store the deleted response again."""
    _, state = state_of(request)
    owner, response_id = owner_of(request), request.path_params["response_id"]
    forgotten = await background.forget(owner, response_id)
    if not await state.delete_response(owner, response_id) and not forgotten:
        raise _missing(response_id)
    return StoredJSON({"id": response_id, "object": "response", "deleted": True})


async def list_input_items(request: Request) -> Response:
    services, state = state_of(request)
    response_id = request.path_params["response_id"]
    query = list_query(request.query_params, services.bounds, default_order="desc")
    check_include(request.query_params, services.bounds)
    page = await paged(state.input_items(owner_of(request), response_id, order=query.order,
                                         after=query.after, limit=query.limit))
    if page is None:
        raise _missing(response_id)
    return StoredJSON(list_json(page.items, page.has_more))
