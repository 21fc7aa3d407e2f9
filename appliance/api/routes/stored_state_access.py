"""What the stored-state routes share: the store or a 404, the caller's owner id, and the
store's refusals as the errors they are on the wire, naming the field that asked for the write.

The owner is the authenticated key's id (the auth middleware put the key in the scope): state
belongs to the key that made it, and a revoked key authenticates no more, so its state is
unreachable with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from contextlib import contextmanager

from starlette.requests import Request

from appliance.api.services import Services
from appliance.api.stored_state import (
    ConversationFull,
    CursorNotFound,
    DuplicateItemId,
    Page,
    StateStore,
    StorageQuotaExceeded,
)
from appliance.errors import InvalidRequest, NotFound
from appliance.ledger import KeyRecord

# On an answer that was delivered but could not be stored (``store: true`` past the key's
# storage quota once the answer's size was known): the reason, e.g. storage_quota_exceeded.
NOT_STORED_HEADER = "x-appliance-not-stored"


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
def stored_or_refused(param: str) -> Iterator[None]:
    """A write the store refused, as an error naming ``param``: item ids repeating ones
    already stored and a conversation past its bound (400s), the key's storage quota
    (429 ``storage_quota_exceeded``). Nothing of such a write was kept."""
    try:
        yield
    except DuplicateItemId as error:
        raise InvalidRequest(f"Invalid '{param}': {error}.", param=param,
                             code="invalid_value") from None
    except ConversationFull as error:
        raise ConversationFull(f"Invalid '{param}': {error.message}", param=param) from None
    except StorageQuotaExceeded as error:
        raise StorageQuotaExceeded(error.message, param=param) from None
