"""The OpenAI chat-completions request as we accept it, and its translation seam.

``to_chat_params`` is the only place where a wire request becomes engine parameters. Known
OpenAI parameters that are not honoured yet are rejected with a 400 naming them; unknown
fields are accepted (and logged by the validator) because clients send fields newer than us.
Reasoning (``reasoning_effort``, ``chat_template_kwargs``, reasoning given back on assistant
messages) is checked and translated by ``wire/reasoning.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.api.bounds import RequestBounds
from appliance.api.wire.generation import GenerationFields, check_stream_options, stops, to_sampling
from appliance.api.wire.image_input import (
    ImageKey,
    ImageRef,
    ImageRefs,
    chat_part_key,
    chat_part_ref,
    images_at,
)
from appliance.api.wire.reasoning import (
    GIVEN_REASONING_NAMES,
    effort_with_template,
    given_reasoning,
    reasoning_effort,
)
from appliance.api.wire.tools import history_calls, legacy_call, tool_use
from appliance.engines.base import (
    ChatMessage,
    ChatParams,
    ImageInput,
    ModelInfo,
    OutputFormat,
    Role,
    ToolCall,
)
from appliance.errors import InvalidRequest


class WireMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    refusal: str | None = None
    audio: dict[str, Any] | None = None
    # Assistant turns given back with the reasoning the model wrote (wire/reasoning.py).
    reasoning_content: str | None = None
    reasoning: str | None = None
    thinking: str | None = None


class ChatCompletionRequest(GenerationFields):
    messages: Annotated[list[WireMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    # Kept with the completion when it is stored (`store: true`); otherwise bookkeeping only.
    metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    store: bool | None = None  # honoured when the server has a state store (to_chat_params)
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    modalities: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None  # deprecated by OpenAI; mapped to tools
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    reasoning_effort: str | None = None  # checked against the model (wire/reasoning.py)
    # Extension (llama-server, vLLM): variables for the chat template, bounded before parsing.
    chat_template_kwargs: dict[str, Any] | None = None
    # Known but not honoured: rejected by name when set.
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    verbosity: str | None = None


def _unsupported(param: str, why: str = "is not supported by this server yet") -> InvalidRequest:
    return InvalidRequest(f"The parameter '{param}' {why}.", param=param,
                          code="unsupported_parameter")


def _reject_unhonoured(body: ChatCompletionRequest) -> None:
    """Every OpenAI parameter is honoured or refused by name: never silently dropped."""
    for param in ("audio", "prediction", "web_search_options", "verbosity"):
        if getattr(body, param) is not None:
            raise _unsupported(param)
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs' set to true.",
                             param="top_logprobs", code="invalid_value")
    if body.modalities is not None and set(body.modalities) - {"text"}:
        raise _unsupported("modalities", "other than ['text'] is not supported")
    if body.service_tier not in (None, "auto", "default"):
        raise _unsupported("service_tier", "must be 'auto' or 'default' on this server")


def _message_text(message: WireMessage, index: int) -> str:
    return _message_content(message, index, {})[0]


def _message_content(message: WireMessage, index: int, images: Mapping[ImageKey, ImageInput]
                     ) -> tuple[str, tuple[tuple[int, ImageInput], ...]]:
    """The message's text (its text parts joined with "") and its pictures, each at the offset
    in that text where it stood between the parts."""
    content = message.content
    if content is None:
        if message.role == "assistant":
            return "", ()
        raise InvalidRequest(f"Missing content in messages[{index}].",
                             param=f"messages[{index}].content")
    if isinstance(content, str):
        return content, ()
    texts: list[str] = []
    pictures: list[tuple[int, ImageKey]] = []
    length = 0
    for part_index, part in enumerate(content):
        param = f"messages[{index}].content[{part_index}]"
        kind = part.get("type")
        if kind in ("text", "input_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and message.role == "assistant":
            texts.append(str(part.get("refusal", "")))
        elif kind in ("text", "input_text"):
            raise InvalidRequest(f"Invalid value for '{param}.text': expected a string.",
                                 param=f"{param}.text", code="invalid_value")
        elif kind == "image_url" and chat_part_key(part) in images:
            pictures.append((length, chat_part_key(part)))
            continue
        else:
            raise InvalidRequest(
                f"Content parts of type {kind!r} are not supported by this server (text and "
                "image_url only).", param=f"{param}.type", code="unsupported_content_type")
        length += len(texts[-1])
    return "".join(texts), images_at(pictures, images)


def image_refs(body: ChatCompletionRequest, bounds: RequestBounds) -> list[ImageRef]:
    """The request's image parts, checked (shape, detail, user turns only, count, encoded
    size) but not yet read: the route reads them (image_input.resolve_images)."""
    refs = ImageRefs(bounds)
    for index, message in enumerate(body.messages):
        if not isinstance(message.content, list):
            continue
        for part_index, part in enumerate(message.content):
            if part.get("type") == "image_url":
                refs.add(chat_part_ref(part, f"messages[{index}].content[{part_index}]",
                                       message.role))
    return refs.refs


def _messages(body: ChatCompletionRequest,
              images: Mapping[ImageKey, ImageInput]) -> tuple[ChatMessage, ...]:
    """The history, with tool turns paired to the calls they answer (as OpenAI checks)."""
    out: list[ChatMessage] = []
    unanswered: dict[str, tuple[ToolCall, int]] = {}  # call id -> (call, its message index)
    legacy_calls: dict[str, ToolCall] = {}  # deprecated function_call turns, by name
    for index, message in enumerate(body.messages):
        where = f"messages[{index}]"
        if message.audio is not None:
            raise InvalidRequest("Audio in the history is not supported.",
                                 param=f"{where}.audio", code="invalid_value")
        reasoning = given_reasoning({name: getattr(message, name)
                                     for name in GIVEN_REASONING_NAMES}, message.role, where)
        if message.role == "tool":
            call_id = message.tool_call_id
            if not call_id:
                raise InvalidRequest(f"Missing required parameter: '{where}.tool_call_id'.",
                                     param=f"{where}.tool_call_id",
                                     code="missing_required_parameter")
            answered = unanswered.pop(call_id, None)
            if answered is None:
                raise InvalidRequest(
                    f"Invalid parameter: messages with role 'tool' must be a response to a "
                    f"preceding message with 'tool_calls' (no open call has the id "
                    f"{call_id!r}).", param=f"{where}.tool_call_id", code="invalid_value")
            out.append(ChatMessage("tool", _message_text(message, index), tool_call_id=call_id,
                                   name=answered[0].name))
            continue
        if message.role == "function":
            if not message.name:
                raise InvalidRequest(f"Missing required parameter: '{where}.name'.",
                                     param=f"{where}.name", code="missing_required_parameter")
            call = legacy_calls.pop(message.name, None)
            out.append(ChatMessage("tool", _message_text(message, index),
                                   tool_call_id=call.id if call else f"call_function_{index}",
                                   name=message.name))
            continue
        _check_answered(unanswered)
        calls: tuple[ToolCall, ...] = ()
        if message.role == "assistant" and message.tool_calls:
            calls = history_calls(message.tool_calls, f"{where}.tool_calls")
            unanswered.update((call.id, (call, index)) for call in calls)
        elif message.role == "assistant" and message.function_call is not None:
            calls = (legacy_call(message.function_call, f"{where}.function_call",
                                 f"call_function_{index}"),)
            legacy_calls[calls[0].name] = calls[0]
        elif message.tool_calls or message.function_call:
            field = "tool_calls" if message.tool_calls else "function_call"
            raise InvalidRequest(f"Only assistant messages carry '{field}'.",
                                 param=f"{where}.{field}", code="invalid_value")
        # 'developer' is OpenAI's newer name for the system role.
        role: Role = "system" if message.role == "developer" else message.role
        text, pictures = _message_content(message, index, images)
        out.append(ChatMessage(role=role, content=text, tool_calls=calls, reasoning=reasoning,
                               images=pictures))
    _check_answered(unanswered)
    return tuple(out)


def _check_answered(unanswered: dict[str, tuple[ToolCall, int]]) -> None:
    if unanswered:
        first = min(index for _, index in unanswered.values())
        raise InvalidRequest(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(unanswered)}", param=f"messages[{first}].role",
            code="invalid_value")


def _output_format(response_format: dict[str, Any] | None) -> OutputFormat | None:
    """OpenAI's response_format: text (no constraint), json_object, or json_schema."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind != "json_schema":
        raise InvalidRequest(f"Invalid value for 'response_format.type': {kind!r}. Supported "
                             "values are: 'text', 'json_object' and 'json_schema'.",
                             param="response_format.type", code="invalid_value")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest("Missing required parameter: 'response_format.json_schema'.",
                             param="response_format.json_schema",
                             code="missing_required_parameter")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("Missing required parameter: 'response_format.json_schema.name'.",
                             param="response_format.json_schema.name",
                             code="missing_required_parameter")
    schema = spec.get("schema", {})
    strict = spec.get("strict")
    if not isinstance(schema, dict) or not isinstance(strict, bool | None):
        field = "schema" if not isinstance(schema, dict) else "strict"
        raise InvalidRequest(f"Invalid type for 'response_format.json_schema.{field}'.",
                             param=f"response_format.json_schema.{field}",
                             code="invalid_type")
    return OutputFormat("json_schema", schema, bool(strict))


def to_chat_params(body: ChatCompletionRequest, *, storable: bool = False,
                   model: ModelInfo | None = None,
                   images: Mapping[ImageKey, ImageInput] | None = None) -> ChatParams:
    """``storable``: the server has a state store, so ``store: true`` is honoured (the route
    stores the completion); without one it is refused by name. ``model``: the model asked,
    whose reasoning format decides whether ``reasoning_effort`` is honoured (None: a model
    that does not reason). ``images``: the request's pictures, read by the route
    (``image_refs``, then image_input.resolve_images); an image part not among them is
    refused as an unsupported part."""
    _reject_unhonoured(body)
    if body.store and not storable:
        raise _unsupported("store", "= true is not supported: this server stores no completions")
    check_stream_options(body)
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise InvalidRequest("Set either 'max_tokens' or 'max_completion_tokens', not both.",
                             param="max_tokens", code="invalid_value")
    template_kwargs = dict(body.chat_template_kwargs or {})
    thinks = model.reasoning if model is not None else None
    effort = effort_with_template(reasoning_effort(body.reasoning_effort, thinks),
                                  template_kwargs, thinks)
    return ChatParams(
        messages=_messages(body, images or {}),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=stops(body.stop),
        sampling=replace(to_sampling(body), logprobs=(body.top_logprobs or 0)
                         if body.logprobs else None),
        n=body.n or 1,
        output=_output_format(body.response_format),
        tools=tool_use(body.tools, body.tool_choice, body.parallel_tool_calls, body.functions,
                       body.function_call),
        reasoning_effort=effort,
        template_kwargs=template_kwargs,
    )
