"""The sizes and counts of a Responses request body, checked before any work.

As for chat (generation_bounds.py): on the parsed JSON, before pydantic builds anything, each
check reading only what its bound needs. Input items count as messages, their parts as content
parts, the functions inside a namespace as tools (and each is bounded as one tool's
definition). A value of the wrong type is left for validation to name. Each answer is a 400
naming the parameter and the bound, 413 for bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliance.api.bounds import RequestBounds
from appliance.api.wire.generation_bounds import (
    TextBudget,
    check_metadata,
    json_bytes,
    too_long,
    too_many,
)
from appliance.errors import PayloadTooLarge

# Labels: never text we work on, but echoed in responses, errors and logs.
_NAMES = ("model", "user", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
          "service_tier", "previous_response_id")
# The string fields of an item that hold text (ids and names are bounded as names).
_ITEM_TEXTS = ("arguments", "encrypted_content")
_ITEM_NAMES = ("id", "call_id", "name", "namespace", "role", "type", "status")


def _names(data: Mapping[str, Any], bounds: RequestBounds) -> None:
    for field in _NAMES:
        value = data.get(field)
        if isinstance(value, str) and len(value) > bounds.max_name_chars:
            raise too_long(field, len(value), bounds.max_name_chars)
    conversation = data.get("conversation")
    if isinstance(conversation, Mapping):
        conversation = conversation.get("id")
    if isinstance(conversation, str) and len(conversation) > bounds.max_name_chars:
        raise too_long("conversation", len(conversation), bounds.max_name_chars)


def _parts(parts: Any, where: str, text: TextBudget) -> list[Any]:
    """The texts of a list of content parts (counted as parts)."""
    if not isinstance(parts, list):
        return [parts]
    text.count(where, len(parts))
    return [part.get(key) for part in parts if isinstance(part, Mapping)
            for key in ("text", "refusal")]


def _item(item: Any, where: str, text: TextBudget) -> None:
    if not isinstance(item, Mapping):
        return
    bounds = text.bounds
    for field in _ITEM_NAMES:
        value = item.get(field)
        if isinstance(value, str) and len(value) > bounds.max_name_chars:
            raise too_long(f"{where}.{field}", len(value), bounds.max_name_chars)
    pieces = [item.get(field) for field in _ITEM_TEXTS]
    pieces += _parts(item.get("content"), f"{where}.content", text)
    pieces += _parts(item.get("output"), f"{where}.output", text)
    pieces += _parts(item.get("summary"), f"{where}.summary", text)
    text.add(where, *pieces)


def _input(data: Mapping[str, Any], bounds: RequestBounds) -> None:
    text = TextBudget(bounds, whole="the input items", one="one input item")
    instructions = data.get("instructions")
    text.add("instructions", instructions)
    raw = data.get("input")
    if isinstance(raw, str):
        text.add("input", raw)
    elif isinstance(raw, list):
        if len(raw) > bounds.max_messages:
            raise too_many("input", len(raw), bounds.max_messages, "items")
        for index, item in enumerate(raw):
            _item(item, f"input[{index}]", text)


def _tool_size(tool: Any, where: str, bounds: RequestBounds) -> None:
    size = json_bytes(tool, where)
    if size > bounds.max_tool_schema_bytes:
        raise PayloadTooLarge(f"Invalid '{where}': the tool's definition is {size} bytes of "
                              f"JSON; this server allows at most "
                              f"{bounds.max_tool_schema_bytes}.", param=where)


def _tools(tools: Any, bounds: RequestBounds) -> None:
    if not isinstance(tools, list):
        return
    if len(tools) > bounds.max_tools:
        raise too_many("tools", len(tools), bounds.max_tools, "tools")
    count = 0
    for index, tool in enumerate(tools):
        where = f"tools[{index}]"
        members = tool.get("tools") if isinstance(tool, Mapping) else None
        if tool_is_namespace(tool) and isinstance(members, list):
            count += len(members)
            if count > bounds.max_tools:
                raise too_many("tools", count, bounds.max_tools, "tools (the functions of "
                               "namespaces included)")
            _tool_size({k: v for k, v in tool.items() if k != "tools"}, where, bounds)
            for position, member in enumerate(members):
                _tool_size(member, f"{where}.tools[{position}]", bounds)
            continue
        count += 1
        if count > bounds.max_tools:
            raise too_many("tools", count, bounds.max_tools, "tools (the functions of "
                           "namespaces included)")
        _tool_size(tool, where, bounds)


def tool_is_namespace(tool: Any) -> bool:
    return isinstance(tool, Mapping) and tool.get("type") == "namespace"


def _text_format(text: Any, bounds: RequestBounds) -> None:
    form = text.get("format") if isinstance(text, Mapping) else None
    if not isinstance(form, Mapping) or "schema" not in form:
        return
    size = json_bytes(form["schema"], "text.format.schema")
    if size > bounds.max_response_schema_bytes:
        raise PayloadTooLarge(f"Invalid 'text.format.schema': the schema is {size} bytes of "
                              f"JSON; this server allows at most "
                              f"{bounds.max_response_schema_bytes}.", param="text.format.schema")


def _choice(choice: Any, bounds: RequestBounds) -> None:
    listed = choice.get("tools") if isinstance(choice, Mapping) else None
    if isinstance(listed, list) and len(listed) > bounds.max_tools:
        raise too_many("tool_choice.tools", len(listed), bounds.max_tools, "tools")


def check_response(data: Mapping[str, Any], bounds: RequestBounds) -> None:
    """Every bound of a create (or input_tokens) body."""
    _names(data, bounds)
    _input(data, bounds)
    _tools(data.get("tools"), bounds)
    _choice(data.get("tool_choice"), bounds)
    _text_format(data.get("text"), bounds)
    check_metadata(data.get("metadata"), bounds)
    include = data.get("include")
    if isinstance(include, list) and len(include) > bounds.max_include:
        raise too_many("include", len(include), bounds.max_include, "values")
