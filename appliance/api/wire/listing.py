"""The stored-state routes' shared wire: a paged list's query (``order``, ``after``, ``limit``,
``include``), OpenAI's list object, and the JSON body those routes answer with.

Every query value is bounded before any lookup: ``limit`` 1 to 100 (OpenAI's), ``after`` a
name-sized id, ``include`` at most ``max_include`` values of OpenAI's ``IncludeEnum``. Stored
items are echoed as the client sent their text, which JSON allows to hold a lone surrogate
(``"\\ud800"``); ``stored_json`` therefore writes ASCII-escaped JSON, which is the same JSON
to every parser and cannot fail to encode.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import QueryParams
from starlette.responses import Response

from appliance.api.bounds import RequestBounds
from appliance.api.wire.generation_bounds import too_long, too_many
from appliance.errors import InvalidRequest
from appliance.store.records import JSON, Order

MAX_LIMIT = 100  # OpenAI's, on every list of stored state
DEFAULT_LIMIT = 20
# OpenAI's IncludeEnum. Accepted on the stored-state reads without effect: an item is listed as
# it was stored, with whatever it carried then (these models make no logprobs-free variant
# to add them back to, no image URLs, no tool results of tools this server does not run).
INCLUDE_VALUES = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url",
    "code_interpreter_call.outputs", "reasoning.encrypted_content",
    "message.output_text.logprobs",
})


@dataclass(frozen=True)
class ListQuery:
    order: Order
    after: str | None
    limit: int


def list_query(query: QueryParams, bounds: RequestBounds, *, default_order: Order) -> ListQuery:
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid value for 'order': {order[:32]!r}. Supported values "
                             "are: 'asc' and 'desc'.", param="order", code="invalid_value")
    after = query.get("after")
    if after is not None and len(after) > bounds.max_name_chars:
        raise too_long("after", len(after), bounds.max_name_chars)
    return ListQuery(order="asc" if order == "asc" else "desc", after=after or None,
                     limit=_limit(query.get("limit")))


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    # isdigit first: int() of a 100,000-digit string is work (and a ValueError past 4,300).
    if not (text.isascii() and text.isdigit() and len(text) <= 3) or \
            not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidRequest(f"Invalid 'limit': {text[:32]!r}; it must be an integer from 1 to "
                             f"{MAX_LIMIT}.", param="limit", code="integer_out_of_range")
    return int(text)


def check_include(query: QueryParams, bounds: RequestBounds) -> tuple[str, ...]:
    """``include`` (``include=a&include=b`` or ``include[]=a``, as the SDKs send arrays):
    known values only, at most ``max_include``."""
    values = [*query.getlist("include"), *query.getlist("include[]")]
    if len(values) > bounds.max_include:
        raise too_many("include", len(values), bounds.max_include, "values")
    for value in values:
        if value not in INCLUDE_VALUES:
            raise InvalidRequest(f"Invalid value for 'include': {value[:64]!r}. Supported "
                                 f"values are: {', '.join(sorted(INCLUDE_VALUES))}.",
                                 param="include", code="invalid_value")
    return tuple(values)


def list_json(items: Sequence[JSON], has_more: bool) -> JSON:
    """OpenAI's list object. ``first_id``/``last_id`` are strings in the spec even for an empty
    list: "" then (falsy, so the SDKs' cursor pages stop as they do on null)."""
    return {"object": "list", "data": list(items),
            "first_id": str(items[0].get("id", "")) if items else "",
            "last_id": str(items[-1].get("id", "")) if items else "",
            "has_more": has_more}


class StoredJSON(Response):
    """A JSON body written ASCII-escaped (module docstring)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")
