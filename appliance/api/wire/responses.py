"""The Responses API request (``POST /v1/responses``, ``/v1/responses/input_tokens``) as we
accept it, and its translation seam.

One rule decides every field (docs/compatibility.md says it per field): a field that changes
what a correct answer is, is honoured or refused with a 400 naming it; a field asking for an
optional extra this server does not produce (a reasoning summary: no model here writes one; the
outputs of built-in tools it never runs) is satisfied by its absence and accepted; hints and
bookkeeping are accepted. ``reasoning.effort`` is honoured on a model that reasons (as chat's
``reasoning_effort``) and accepted without effect on one that does not: clients such as Codex
send it to every model, and OpenAI's own non-reasoning models take it. Unknown fields are
accepted and logged (validation.py), as everywhere. ``translate`` is where the body becomes a
``ResponseAsk``: everything the route needs except the history it continues, which lives in the
store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.api.wire.image_input import ImageKey
from appliance.api.wire.reasoning import SPEC_EFFORTS
from appliance.api.wire.responses_input import Sourced, Unseal, history, input_items
from appliance.api.wire.responses_tools import OfferedTools, offered_tools
from appliance.engines.base import (
    ChatParams,
    ImageInput,
    OutputFormat,
    ReasoningEffort,
    Sampling,
)
from appliance.errors import InvalidRequest

JSON = dict[str, Any]
Truncation = Literal["auto", "disabled"]
# The spec's IncludeEnum. Logprobs and the reasoning's encrypted_content are honoured; the
# others are outputs of built-in tools, never run here.
INCLUDABLE = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url",
    "code_interpreter_call.outputs", "reasoning.encrypted_content",
    "message.output_text.logprobs"})
LOGPROBS = "message.output_text.logprobs"
ENCRYPTED_REASONING = "reasoning.encrypted_content"
_SUMMARIES = ("auto", "concise", "detailed")
_FORMAT_NAME_CHARS = 64


class ResponseText(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ReasoningParam(BaseModel):
    model_config = ConfigDict(extra="allow")
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ConversationRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Annotated[str, Field(min_length=1)]


class ResponseStreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_obfuscation: bool | None = None


class ResponseInputs(BaseModel):
    """What both create and input_tokens take: the fields that make the prompt."""

    model_config = ConfigDict(extra="allow")
    model: Annotated[str, Field(min_length=1)]
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: ResponseText | None = None
    reasoning: ReasoningParam | None = None
    truncation: Truncation | None = None
    previous_response_id: Annotated[str, Field(min_length=1)] | None = None
    conversation: Annotated[str, Field(min_length=1)] | ConversationRef | None = None


class CreateResponseRequest(ResponseInputs):
    max_output_tokens: Annotated[int, Field(ge=16)] | None = None  # OpenAI's minimum
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    include: list[str] | None = None
    stream: bool | None = None
    stream_options: ResponseStreamOptions | None = None
    store: bool | None = None
    background: bool | None = None
    metadata: dict[str, str] | None = None
    # Accepted: bookkeeping and hints (built-in tool calls are never made here).
    max_tool_calls: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = None
    # Known but not honoured: rejected by name when set.
    prompt: dict[str, Any] | None = None
    moderation: dict[str, Any] | None = None
    context_management: list[Any] | None = None


def _unsupported(param: str, why: str = "is not supported by this server") -> InvalidRequest:
    return InvalidRequest(f"The parameter '{param}' {why}.", param=param,
                          code="unsupported_parameter")


def output_format(text: ResponseText | None) -> OutputFormat | None:
    """``text.format``: text (no constraint), json_object, or json_schema (enforced by the
    engine's grammar; ``strict`` refuses a schema it cannot fully enforce, as chat)."""
    if text is not None and text.verbosity not in (None, "medium"):
        raise _unsupported("text.verbosity", "other than 'medium' is not supported by this "
                           "server")
    form = text.format if text is not None else None
    if form is None or form.get("type") == "text":
        return None
    kind = form.get("type")
    if kind == "json_object":
        return OutputFormat("json_object")
    if kind != "json_schema":
        raise InvalidRequest(f"Invalid value for 'text.format.type': {kind!r}. Supported "
                             "values are: 'text', 'json_object' and 'json_schema'.",
                             param="text.format.type", code="invalid_value")
    name = form.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= _FORMAT_NAME_CHARS:
        raise InvalidRequest("Missing required parameter: 'text.format.name' (1 to 64 "
                             "characters).", param="text.format.name",
                             code="missing_required_parameter")
    schema = form.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest("Missing required parameter: 'text.format.schema' (a JSON "
                             "Schema object).", param="text.format.schema",
                             code="missing_required_parameter")
    strict = form.get("strict")
    if not isinstance(strict, bool | None):
        raise InvalidRequest("Invalid type for 'text.format.strict'.",
                             param="text.format.strict", code="invalid_type")
    return OutputFormat("json_schema", schema, bool(strict))


def _effort(reasoning: ReasoningParam | None) -> ReasoningEffort | None:
    """``reasoning.effort`` checked, as the engine knows it; summaries are accepted: no model
    here writes one, so a reasoning item's ``summary`` is always empty."""
    if reasoning is None:
        return None
    if reasoning.effort is not None and reasoning.effort not in SPEC_EFFORTS:
        raise InvalidRequest(f"Invalid value for 'reasoning.effort': {reasoning.effort!r}.",
                             param="reasoning.effort", code="invalid_value")
    for field in ("summary", "generate_summary"):
        if getattr(reasoning, field) not in (None, *_SUMMARIES):
            raise InvalidRequest(f"Invalid value for 'reasoning.{field}'.",
                                 param=f"reasoning.{field}", code="invalid_value")
    return SPEC_EFFORTS[reasoning.effort] if reasoning.effort is not None else None


def _conversation_id(body: ResponseInputs) -> str | None:
    conversation = body.conversation
    return conversation.id if isinstance(conversation, ConversationRef) else conversation


@dataclass(frozen=True)
class ResponseAsk:
    """A Responses request, translated: everything but the history it continues."""

    model: str
    items: tuple[JSON, ...]  # this turn's input items, in their stored shape (no ids yet)
    from_text: bool  # ``input`` was one string (its item's errors name ``input``)
    instructions: str | None
    tools: OfferedTools
    output: OutputFormat | None
    sampling: Sampling
    max_output_tokens: int | None
    truncation: Truncation
    previous_response_id: str | None
    conversation_id: str | None
    reasoning_effort: ReasoningEffort | None = None

    def sourced(self, earlier: Sequence[Sourced]) -> list[Sourced]:
        """The ``earlier`` items continued, then this turn's input (``input[i]`` in errors)."""
        return [*earlier, *((item, "input" if self.from_text else f"input[{index}]")
                            for index, item in enumerate(self.items))]

    def params(self, earlier: Sequence[Sourced], unseal: Unseal, *, reasons: bool,
               images: Mapping[ImageKey, ImageInput] | None = None) -> ChatParams:
        """The engine's params: the instructions, the ``earlier`` items continued, then this
        turn's input. ``earlier`` keeps its params for errors; this turn's are ``input[i]``.
        ``unseal`` opens reasoning items' encrypted_content; the effort reaches the engine only
        of a model that ``reasons`` (elsewhere it is accepted, without effect). ``images``:
        the pictures of those items, read by the route (responses_input.image_refs)."""
        messages = history(self.sourced(earlier), self.instructions, unseal, images)
        if not messages:
            raise InvalidRequest("Invalid 'input': there is nothing to respond to.",
                                 param="input", code="invalid_value")
        return ChatParams(messages=messages, max_tokens=self.max_output_tokens,
                          sampling=self.sampling, output=self.output, tools=self.tools.use,
                          reasoning_effort=self.reasoning_effort if reasons else None)


def _inputs(body: ResponseInputs, sampling: Sampling,
            max_output_tokens: int | None) -> ResponseAsk:
    if body.input is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input",
                             code="missing_required_parameter")
    if body.previous_response_id is not None and body.conversation is not None:
        raise InvalidRequest("Mutually exclusive parameters: provide either "
                             "'previous_response_id' or 'conversation', not both.",
                             param="conversation", code="invalid_value")
    effort = _effort(body.reasoning)
    return ResponseAsk(
        model=body.model,
        items=tuple(input_items(body.input)),
        from_text=isinstance(body.input, str),
        instructions=body.instructions,
        tools=offered_tools(body.tools, body.tool_choice, body.parallel_tool_calls),
        output=output_format(body.text),
        sampling=sampling,
        max_output_tokens=max_output_tokens,
        truncation=body.truncation or "disabled",
        previous_response_id=body.previous_response_id,
        conversation_id=_conversation_id(body),
        reasoning_effort=effort,
    )


def _reject_unhonoured(body: CreateResponseRequest) -> None:
    for param in ("prompt", "moderation", "context_management"):
        if getattr(body, param) is not None:
            raise _unsupported(param)
    if body.service_tier not in (None, "auto", "default"):
        raise _unsupported("service_tier", "must be 'auto' or 'default' on this server")
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is "
                             "enabled.", param="stream_options", code="invalid_value")
    for index, value in enumerate(body.include or ()):
        if value not in INCLUDABLE:
            raise InvalidRequest(f"Invalid value for 'include[{index}]': {value!r}.",
                                 param=f"include[{index}]", code="invalid_value")
    if body.background and body.store is False:
        raise InvalidRequest("Background responses are stored: 'background' needs 'store' "
                             "to be true.", param="background", code="invalid_value")


def wants_sealed_reasoning(body: CreateResponseRequest) -> bool:
    return ENCRYPTED_REASONING in (body.include or ())


def wants_logprobs(body: CreateResponseRequest) -> bool:
    return LOGPROBS in (body.include or ()) or body.top_logprobs is not None


def translate(body: CreateResponseRequest) -> ResponseAsk:
    _reject_unhonoured(body)
    logprobs = (body.top_logprobs or 0) if wants_logprobs(body) else None
    sampling = Sampling(temperature=1.0 if body.temperature is None else body.temperature,
                        top_p=1.0 if body.top_p is None else body.top_p, logprobs=logprobs)
    return _inputs(body, sampling, body.max_output_tokens)


def translate_inputs(body: ResponseInputs) -> ResponseAsk:
    """An input_tokens body: the prompt only (no sampling, no output budget)."""
    return _inputs(body, Sampling(), None)


def echoed(body: CreateResponseRequest, ask: ResponseAsk, store: bool) -> JSON:
    """The request fields a response object repeats, as OpenAI fills them in."""
    reasoning = body.reasoning
    fields: JSON = {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "max_tool_calls": body.max_tool_calls,
        "metadata": dict(body.metadata or {}),
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "conversation": {"id": ask.conversation_id} if ask.conversation_id else None,
        "reasoning": {"effort": reasoning.effort if reasoning else None,
                      "summary": (reasoning.summary or reasoning.generate_summary)
                      if reasoning else None},
        "service_tier": "default",
        "store": store,
        "background": bool(body.background),
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "top_logprobs": body.top_logprobs or 0,
        "text": {"format": (body.text.format if body.text and body.text.format else
                            {"type": "text"}), "verbosity": "medium"},
        "tool_choice": ask.tools.choice_echo,
        "tools": [dict(tool) for tool in ask.tools.echo],
        "truncation": ask.truncation,
        "safety_identifier": body.safety_identifier,
        "prompt_cache_key": body.prompt_cache_key,
    }
    if body.user is not None:
        fields["user"] = body.user  # the spec's `user` is a string, never null
    if body.prompt_cache_retention is not None:
        fields["prompt_cache_retention"] = body.prompt_cache_retention
    return fields
