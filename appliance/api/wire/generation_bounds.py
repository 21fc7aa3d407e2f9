"""The sizes and counts of a chat or legacy-completions body, checked before any work.

They run on the parsed JSON, before pydantic builds a model of it (validating 100,000 tiny
messages costs more than refusing them), and each reads only what its bound needs: lengths of
lists and strings, one pass over the messages, ``json.dumps`` (C) of a tool only once the tool
count passed. A value of the wrong type is left for validation to name. Bounds are
``RequestBounds``; each answer is a 400 naming the parameter and the bound, 413 for bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from appliance.api.bounds import RequestBounds
from appliance.api.wire.generation import MAX_STOP_SEQUENCES
from appliance.api.wire.reasoning import GIVEN_REASONING_NAMES, check_template_kwargs
from appliance.errors import InvalidRequest, PayloadTooLarge

MAX_MODALITIES = 8  # OpenAI knows two
# Labels OpenAI takes as short strings: never text we work on, but echoed in errors and logs.
_NAMES = ("model", "user", "safety_identifier", "prompt_cache_key", "service_tier",
          "reasoning_effort", "verbosity")


def too_many(param: str, count: int, bound: int, what: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {count} {what}; this server allows at most "
                          f"{bound}.", param=param, code="invalid_value")


def too_long(param: str, length: int, bound: int) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': a string of {length} characters; this server "
                          f"allows at most {bound}.", param=param, code="string_above_max_length")


def json_bytes(value: Any, param: str) -> int:
    try:
        return len(json.dumps(value, separators=(",", ":")).encode())
    except RecursionError:
        raise InvalidRequest(f"Invalid '{param}': it is nested too deeply.", param=param,
                             code="invalid_value") from None


def _names(data: Mapping[str, Any], bounds: RequestBounds) -> None:
    for field in _NAMES:
        value = data.get(field)
        if isinstance(value, str) and len(value) > bounds.max_name_chars:
            raise too_long(field, len(value), bounds.max_name_chars)


def _stop(stop: Any, bounds: RequestBounds) -> None:
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    if len(stops) > MAX_STOP_SEQUENCES:
        raise too_many("stop", len(stops), MAX_STOP_SEQUENCES, "sequences")
    for index, text in enumerate(stops):
        if isinstance(text, str) and len(text) > bounds.max_stop_chars:
            raise too_long("stop" if isinstance(stop, str) else f"stop[{index}]", len(text),
                            bounds.max_stop_chars)


def check_metadata(metadata: Any, bounds: RequestBounds) -> None:
    if not isinstance(metadata, Mapping):
        return
    if len(metadata) > bounds.max_metadata_pairs:
        raise too_many("metadata", len(metadata), bounds.max_metadata_pairs, "pairs")
    for key, value in metadata.items():
        if len(key) > bounds.max_metadata_key_chars:
            raise too_long("metadata", len(key), bounds.max_metadata_key_chars)
        if isinstance(value, str) and len(value) > bounds.max_metadata_value_chars:
            raise too_long(f"metadata.{key}", len(value), bounds.max_metadata_value_chars)


def check_generation(data: Mapping[str, Any], bounds: RequestBounds) -> None:
    """The fields chat and legacy completions share."""
    _names(data, bounds)
    _stop(data.get("stop"), bounds)
    bias = data.get("logit_bias")
    if isinstance(bias, Mapping) and len(bias) > bounds.max_logit_bias:
        raise too_many("logit_bias", len(bias), bounds.max_logit_bias, "entries")


class TextBudget:
    """Characters of text across the messages (or a response's input items: ``whole`` and
    ``one`` name them in the errors), against the per-message and total bounds."""

    def __init__(self, bounds: RequestBounds, whole: str = "the messages",
                 one: str = "one message"):
        self.bounds = bounds
        self.whole = whole
        self.one = one
        self.total = 0
        self.parts = 0

    def add(self, param: str, *texts: Any) -> None:
        length = sum(len(t) for t in texts if isinstance(t, str))
        if length > self.bounds.max_message_chars:
            raise InvalidRequest(f"Invalid '{param}': {length} characters of text; this "
                                 f"server allows at most {self.bounds.max_message_chars} in "
                                 f"{self.one}.", param=param, code="string_above_max_length")
        self.total += length
        if self.total > self.bounds.max_total_chars:
            raise InvalidRequest(f"Invalid '{param}': {self.whole} hold more than "
                                 f"{self.bounds.max_total_chars} characters of text in all.",
                                 param=param, code="string_above_max_length")

    def count(self, param: str, items: int) -> None:
        self.parts += items
        if self.parts > self.bounds.max_message_parts:
            raise InvalidRequest(f"Invalid '{param}': {self.whole} hold more than "
                                 f"{self.bounds.max_message_parts} content parts and tool "
                                 "calls in all.", param=param, code="invalid_value")


def _message(message: Any, where: str, text: TextBudget) -> None:
    if not isinstance(message, Mapping):
        return
    bounds = text.bounds
    for field in ("name", "tool_call_id"):
        value = message.get(field)
        if isinstance(value, str) and len(value) > bounds.max_name_chars:
            raise too_long(f"{where}.{field}", len(value), bounds.max_name_chars)
    pieces: list[Any] = [message.get("content"), message.get("refusal")]
    content = message.get("content")
    if isinstance(content, list):
        text.count(f"{where}.content", len(content))
        pieces = [message.get("refusal")]
        pieces += [part.get("text") for part in content if isinstance(part, Mapping)]
        pieces += [part.get("refusal") for part in content if isinstance(part, Mapping)]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            pieces += [function.get("name"), function.get("arguments")]
    if isinstance(calls, list):
        text.count(f"{where}.tool_calls", len(calls))
    legacy = message.get("function_call")
    if isinstance(legacy, Mapping):
        pieces += [legacy.get("name"), legacy.get("arguments")]
    text.add(f"{where}.content", *pieces)
    # Reasoning given back is bounded as content is, and counts toward the messages' total;
    # the same text under two of its names (a reply echoed with both fields) counts once.
    given = [message.get(name) for name in GIVEN_REASONING_NAMES]
    for index, value in enumerate(given):
        if isinstance(value, str) and value not in given[:index]:
            text.add(f"{where}.{GIVEN_REASONING_NAMES[index]}", value)


def _tools(tools: Any, field: str, bounds: RequestBounds) -> None:
    if not isinstance(tools, list):
        return
    if len(tools) > bounds.max_tools:
        raise too_many(field, len(tools), bounds.max_tools, "tools")
    for index, tool in enumerate(tools):
        size = json_bytes(tool, f"{field}[{index}]")
        if size > bounds.max_tool_schema_bytes:
            raise PayloadTooLarge(f"Invalid '{field}[{index}]': the tool's definition is "
                                  f"{size} bytes of JSON; this server allows at most "
                                  f"{bounds.max_tool_schema_bytes}.", param=f"{field}[{index}]")


def _response_format(response_format: Any, bounds: RequestBounds) -> None:
    spec = response_format.get("json_schema") if isinstance(response_format, Mapping) else None
    if not isinstance(spec, Mapping) or "schema" not in spec:
        return
    size = json_bytes(spec["schema"], "response_format.json_schema.schema")
    if size > bounds.max_response_schema_bytes:
        raise PayloadTooLarge(f"Invalid 'response_format.json_schema.schema': the schema is "
                              f"{size} bytes of JSON; this server allows at most "
                              f"{bounds.max_response_schema_bytes}.",
                              param="response_format.json_schema.schema")


def check_chat(data: Mapping[str, Any], bounds: RequestBounds) -> None:
    check_generation(data, bounds)
    messages = data.get("messages")
    if isinstance(messages, list):
        if len(messages) > bounds.max_messages:
            raise too_many("messages", len(messages), bounds.max_messages, "messages")
        text = TextBudget(bounds)
        for index, message in enumerate(messages):
            _message(message, f"messages[{index}]", text)
    _tools(data.get("tools"), "tools", bounds)
    _tools(data.get("functions"), "functions", bounds)
    _response_format(data.get("response_format"), bounds)
    check_metadata(data.get("metadata"), bounds)
    check_template_kwargs(data.get("chat_template_kwargs"), bounds)
    modalities = data.get("modalities")
    if isinstance(modalities, list) and len(modalities) > MAX_MODALITIES:
        raise too_many("modalities", len(modalities), MAX_MODALITIES, "entries")


def check_completion(data: Mapping[str, Any], bounds: RequestBounds) -> None:
    check_generation(data, bounds)
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        TextBudget(bounds).add("prompt", prompt)
        return
    if not isinstance(prompt, list):
        return
    if prompt and isinstance(prompt[0], int):  # one prompt, as token ids
        if len(prompt) > bounds.max_prompt_token_ids:
            raise too_many("prompt", len(prompt), bounds.max_prompt_token_ids, "token ids")
        return
    if len(prompt) > bounds.max_prompts:
        raise too_many("prompt", len(prompt), bounds.max_prompts, "prompts")
    text = TextBudget(bounds)
    for index, item in enumerate(prompt):
        if isinstance(item, str):
            text.add(f"prompt[{index}]", item)
        elif isinstance(item, list) and len(item) > bounds.max_prompt_token_ids:
            raise too_many(f"prompt[{index}]", len(item), bounds.max_prompt_token_ids,
                            "token ids")


def check_choice_tokens(choices: int, max_tokens: int, bounds: RequestBounds,
                        param: str = "n") -> None:
    """Tokens one request may ask for across its choices. A single choice is bounded by the
    model's context instead (past it, the engine answers context_length_exceeded)."""
    if choices > 1 and choices * max_tokens > bounds.max_choice_tokens:
        raise InvalidRequest(f"Invalid '{param}': {choices} choices of up to {max_tokens} "
                             f"tokens each ask for {choices * max_tokens} tokens; this server "
                             f"allows at most {bounds.max_choice_tokens} per request.",
                             param=param, code="invalid_value")
