"""What the api keeps between requests: stored responses, conversations, stored chat completions.

The seam between the routes that produce state (``routes/responses.py``, ``routes/chat.py``
with ``store: true``) and the routes that read it back (``routes/stored_*``), and the durable
store behind both (``appliance.store``, SQLite in the data dir). Everything a caller reads is
scoped by ``owner`` (the key id; ``None`` when the server runs without keys): an id owned by
another key, expired, or deleted is ``None`` here and a 404 on the wire, exactly as an unknown
id. Items and bodies are the JSON objects as they go on the wire (``dict``), so the store never
needs to know the Responses API's shapes.

Every method is async and does its SQL off the event loop; writes are durable when they return.
State lives ``response_retention_days`` (``[server]``): a response or completion from its
creation, a conversation from its last write (creation, metadata update, items added).

What one key may keep is bounded (``[server]`` ``max_stored_mb_per_key`` and
``max_conversation_items``, ``appliance.store.usage``): a write that would pass either raises
``StorageQuotaExceeded`` (a 429 ``insufficient_quota``) or ``ConversationFull`` (a 400), and
keeps nothing. ``room`` asks the same before a request does any work; ``stored_size`` is what
rows about to be stored will count.

Item ids: every item and message handed in carries a string ``"id"``, unique within its
response, conversation or completion (give stored items fresh ids, as OpenAI does; a client's
own ids may repeat); a repeat raises ``DuplicateItemId`` and nothing of that write is kept.
Lists page by item id: an ``after`` that is not in the list raises ``CursorNotFound``.
"""

from __future__ import annotations

from typing import Protocol

# The values live with the store (a layer below the api); the api reads them from here.
from appliance.store.records import (
    JSON,
    Conversation,
    ConversationFull,
    CursorNotFound,
    DuplicateItemId,
    Order,
    Page,
    StateTooLarge,
    StorageQuotaExceeded,
    StoredCompletion,
    StoredResponse,
)
from appliance.store.usage import stored_size

__all__ = [
    "JSON",
    "CompletionStore",
    "Conversation",
    "ConversationFull",
    "ConversationStore",
    "CursorNotFound",
    "DuplicateItemId",
    "Order",
    "Page",
    "ResponseStore",
    "StateStore",
    "StateTooLarge",
    "StorageQuotaExceeded",
    "StorageRoom",
    "StoredCompletion",
    "StoredResponse",
    "stored_size",
]


class ResponseStore(Protocol):
    async def put_response(self, response: StoredResponse) -> None:
        """Insert, or replace by id (a background response is written again as it finishes;
        its input items are replaced too). An id another owner holds: ValueError."""
    async def get_response(self, owner: str | None, response_id: str) -> StoredResponse | None: ...
    async def delete_response(self, owner: str | None, response_id: str) -> bool: ...
    async def input_items(self, owner: str | None, response_id: str, *, order: Order,
                          after: str | None, limit: int) -> Page | None: ...
    async def chain(self, owner: str | None, response_id: str,
                    max_turns: int) -> list[StoredResponse] | None:
        """The response and its ``previous_response_id`` ancestors, oldest first; ``None`` if
        any link is missing, expired or not this owner's. More than ``max_turns`` links:
        ``StateTooLarge`` (a 400, not a 404: everything is there, it is only too long)."""


class ConversationStore(Protocol):
    async def create_conversation(self, owner: str | None, metadata: dict[str, str],
                                  items: list[JSON]) -> Conversation: ...
    async def get_conversation(self, owner: str | None, conv_id: str) -> Conversation | None: ...
    async def update_conversation(self, owner: str | None, conv_id: str,
                                  metadata: dict[str, str]) -> Conversation | None: ...
    async def delete_conversation(self, owner: str | None, conv_id: str) -> bool: ...
    async def append_items(self, owner: str | None, conv_id: str,
                           items: list[JSON]) -> bool:
        """Appends in order; False when the conversation is not this owner's."""
    async def all_items(self, owner: str | None, conv_id: str,
                        max_items: int) -> list[JSON] | None:
        """Every item, oldest first (what a response made with ``conversation`` continues).
        ``None``: not this owner's. More than ``max_items`` items: ``StateTooLarge``."""
    async def list_items(self, owner: str | None, conv_id: str, *, order: Order,
                         after: str | None, limit: int) -> Page | None: ...
    async def get_item(self, owner: str | None, conv_id: str, item_id: str) -> JSON | None: ...
    async def delete_item(self, owner: str | None, conv_id: str, item_id: str) -> bool: ...


class CompletionStore(Protocol):
    async def put_completion(self, completion: StoredCompletion) -> None: ...
    async def get_completion(self, owner: str | None,
                             completion_id: str) -> StoredCompletion | None: ...
    async def list_completions(self, owner: str | None, *, model: str | None,
                               metadata: dict[str, str], order: Order, after: str | None,
                               limit: int) -> Page | None:
        """The owner's completions (each its body with ``"metadata"`` set to the current
        metadata), those of ``model`` and carrying every ``metadata`` pair; never ``None``."""
    async def update_completion(self, owner: str | None, completion_id: str,
                                metadata: dict[str, str]) -> StoredCompletion | None: ...
    async def delete_completion(self, owner: str | None, completion_id: str) -> bool: ...
    async def completion_messages(self, owner: str | None, completion_id: str, *,
                                  order: Order, after: str | None,
                                  limit: int) -> Page | None: ...


class StorageRoom(Protocol):
    async def room(self, owner: str | None, *, more_bytes: int = 0,
                   conversation_id: str | None = None, more_items: int = 0) -> None:
        """Raises ``StorageQuotaExceeded`` when ``more_bytes`` more would pass the owner's
        quota, ``ConversationFull`` when ``more_items`` more would pass the conversation's
        bound; what a route asks before the engine runs (the write checks again)."""
    async def stored_bytes(self, owner: str | None) -> int:
        """What the owner's stored state counts now, as the quota counts it."""


class StateStore(ResponseStore, ConversationStore, CompletionStore, StorageRoom, Protocol):
    """All three, as one SQLite file provides them, and the room left."""
