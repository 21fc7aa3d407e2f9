"""OpenAI's tool fields on the wire: ``tools``, ``tool_choice``, ``parallel_tool_calls``, the
legacy ``functions`` / ``function_call``, and tool turns in the history.

Legacy functions become tools here (and the response maps back, see routes/chat.py), so the
engine knows one kind of tool. Every malformed field is a 400 naming it, as OpenAI does. Their
count and sizes were bounded before validation (generation_bounds.py); each pass here is
linear.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.engines.base import ToolCall, ToolSpec, ToolUse
from appliance.errors import InvalidRequest

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def function_spec(function: Any, where: str) -> ToolSpec:
    """One function's definition (chat's ``function`` object, a Responses function tool)."""
    if not isinstance(function, Mapping):
        raise _invalid(where, f"Missing required parameter: '{where}'.",
                       "missing_required_parameter")
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise _invalid(f"{where}.name", f"Invalid '{where}.name': a function name is 1 to 64 "
                       "letters, digits, underscores or dashes.")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise _invalid(f"{where}.description", f"Invalid type for '{where}.description'.",
                       "invalid_type")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise _invalid(f"{where}.parameters", f"Invalid type for '{where}.parameters': "
                       "expected a JSON Schema object.", "invalid_type")
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _invalid(f"{where}.strict", f"Invalid type for '{where}.strict'.", "invalid_type")
    return ToolSpec(name, description, dict(parameters or {}), bool(strict))


def _specs(tools: Sequence[Any], legacy: bool) -> tuple[ToolSpec, ...]:
    field = "functions" if legacy else "tools"
    if not tools:
        raise _invalid(field, f"Invalid '{field}': empty array. Expected an array with at "
                       "least 1 element.")
    specs: list[ToolSpec] = []
    for position, tool in enumerate(tools):
        where = f"{field}[{position}]"
        if legacy:
            specs.append(function_spec(tool, where))
            continue
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind != "function":
            raise _invalid(f"{where}.type", f"Invalid value for '{where}.type': {kind!r}. This "
                           "server supports tools of type 'function' only.")
        specs.append(function_spec(tool.get("function"), f"{where}.function"))
    seen: set[str] = set()  # one pass: a list scan per name was quadratic on the loop
    for spec in specs:
        if spec.name in seen:
            raise _invalid(field, f"Invalid '{field}': the function name "
                           f"{spec.name!r} is used twice.")
        seen.add(spec.name)
    return tuple(specs)


def _choice(raw: Any, names: Sequence[str], legacy: bool) -> str:
    param = "function_call" if legacy else "tool_choice"
    if raw is None:
        return "auto"
    if raw in ("none", "auto") or (raw == "required" and not legacy):
        return str(raw)
    named = raw.get("name") if legacy and isinstance(raw, Mapping) else None
    if not legacy and isinstance(raw, Mapping) and raw.get("type") == "function" \
            and isinstance(raw.get("function"), Mapping):
        named = raw["function"].get("name")
    if not isinstance(named, str):
        allowed = "'none', 'auto'" + ("" if legacy else ", 'required'")
        raise _invalid(param, f"Invalid value for '{param}': expected {allowed} or an object "
                       "naming a function.")
    if named not in names:
        raise _invalid(param, f"Invalid value for '{param}': no function named {named!r} was "
                       "given.")
    return named


def tool_use(tools: list[dict[str, Any]] | None, tool_choice: Any,
             parallel_tool_calls: bool | None, functions: list[dict[str, Any]] | None,
             function_call: Any) -> ToolUse | None:
    legacy = functions is not None or function_call is not None
    if legacy and (tools is not None or tool_choice is not None):
        raise _invalid("functions", "Use either 'tools' and 'tool_choice' or the deprecated "
                       "'functions' and 'function_call', not both.")
    offered = functions if legacy else tools
    choice = function_call if legacy else tool_choice
    if offered is None:
        if choice is not None:
            param = "function_call" if legacy else "tool_choice"
            needs = "functions" if legacy else "tools"
            raise _invalid(param, f"Invalid value for '{param}': '{param}' is only allowed "
                           f"when '{needs}' are specified.")
        return None
    specs = _specs(offered, legacy)
    return ToolUse(specs, _choice(choice, [s.name for s in specs], legacy),
                   parallel=False if legacy else parallel_tool_calls is not False)


def history_calls(raw_calls: Sequence[Any], where: str) -> tuple[ToolCall, ...]:
    """An assistant turn's ``tool_calls`` as the client sent them back."""
    calls: list[ToolCall] = []
    for position, raw in enumerate(raw_calls):
        at = f"{where}[{position}]"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
            raise _invalid(f"{at}.id", f"Missing required parameter: '{at}.id'.",
                           "missing_required_parameter")
        function = raw.get("function")
        if raw.get("type", "function") != "function" or not isinstance(function, Mapping):
            raise _invalid(f"{at}.function", f"Invalid '{at}': expected a function call.")
        name, arguments = function.get("name"), function.get("arguments")
        if not isinstance(name, str) or not isinstance(arguments, str):
            raise _invalid(f"{at}.function", f"Invalid '{at}.function': 'name' and "
                           "'arguments' must be strings.")
        calls.append(ToolCall(raw["id"], name, arguments))
    return tuple(calls)


def legacy_call(raw: Any, where: str, call_id: str) -> ToolCall:
    """An assistant turn's deprecated ``function_call``, given an id so it pairs as a tool."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) \
            or not isinstance(raw.get("arguments", "{}"), str):
        raise _invalid(where, f"Invalid '{where}': 'name' and 'arguments' must be strings.")
    return ToolCall(call_id, raw["name"], raw.get("arguments", "{}"))
