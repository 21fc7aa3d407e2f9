"""Chat templates: turning messages into the prompt text a model was trained on.

The template is the GGUF's own Jinja ``tokenizer.chat_template`` unless models.toml overrides
it (a base model such as Gemma 3 270M ships none). Rendering runs in Jinja's sandbox, with the
helpers Hugging Face templates expect (``raise_exception``, ``strftime_now``, a ``tojson`` that
does not HTML-escape).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from appliance.engines.base import CancelToken, ChatMessage
from appliance.errors import ConfigError, InvalidRequest

# Variables the engine itself gives every template: chat_template_kwargs cannot replace them.
RESERVED_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token",
                                "eos_token"})


class TemplateRaised(Exception):
    """The template itself refused the conversation (e.g. roles out of order)."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class _Messages(list[dict[str, Any]]):
    """The messages as the template reads them; a loop over them stops at the next message
    once the request is cancelled (a client that left stops its prompt being rendered)."""

    def __init__(self, messages: list[dict[str, Any]], cancel: CancelToken):
        super().__init__(messages)
        self._cancel = cancel

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for message in super().__iter__():
            self._cancel.check()
            yield message


class ChatTemplate:
    def __init__(self, source: str, bos_token: str, eos_token: str, model_id: str):
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except TemplateError as exc:
            raise ConfigError(f"model {model_id!r}: chat_template does not compile: {exc}") from exc
        self._bos = bos_token
        self._eos = eos_token
        self._model_id = model_id

    def render(self, messages: Sequence[ChatMessage],
               tools: list[dict[str, Any]] | None = None,
               cancel: CancelToken | None = None,
               variables: Mapping[str, Any] | None = None) -> str:
        """The prompt; ``tools`` (OpenAI's request shape) only for templates that use them;
        ``variables``: more for the template (chat_template_kwargs, reasoning_effort,
        enable_thinking), never one of RESERVED_VARIABLES (InvalidRequest naming
        chat_template_kwargs). Raises Cancelled (base.py) if ``cancel`` is set while the
        messages are rendered."""
        extra: dict[str, Any] = dict(variables or {})
        reserved = sorted(RESERVED_VARIABLES.intersection(extra))
        if reserved:
            raise InvalidRequest(
                f"chat_template_kwargs may not set {', '.join(reserved)}: the server sets "
                "those itself.", param="chat_template_kwargs")
        if tools is not None:
            extra["tools"] = tools
        shown = [_message_json(m) for m in messages]
        try:
            return self._template.render(
                messages=shown if cancel is None else _Messages(shown, cancel),
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
                **extra,
            )
        except TemplateRaised as exc:
            raise InvalidRequest(
                f"The model's chat template rejected these messages: {exc}", param="messages"
            ) from None
        except TemplateError as exc:
            raise InvalidRequest(
                f"The model's chat template could not render these messages: {exc}",
                param="messages",
            ) from None


def _message_json(message: ChatMessage) -> dict[str, Any]:
    """A message as Hugging Face templates read it; tool call arguments as parsed JSON,
    which is what those templates dump back into the prompt."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [{"id": call.id, "type": "function",
                              "function": {"name": call.name,
                                           "arguments": arguments_value(call.arguments)}}
                             for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    if message.reasoning is not None:
        # Qwen3's and DeepSeek's templates read reasoning_content, gpt-oss's thinking; each
        # keeps or drops it as its model was trained (Qwen3 drops thinking of past turns).
        out["reasoning_content"] = message.reasoning
        out["thinking"] = message.reasoning
    return out


def arguments_value(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json reads
        return arguments
