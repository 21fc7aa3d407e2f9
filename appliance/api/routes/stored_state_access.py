"""What the stored-state routes share: the store or a 404, the caller's owner id, and the
store's errors as the 400s they are on the wire.

The owner is the authenticated key's id (the auth middleware put the key in the scope): state
belongs to the key that made it, and a revoked key authenticates no more, so its state is
unreachable with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from contextlib import contextmanager

from starlette.requests import Request

from appliance.api.services import Services
from appliance.api.stored_state import CursorNotFound, DuplicateItemId, Page, StateStore
from appliance.errors import InvalidRequest, NotFound
from appliance.ledger import KeyRecord


def state_of(request: Request) -> tuple[Services, StateStore]:
    services: Services = request.app.state.services
    if services.state is None:
        # A server built without a store has none of these routes.
        raise NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    return services, services.state


def owner_of(request: Request) -> str | None:
    key: KeyRecord | None = request.scope.get("state", {}).get("key")
    return None if key is None else key.id


async def paged(listing: Awaitable[Page | None]) -> Page | None:
    """A store list, with an ``after`` that names nothing in it as a 400 naming ``after``."""
    try:
        return await listing
    except CursorNotFound:
        raise InvalidRequest("Invalid 'after': it is not the id of an item of this list.",
                             param="after", code="invalid_value") from None


@contextmanager
def stored_or_400(param: str) -> Iterator[None]:
    """A write whose item ids repeat ones already stored: a 400 naming ``param``."""
    try:
        yield
    except DuplicateItemId as error:
        raise InvalidRequest(f"Invalid '{param}': {error}.", param=param,
                             code="invalid_value") from None
