"""The Responses API's input items: validated into the shape they are stored and listed in, and
read into the engine's ``ChatMessage`` history.

An item is a ``message`` (roles user, assistant, system, developer; text parts, and in user
messages ``input_image`` parts: stored as sent, their pictures read by the route through
``image_refs`` and wire/image_input.py, placed at their offsets in the turn's text), a
``function_call`` the assistant made, the ``function_call_output`` answering it (paired by
``call_id`` over the whole history, as chat pairs tool turns), or a ``reasoning`` item given
back: its text (its ``reasoning_text`` content, or the text its ``encrypted_content`` seals,
which wins when both are there: it is what this server wrote) becomes the ``reasoning`` of the
assistant turn that follows it, and is dropped when no assistant turn follows. Items of the
built-in tools this server does not run, and files, are a 400 naming the item. The
history reads the same items whether they came in this request, from a ``previous_response_id``
chain or from a conversation; consecutive system texts (instructions, developer messages)
become one system message, which every chat template accepts.

Counts and sizes were bounded before (responses_bounds.py); each pass here is linear.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from appliance.api.bounds import RequestBounds
from appliance.api.wire.image_input import (
    ImageKey,
    ImageRef,
    ImageRefs,
    images_at,
    response_part_key,
    response_part_ref,
)
from appliance.api.wire.responses_tools import shown_name
from appliance.engines.base import ChatMessage, ImageInput, Role, ToolCall
from appliance.errors import InvalidRequest

JSON = dict[str, Any]
Sourced = tuple[JSON, str]  # an item and where it came from (the param an error names)
# Opens a reasoning item's encrypted_content: (token, the param an error names) -> its text.
Unseal = Callable[[str, str], str]
# Ids of stored items, by item type (OpenAI's prefixes).
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
                "reasoning": "rs"}
# Message roles as the engine knows them: developer is OpenAI's newer name for system.
_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system",
                          "developer": "system"}
_UNSUPPORTED_PARTS = ("input_file", "input_audio")


def _invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _string(item: Mapping[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise _invalid(f"{where}.{key}", f"Missing required parameter: '{where}.{key}' (a "
                       "string).", "missing_required_parameter")
    return value


def _image_part(part: Mapping[str, Any], where: str, role: str) -> JSON:
    """An input_image part in its stored shape: its shape checked here; counted, sized and
    read with the request's other pictures (``image_refs``, then the route)."""
    ref = response_part_ref(part, where, role)
    return {"type": "input_image", "image_url": ref.url, "detail": ref.detail}


def _text_part(part: Any, where: str, assistant: bool) -> JSON:
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind in _UNSUPPORTED_PARTS:
        raise _invalid(f"{where}.type", f"Content parts of type {kind!r} are not supported by "
                       "this server (text and input_image only).", "unsupported_content_type")
    if kind == "refusal" and assistant:
        return {"type": "refusal", "refusal": _string(part, "refusal", where)}
    if kind == "input_text" or (kind == "output_text" and assistant):
        text = _string(part, "text", where)
        if assistant:
            return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return {"type": "input_text", "text": text}
    allowed = "'input_text', 'output_text', 'refusal'" if assistant else "'input_text'"
    raise _invalid(f"{where}.type", f"Invalid value for '{where}.type': {kind!r}. Supported "
                   f"values are: {allowed}.")


def _message(item: Mapping[str, Any], where: str) -> JSON:
    role = item.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise _invalid(f"{where}.role", f"Invalid value for '{where}.role': {role!r}. "
                       "Supported values are: 'user', 'assistant', 'system' and 'developer'.")
    assistant = role == "assistant"
    content = item.get("content")
    if isinstance(content, str):
        parts = [_text_part({"type": "output_text" if assistant else "input_text",
                             "text": content}, f"{where}.content", assistant)]
    elif isinstance(content, list):
        parts = [_image_part(part, f"{where}.content[{index}]", role)
                 if isinstance(part, Mapping) and part.get("type") == "input_image"
                 else _text_part(part, f"{where}.content[{index}]", assistant)
                 for index, part in enumerate(content)]
    else:
        raise _invalid(f"{where}.content", f"Missing required parameter: '{where}.content' "
                       "(a string or an array of content parts).", "missing_required_parameter")
    return {"type": "message", "role": role, "content": parts, "status": "completed"}


def _function_call(item: Mapping[str, Any], where: str) -> JSON:
    found: JSON = {"type": "function_call", "call_id": _string(item, "call_id", where),
                   "name": _string(item, "name", where),
                   "arguments": _string(item, "arguments", where), "status": "completed"}
    namespace = item.get("namespace")
    if namespace is not None:
        found["namespace"] = _string(item, "namespace", where)
    return found


def _call_output(item: Mapping[str, Any], where: str) -> JSON:
    output = item.get("output")
    if isinstance(output, list):
        output = [_text_part(part, f"{where}.output[{index}]", assistant=False)
                  for index, part in enumerate(output)]
    elif not isinstance(output, str):
        raise _invalid(f"{where}.output", f"Missing required parameter: '{where}.output' (a "
                       "string or an array of content parts).", "missing_required_parameter")
    return {"type": "function_call_output", "call_id": _string(item, "call_id", where),
            "output": output, "status": "completed"}


def _reasoning_text(part: Any, where: str) -> JSON:
    kind = part.get("type") if isinstance(part, Mapping) else None
    # "text": the name Codex gives a reasoning content part; stored as the spec's.
    if kind not in ("reasoning_text", "text"):
        raise _invalid(f"{where}.type", f"Invalid value for '{where}.type': {kind!r}. "
                       "Supported values are: 'reasoning_text'.")
    return {"type": "reasoning_text", "text": _string(part, "text", where)}


def _reasoning(item: Mapping[str, Any], where: str) -> JSON:
    summary = item.get("summary", [])
    if not isinstance(summary, list):
        raise _invalid(f"{where}.summary", f"Invalid type for '{where}.summary': expected an "
                       "array.", "invalid_type")
    found: JSON = {"type": "reasoning", "summary": [
        {"type": "summary_text", "text": _string(part, "text", f"{where}.summary[{index}]")}
        if isinstance(part, Mapping) else {} for index, part in enumerate(summary)]}
    content = item.get("content")
    if isinstance(content, list):
        found["content"] = [_reasoning_text(part, f"{where}.content[{index}]")
                            for index, part in enumerate(content)]
    elif content is not None:
        raise _invalid(f"{where}.content", f"Invalid type for '{where}.content': expected an "
                       "array of reasoning_text parts.", "invalid_type")
    sealed = item.get("encrypted_content")
    if isinstance(sealed, str):
        found["encrypted_content"] = sealed
    elif sealed is not None:
        raise _invalid(f"{where}.encrypted_content", f"Invalid type for "
                       f"'{where}.encrypted_content': expected a string.", "invalid_type")
    return found


def reasoning_of(item: Mapping[str, Any], where: str, unseal: Unseal) -> str:
    """A stored reasoning item's text: what its encrypted_content seals (opened, or a 400
    naming it), else its reasoning_text parts."""
    sealed = item.get("encrypted_content")
    if isinstance(sealed, str):
        return unseal(sealed, f"{where}.encrypted_content")
    return _text(item.get("content") or [])


def input_item(item: Any, where: str) -> JSON:
    """One item, validated, in its stored shape (without an id)."""
    if not isinstance(item, Mapping):
        raise _invalid(where, f"Invalid type for '{where}': expected an object.", "invalid_type")
    kind = item.get("type", "message")
    if kind == "message":
        return _message(item, where)
    if kind == "function_call":
        return _function_call(item, where)
    if kind == "function_call_output":
        return _call_output(item, where)
    if kind == "reasoning":
        return _reasoning(item, where)
    if kind == "item_reference":
        raise _invalid(f"{where}.type", "Items of type 'item_reference' are not supported by "
                       "this server: send the item itself.", "unsupported_value")
    raise _invalid(f"{where}.type", f"Invalid value for '{where}.type': {kind!r}. This server "
                   "takes 'message', 'function_call', 'function_call_output' and 'reasoning' "
                   "items (it runs no built-in tools).")


def input_items(raw: str | Sequence[Any], where: str = "input") -> list[JSON]:
    """A request's ``input`` (a string is one user message) as stored items, in order."""
    if isinstance(raw, str):
        return [_message({"role": "user", "content": raw}, where)]
    return [input_item(item, f"{where}[{index}]") for index, item in enumerate(raw)]


def with_fresh_ids(items: Sequence[JSON]) -> list[JSON]:
    """The items as they are stored: each with a new id (a client's own ids may repeat)."""
    return [{"id": f"{_ID_PREFIXES.get(str(item.get('type')), 'item')}_{uuid.uuid4().hex}",
             **{k: v for k, v in item.items() if k != "id"}} for item in items]


def _text(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    return "".join(str(part.get("text", part.get("refusal", ""))) for part in parts
                   if isinstance(part, Mapping))


def _with_reasoning(message: ChatMessage, reasoning: str) -> ChatMessage:
    if not reasoning:
        return message
    if message.reasoning:  # thought again after an answer of the same turn: one text
        reasoning = f"{message.reasoning}\n\n{reasoning}"
    return replace(message, reasoning=reasoning)


def image_refs(items: Sequence[Sourced], bounds: RequestBounds) -> list[ImageRef]:
    """The pictures of ``items`` (stored shapes), checked against the per-request bounds
    (count, encoded size) but not yet read: the route reads them."""
    refs = ImageRefs(bounds)
    for item, where in items:
        content = item.get("content") if item.get("type", "message") == "message" else None
        for index, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, Mapping) and part.get("type") == "input_image":
                refs.add(response_part_ref(part, f"{where}.content[{index}]",
                                           str(item.get("role"))))
    return refs.refs


def _user_turn(parts: Any, images: Mapping[ImageKey, ImageInput]) -> ChatMessage:
    """A user message: its text parts joined, its pictures at their offsets in that text."""
    if isinstance(parts, str):
        return ChatMessage("user", parts)
    texts: list[str] = []
    pictures: list[tuple[int, ImageKey]] = []
    length = 0
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "input_image":
            pictures.append((length, response_part_key(part)))
            continue
        text = str(part.get("text", part.get("refusal", "")))
        texts.append(text)
        length += len(text)
    return ChatMessage("user", "".join(texts), images=images_at(pictures, images))


def history(items: Sequence[Sourced], instructions: str | None,
            unseal: Unseal, images: Mapping[ImageKey, ImageInput] | None = None
            ) -> tuple[ChatMessage, ...]:
    """The chat history of ``items`` (stored shapes, as ``input_item`` makes them), after
    ``instructions``. Every function call needs its output before the next message, and every
    output a call before it. Reasoning goes to the assistant turn after it. ``images``: the
    pictures of the user turns (``image_refs``, read by the route)."""
    pictures = images or {}
    out: list[ChatMessage] = [ChatMessage("system", instructions)] if instructions else []
    unanswered: dict[str, tuple[ToolCall, str]] = {}
    thought: list[str] = []  # reasoning items since the last assistant turn
    for item, where in items:
        kind = item.get("type")
        if kind == "reasoning":
            text = reasoning_of(item, where, unseal)
            if text:
                thought.append(text)
            continue
        if kind == "function_call":
            call = ToolCall(str(item["call_id"]),
                            shown_name(item.get("namespace"), str(item["name"])),
                            str(item["arguments"]))
            if call.id in unanswered:
                raise _invalid(f"{where}.call_id", f"Invalid '{where}.call_id': the call id "
                               f"{call.id!r} is used by two open function calls.")
            unanswered[call.id] = (call, where)
            if out and out[-1].role == "assistant":
                out[-1] = replace(out[-1], tool_calls=(*out[-1].tool_calls, call))
            else:
                out.append(ChatMessage("assistant", "", (call,)))
            out[-1] = _with_reasoning(out[-1], "\n\n".join(thought))
            thought = []
            continue
        if kind == "function_call_output":
            answered = unanswered.pop(str(item["call_id"]), None)
            if answered is None:
                raise _invalid(f"{where}.call_id", "No tool call found for function call "
                               f"output with call_id {item['call_id']!r}.")
            out.append(ChatMessage("tool", _text(item["output"]), tool_call_id=answered[0].id,
                                   name=answered[0].name))
            continue
        _check_answered(unanswered)
        role = _ROLES[str(item["role"])]
        text = _text(item["content"])
        if role == "system" and out and out[-1].role == "system":
            out[-1] = replace(out[-1], content=f"{out[-1].content}\n\n{text}")
        elif role == "user":
            out.append(_user_turn(item["content"], pictures))
        else:
            out.append(ChatMessage(role, text))
        if role == "assistant":
            out[-1] = _with_reasoning(out[-1], "\n\n".join(thought))
        # Reasoning that no assistant turn follows answered nothing: it is dropped.
        thought = []
    _check_answered(unanswered)
    return tuple(out)


def _check_answered(unanswered: dict[str, tuple[ToolCall, str]]) -> None:
    if unanswered:
        call_id, (_, where) = next(iter(unanswered.items()))
        raise _invalid(where, f"No tool output found for function call {call_id}: each "
                       "function call needs its 'function_call_output' before the next message.")
