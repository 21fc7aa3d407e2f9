"""Stored chat completions on the wire: the update body, the list's ``metadata`` filter, the
stored shape of a request's messages, and the objects read back.

A stored message is OpenAI's ``ChatCompletionStoreMessage``: ``id`` (the completion's id and
the message's index, ``chatcmpl-...-0``), ``role``, ``content`` as text (a parts array's text
parts joined), ``content_parts`` (the array when one was sent, else null), ``refusal``,
``name``, and the tool and reasoning fields the message had (an assistant turn given back
with its ``reasoning_content`` keeps it; the stored completion's own message keeps the
reasoning it was answered with). The filter arrives as ``metadata[key]=value``
query pairs (how the SDKs send a map in a query) and is bounded as metadata is everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.datastructures import QueryParams

from appliance.api.bounds import RequestBounds
from appliance.api.wire.generation_bounds import check_metadata, too_many
from appliance.api.wire.reasoning import GIVEN_REASONING_NAMES
from appliance.store.records import JSON, StoredCompletion

_KEPT_FIELDS = ("tool_calls", "tool_call_id", "function_call", "refusal",
                *GIVEN_REASONING_NAMES)


class UpdateCompletion(BaseModel):
    model_config = ConfigDict(extra="allow")
    metadata: dict[str, str] | None  # required, as OpenAI's; null clears it


def metadata_filter(query: QueryParams, bounds: RequestBounds) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for name, value in query.multi_items():
        if not (name.startswith("metadata[") and name.endswith("]")):
            continue
        pairs[name[len("metadata["):-1]] = value
        # Checked as they come: a query of 10,000 pairs is refused at the 17th.
        if len(pairs) > bounds.max_metadata_pairs:
            raise too_many("metadata", len(pairs), bounds.max_metadata_pairs, "pairs")
    check_metadata(pairs, bounds)
    return pairs


def stored_messages(completion_id: str, messages: Sequence[dict[str, Any]]) -> tuple[JSON, ...]:
    """A request's messages (as sent, already validated by the chat route) in stored shape."""
    return tuple(_stored(f"{completion_id}-{index}", message)
                 for index, message in enumerate(messages))


def _stored(message_id: str, message: dict[str, Any]) -> JSON:
    content = message.get("content")
    parts = content if isinstance(content, list) else None
    text = content if not isinstance(content, list) else "".join(
        str(part.get("text", "")) for part in content
        if isinstance(part, dict) and part.get("type") in ("text", "input_text"))
    stored: JSON = {"id": message_id, "role": message.get("role"), "content": text,
                    "refusal": None, "name": message.get("name"), "content_parts": parts}
    stored.update({field: message[field] for field in _KEPT_FIELDS
                   if message.get(field) is not None})
    return stored


def completion_json(completion: StoredCompletion) -> JSON:
    """The chat.completion as it was returned, with its current metadata."""
    return {**completion.body, "metadata": completion.metadata}


def deleted_json(completion_id: str) -> JSON:
    return {"id": completion_id, "object": "chat.completion.deleted", "deleted": True}
