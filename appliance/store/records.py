"""The plain values the state store keeps and hands back, and the errors it raises.

Frozen dataclasses, so the api builds and reads them without importing sqlite and the store
writes them without knowing HTTP (``appliance/api/stored_state.py`` re-exports them beside the
Protocols the api codes against). Items, messages and bodies are the JSON objects as they go on
the wire (``dict``): the store never needs to know the Responses API's shapes, only that an item
or message carries a string ``"id"``, unique within its response, conversation or completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.errors import InsufficientQuota, InvalidRequest

JSON = dict[str, Any]
Order = Literal["asc", "desc"]


@dataclass(frozen=True)
class StoredResponse:
    id: str  # "resp_..."
    owner: str | None
    created_at: float  # unix seconds
    model: str
    previous_response_id: str | None
    conversation_id: str | None
    input_items: tuple[JSON, ...]  # this turn's input items, each with its own "id"
    body: JSON  # the response object as last returned (status, output, usage, echoed fields)


@dataclass(frozen=True)
class Conversation:
    id: str  # "conv_..."
    owner: str | None
    created_at: float
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredCompletion:
    id: str  # "chatcmpl-..."
    owner: str | None
    created_at: float
    model: str
    metadata: dict[str, str]
    messages: tuple[JSON, ...]  # the request's messages, each given an "id"
    body: JSON  # the chat.completion object as returned


@dataclass(frozen=True)
class Page:
    """One page of a list: its items and whether more follow."""

    items: tuple[JSON, ...]
    has_more: bool


class CursorNotFound(LookupError):
    """A list's ``after`` names no item of that list (deleted, expired, or never one of it).
    The routes answer a 400 naming ``after``; the list itself exists."""


class DuplicateItemId(ValueError):
    """An item's ``"id"`` is already used in its response, conversation or completion (or
    twice in one write). Nothing of that write is kept."""


class StateTooLarge(InvalidRequest):
    """What a caller asked to continue is past the bound it gave (a ``previous_response_id``
    chain of more than ``max_turns``, a conversation of more than ``max_items``): a 400, with
    the message saying how large it is and the bound. A caller that knows the wire field may
    re-raise it with ``param`` set."""


class StorageQuotaExceeded(InsufficientQuota):
    """An owner's stored state would pass its quota (``usage.StoreBounds``): OpenAI's permanent
    429, code ``storage_quota_exceeded``. Nothing of the write is kept. A route that knows the
    field that asked for the write re-raises it with ``param`` set (``store``, ``items``)."""

    default_code = "storage_quota_exceeded"


class ConversationFull(InvalidRequest):
    """A conversation would hold more items than its bound (``usage.StoreBounds``): a 400,
    nothing of the write kept; the route names the field."""

    default_code = "invalid_value"
