"""The Conversations API's request bodies, their bounds, and the conversation object.

Items are the Responses API's input items, validated into their stored shape by
``responses_input.input_item`` (one meaning of an item for both APIs) and given fresh ids, as
OpenAI gives them: a client's own ``id`` on an input item is replaced, never trusted to be
unique. Bounds, on the parsed JSON before validation: at most 20 items per write (OpenAI's),
their text as a chat request's messages (``TextBudget``), metadata as everywhere (16 pairs,
64-character keys, 512-character values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from appliance.api.bounds import RequestBounds
from appliance.api.wire.generation_bounds import TextBudget, check_metadata, too_long, too_many
from appliance.api.wire.responses_input import input_item, with_fresh_ids
from appliance.store.records import JSON, Conversation

MAX_ITEMS_PER_WRITE = 20  # OpenAI's: "You may add up to 20 items at a time."
# The string fields of an item that are labels, not text (bounded as names).
_ITEM_LABELS = ("id", "call_id", "name", "namespace", "role", "type", "status")


class CreateConversation(BaseModel):
    model_config = ConfigDict(extra="allow")
    metadata: dict[str, str] | None = None
    items: list[Any] | None = None


class UpdateConversation(BaseModel):
    model_config = ConfigDict(extra="allow")
    metadata: dict[str, str] | None  # required, as OpenAI's; null clears it


class CreateItems(BaseModel):
    model_config = ConfigDict(extra="allow")
    items: list[Any]


def check_conversation_body(data: Mapping[str, Any], bounds: RequestBounds) -> None:
    """The bounds of a create, update or add-items body (each reads only what it needs)."""
    check_metadata(data.get("metadata"), bounds)
    items = data.get("items")
    if not isinstance(items, list):
        return
    if len(items) > MAX_ITEMS_PER_WRITE:
        raise too_many("items", len(items), MAX_ITEMS_PER_WRITE, "items (add more with "
                       "further requests)")
    text = TextBudget(bounds, whole="the items", one="one item")
    for index, item in enumerate(items):
        if isinstance(item, Mapping):
            _item_text(item, f"items[{index}]", text)


def _item_text(item: Mapping[str, Any], where: str, text: TextBudget) -> None:
    bounds = text.bounds
    for label in _ITEM_LABELS:
        value = item.get(label)
        if isinstance(value, str) and len(value) > bounds.max_name_chars:
            raise too_long(f"{where}.{label}", len(value), bounds.max_name_chars)
    pieces: list[Any] = [item.get("arguments"), item.get("encrypted_content")]
    for field in ("content", "output", "summary"):
        value = item.get(field)
        if isinstance(value, list):
            text.count(f"{where}.{field}", len(value))
            pieces += [part.get(key) for part in value if isinstance(part, Mapping)
                       for key in ("text", "refusal")]
        else:
            pieces.append(value)
    text.add(where, *pieces)


def stored_items(items: list[Any] | None) -> list[JSON]:
    """The items of a body, validated (400s name ``items[i]...``), with fresh ids."""
    return with_fresh_ids([input_item(item, f"items[{index}]")
                           for index, item in enumerate(items or [])])


def conversation_json(conversation: Conversation) -> JSON:
    return {"id": conversation.id, "object": "conversation",
            "created_at": int(conversation.created_at), "metadata": conversation.metadata}


def deleted_json(conv_id: str) -> JSON:
    return {"id": conv_id, "object": "conversation.deleted", "deleted": True}
