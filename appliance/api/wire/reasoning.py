"""Reasoning on the chat-completions wire: what a request says about a reasoning model's
thinking, and the fields a reply carries it in.

In a request: ``reasoning_effort`` (OpenAI's five values this server knows; anything else a
400 naming it; on a model that does not reason a 400 ``unsupported_parameter``, as OpenAI
answers), ``chat_template_kwargs`` (the llama-server/vLLM extension: variables for the chat
template, bounded here before any work; ``enable_thinking: false`` there means effort
``none`` on a model with a ``think`` format), and the reasoning a client hands back on an
assistant message under any of the three names clients use for it.

In a reply: the thinking goes under ``reasoning_content``, ``reasoning`` or both, as the
server's ``reasoning_field`` says (``ReasoningField`` in config.py says who reads which).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from appliance.api.bounds import RequestBounds
from appliance.config import ReasoningField
from appliance.engines.base import REASONING_EFFORTS, ReasoningEffort
from appliance.errors import InvalidRequest

# What an assistant message given back may call its reasoning: DeepSeek's API and
# llama-server send ``reasoning_content``, vLLM and Ollama ``reasoning``, some UIs ``thinking``.
GIVEN_REASONING_NAMES = ("reasoning_content", "reasoning", "thinking")
# Variables the template already takes from the request itself: set through
# chat_template_kwargs they would replace the conversation, its tools or its special tokens.
RESERVED_TEMPLATE_NAMES = frozenset({"messages", "tools", "add_generation_prompt",
                                     "bos_token", "eos_token"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_THINKING_OFF: tuple[ReasoningEffort, ...] = ("none", "minimal")
# The spec's efforts (its ReasoningEffort, shared by chat and responses), as the engine knows
# them: past "high" there is no larger budget, so xhigh and max think as high does.
SPEC_EFFORTS: Mapping[str, ReasoningEffort] = MappingProxyType({
    **{effort: effort for effort in REASONING_EFFORTS}, "xhigh": "high", "max": "high"})


def reasoning_effort(value: str | None, thinks: str | None,
                     param: str = "reasoning_effort") -> ReasoningEffort | None:
    """The effort asked for, checked against the values known and the model asked, whose
    reasoning format is ``thinks`` (ModelInfo.reasoning; None: it does not reason)."""
    if value is None:
        return None
    effort = SPEC_EFFORTS.get(value) if isinstance(value, str) else None
    if effort is None:
        raise InvalidRequest(
            f"Invalid value for '{param}': {str(value)[:64]!r}. Supported values are: "
            f"{', '.join(repr(e) for e in SPEC_EFFORTS)}.", param=param,
            code="invalid_value")
    if thinks is None:
        raise InvalidRequest(f"Unsupported parameter: '{param}' is not supported with this "
                             "model.", param=param, code="unsupported_parameter")
    return effort


def _bad_kwarg(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {why}.", param=param, code="invalid_value")


def _check_scalar(value: Any, param: str, bounds: RequestBounds) -> None:
    if isinstance(value, str):
        if len(value) > bounds.max_template_kwarg_value_chars:
            raise InvalidRequest(
                f"Invalid '{param}': a string of {len(value)} characters; this server allows "
                f"at most {bounds.max_template_kwarg_value_chars}.", param=param,
                code="string_above_max_length")
    elif not (value is None or isinstance(value, bool | int | float)):
        raise _bad_kwarg(param, "expected a string, number, boolean, null or a flat list of "
                         "them")


def check_template_kwargs(kwargs: Any, bounds: RequestBounds) -> None:
    """chat_template_kwargs' bounds and shape, on the parsed JSON before validation: at most
    ``max_template_kwargs`` identifier names, each value a JSON scalar or a flat list of them.
    Every check reads only what its bound allows, so nesting or size costs nothing here. A
    value that is not an object is left for validation to name."""
    param = "chat_template_kwargs"
    if not isinstance(kwargs, Mapping):
        return
    if len(kwargs) > bounds.max_template_kwargs:
        raise InvalidRequest(f"Invalid '{param}': {len(kwargs)} names; this server allows at "
                             f"most {bounds.max_template_kwargs}.", param=param,
                             code="invalid_value")
    for name, value in kwargs.items():
        if len(name) > bounds.max_template_kwarg_name_chars:
            raise InvalidRequest(
                f"Invalid '{param}': a name of {len(name)} characters; this server allows at "
                f"most {bounds.max_template_kwarg_name_chars}.", param=param,
                code="string_above_max_length")
        where = f"{param}.{name}"
        if not _IDENTIFIER.fullmatch(name):
            raise _bad_kwarg(param, f"{name!r} is not an identifier (letters, digits and _)")
        if name in RESERVED_TEMPLATE_NAMES:
            raise _bad_kwarg(where, "the template takes it from the request itself "
                             f"(reserved: {', '.join(sorted(RESERVED_TEMPLATE_NAMES))})")
        if isinstance(value, list):
            if len(value) > bounds.max_template_kwarg_items:
                raise InvalidRequest(
                    f"Invalid '{where}': a list of {len(value)} items; this server allows at "
                    f"most {bounds.max_template_kwarg_items}.", param=where,
                    code="invalid_value")
            for index, item in enumerate(value):
                _check_scalar(item, f"{where}[{index}]", bounds)
        else:
            _check_scalar(value, where, bounds)


def effort_with_template(effort: ReasoningEffort | None, kwargs: Mapping[str, Any],
                         thinks: str | None) -> ReasoningEffort | None:
    """``enable_thinking`` (Qwen3's template variable, which clients send through
    chat_template_kwargs) read as the effort it means on a model with a think format: false is
    effort ``none``. An effort that says the opposite is refused rather than one of the two
    silently winning."""
    enable = kwargs.get("enable_thinking")
    if not isinstance(enable, bool) or thinks != "think":
        return effort
    if effort is None:
        return None if enable else "none"
    if enable == (effort in _THINKING_OFF):
        raise InvalidRequest(
            f"'reasoning_effort' {effort!r} contradicts 'chat_template_kwargs.enable_thinking' "
            f"{str(enable).lower()}; send one of them.", param="reasoning_effort",
            code="invalid_value")
    return effort


def given_reasoning(message: Mapping[str, Any], role: str, where: str) -> str | None:
    """The reasoning an assistant message hands back, under whichever name it uses; the same
    text under two names (a reply echoed as received with ``reasoning_field = "both"``) is
    one reasoning."""
    found: str | None = None
    for name in GIVEN_REASONING_NAMES:
        value = message.get(name)
        if value is None:
            continue
        param = f"{where}.{name}"
        if role != "assistant":
            raise InvalidRequest(f"Only assistant messages carry '{name}'.", param=param,
                                 code="invalid_value")
        if not isinstance(value, str):
            raise InvalidRequest(f"Invalid type for '{param}': expected a string.",
                                 param=param, code="invalid_type")
        if found is not None and value != found:
            raise InvalidRequest(f"'{param}' differs from the reasoning given under another "
                                 "name in the same message; send one.", param=param,
                                 code="invalid_value")
        found = value
    return found or None


def reasoning_fields(text: str, convention: ReasoningField) -> dict[str, str]:
    """The reply's reasoning under the field(s) the server's convention names."""
    if convention == "both":
        return {"reasoning_content": text, "reasoning": text}
    return {convention: text}
