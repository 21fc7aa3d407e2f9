"""The OpenAI chat-completions request as we accept it, and its translation seam.

``to_chat_params`` is the only place where a wire request becomes engine parameters. Known
OpenAI parameters that are not honoured yet are rejected with a 400 naming them; unknown
fields are accepted (and logged by the validator) because clients send fields newer than us.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.engines.base import ChatMessage, ChatParams, OutputFormat, Role, Sampling
from appliance.errors import InvalidRequest

MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


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


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[WireMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    # Extensions (llama.cpp samplers OpenAI does not have); documented in the README.
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    # Accepted because they change nothing we serve (hints and bookkeeping).
    metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    modalities: list[str] | None = None
    # Known but not honoured yet: rejected by name when set to anything but a no-op.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    top_logprobs: int | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def _unsupported(param: str, why: str = "is not supported by this server yet") -> InvalidRequest:
    return InvalidRequest(f"The parameter '{param}' {why}.", param=param,
                          code="unsupported_parameter")


def _reject_unhonoured(body: ChatCompletionRequest) -> None:
    """Every OpenAI parameter is honoured or refused by name: never silently dropped."""
    if body.tools:
        raise _unsupported("tools")
    if body.tool_choice not in (None, "none"):
        raise _unsupported("tool_choice")
    for param in ("functions", "function_call", "audio", "prediction", "web_search_options",
                  "reasoning_effort", "verbosity", "top_logprobs"):
        if getattr(body, param) is not None:
            raise _unsupported(param)
    if body.logprobs:
        raise _unsupported("logprobs")
    if body.modalities is not None and set(body.modalities) - {"text"}:
        raise _unsupported("modalities", "other than ['text'] is not supported")
    if body.store:
        raise _unsupported("store", "= true is not supported: this server stores no completions")
    if body.service_tier not in (None, "auto", "default"):
        raise _unsupported("service_tier", "must be 'auto' or 'default' on this server")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is "
                             "enabled.", param="stream_options", code="invalid_value")


def _message_text(message: WireMessage, index: int) -> str:
    content = message.content
    if content is None:
        if message.role == "assistant":
            return ""
        raise InvalidRequest(f"Missing content in messages[{index}].",
                             param=f"messages[{index}].content")
    if isinstance(content, str):
        return content
    texts: list[str] = []
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
        else:
            raise InvalidRequest(
                f"Content parts of type {kind!r} are not supported by this server (text only).",
                param=f"{param}.type", code="unsupported_content_type")
    return "".join(texts)


def _messages(body: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    out: list[ChatMessage] = []
    for index, message in enumerate(body.messages):
        if message.role in ("tool", "function"):
            raise InvalidRequest(
                f"Messages with role '{message.role}' need tool support, which this server "
                "does not offer yet.", param=f"messages[{index}].role", code="invalid_value")
        if message.tool_calls or message.function_call:
            field = "tool_calls" if message.tool_calls else "function_call"
            raise InvalidRequest("Tool calls in the history are not supported yet.",
                                 param=f"messages[{index}].{field}", code="invalid_value")
        if message.audio is not None:
            raise InvalidRequest("Audio in the history is not supported.",
                                 param=f"messages[{index}].audio", code="invalid_value")
        # 'developer' is OpenAI's newer name for the system role.
        role: Role = "system" if message.role == "developer" else message.role  # type: ignore[assignment]
        out.append(ChatMessage(role=role, content=_message_text(message, index)))
    return tuple(out)


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences.",
                             param="stop", code="invalid_value")
    if any(not s for s in stops):
        raise InvalidRequest("'stop' sequences must not be empty.", param="stop",
                             code="invalid_value")
    return tuple(stops)


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI keys logit_bias by token id as a string; the engine checks ids against the vocab."""
    pairs: list[tuple[int, float]] = []
    for key, value in (bias or {}).items():
        if not key.strip().isdigit():
            raise InvalidRequest(f"Invalid key in 'logit_bias': {key!r} is not a token id.",
                                 param="logit_bias", code="invalid_value")
        pairs.append((int(key), value))
    return tuple(sorted(pairs))


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


def to_chat_params(body: ChatCompletionRequest) -> ChatParams:
    _reject_unhonoured(body)
    if body.max_tokens is not None and body.max_completion_tokens is not None \
            and body.max_tokens != body.max_completion_tokens:
        raise InvalidRequest("Set either 'max_tokens' or 'max_completion_tokens', not both.",
                             param="max_tokens", code="invalid_value")
    return ChatParams(
        messages=_messages(body),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        stop=_stops(body.stop),
        sampling=Sampling(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            min_p=body.min_p or 0.0,
            seed=body.seed,
            presence_penalty=body.presence_penalty or 0.0,
            frequency_penalty=body.frequency_penalty or 0.0,
            repeat_penalty=body.repeat_penalty or 1.0,
            logit_bias=_logit_bias(body.logit_bias),
        ),
        n=body.n or 1,
        output=_output_format(body.response_format),
    )
