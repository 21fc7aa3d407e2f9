"""The Responses API's tools on the wire: function tools, ``namespace`` tools (a named group of
functions), the built-in tools this server does not run, and ``tool_choice``.

A client that merely offers a built-in tool (``web_search``, ``file_search``, ``mcp`` ...) is
not demanding it: the model may always answer without a tool. So an offered built-in is
withheld from the model, echoed in the response's ``tools``, and named (``OfferedTools.withheld``:
the route puts it in a header and the log); a ``tool_choice`` that forces one is a 400 naming
``tool_choice``. The model sees every function, a namespaced one as ``namespace.name``;
``OfferedTools.origin`` maps that name back, so a call carries its ``namespace`` as the spec
defines. ``allowed_tools`` narrows what the model is shown to the functions it lists.

Counts and sizes were bounded before validation (responses_bounds.py); each pass is linear.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from appliance.api.wire.tools import FUNCTION_NAME, function_spec
from appliance.engines.base import ToolSpec, ToolUse
from appliance.errors import InvalidRequest

JSON = dict[str, Any]
# The spec's built-in tool types: offered, they are withheld; forced, a 400.
BUILT_IN_TOOLS = frozenset({
    "file_search", "computer", "computer_use", "computer_use_preview", "web_search",
    "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11", "mcp",
    "code_interpreter", "programmatic_tool_calling", "image_generation", "local_shell", "shell",
    "custom", "tool_search", "apply_patch"})
_OPTIONS = ("none", "auto", "required")


def _invalid(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


@dataclass(frozen=True)
class OfferedTools:
    """What the request's tools and tool_choice come to."""

    use: ToolUse | None  # what the engine is given; None: no function to offer
    origins: Mapping[str, tuple[str | None, str]]  # name the model sees -> (namespace, name)
    withheld: tuple[str, ...]  # the built-in tools offered and not shown to the model
    echo: tuple[JSON, ...]  # ``tools`` as the response echoes them
    choice_echo: str | JSON  # ``tool_choice`` as the response echoes it

    def origin(self, shown: str) -> tuple[str | None, str]:
        """The namespace and name of the function the model called as ``shown``."""
        return self.origins.get(shown, (None, shown))


def shown_name(namespace: str | None, name: str) -> str:
    """The name the model sees for a function: namespaced ones as ``namespace.name``."""
    return name if namespace is None else f"{namespace}.{name}"


class _Collected:
    def __init__(self) -> None:
        self.specs: list[ToolSpec] = []
        self.origins: dict[str, tuple[str | None, str]] = {}
        self.withheld: list[str] = []
        self.echo: list[JSON] = []

    def function(self, spec: ToolSpec, namespace: str | None, where: str) -> None:
        shown = shown_name(namespace, spec.name)
        if shown in self.origins:
            raise _invalid(where, f"Invalid '{where}': the function name {shown!r} is used "
                           "twice.")
        self.origins[shown] = (namespace, spec.name)
        self.specs.append(replace(spec, name=shown))


def _function(tool: Mapping[str, Any], where: str) -> tuple[ToolSpec, JSON]:
    spec = function_spec(tool, where)
    # The spec's FunctionTool always carries parameters and strict (null when not given).
    echo: JSON = {"type": "function", "name": spec.name, "description": spec.description,
                  "parameters": tool.get("parameters"), "strict": tool.get("strict")}
    return spec, echo


def _namespace(tool: Mapping[str, Any], where: str, found: _Collected) -> None:
    name = tool.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise _invalid(f"{where}.name", f"Invalid '{where}.name': a namespace name is 1 to 64 "
                       "letters, digits, underscores or dashes.")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise _invalid(f"{where}.description", f"Invalid type for '{where}.description'.",
                       "invalid_type")
    members = tool.get("tools")
    if not isinstance(members, list) or not members:
        raise _invalid(f"{where}.tools", f"Invalid '{where}.tools': expected an array with at "
                       "least 1 tool.")
    for position, member in enumerate(members):
        at = f"{where}.tools[{position}]"
        kind = member.get("type") if isinstance(member, Mapping) else None
        if kind == "custom":
            custom = member.get("name")
            if not isinstance(custom, str) or not FUNCTION_NAME.match(custom):
                raise _invalid(f"{at}.name", f"Invalid '{at}.name': a tool name is 1 to 64 "
                               "letters, digits, underscores or dashes.")
            # Named in a response header: only such names may go there.
            found.withheld.append(shown_name(name, custom))
            continue
        if kind != "function":
            raise _invalid(f"{at}.type", f"Invalid value for '{at}.type': {kind!r}. A "
                           "namespace holds 'function' and 'custom' tools.")
        spec, _ = _function(member, at)
        if description:
            # The namespace's description is shown with each of its functions.
            spec = replace(spec, description=f"{description}\n\n{spec.description or ''}"
                           .strip())
        found.function(spec, name, at)
    found.echo.append(dict(tool))


def _collect(tools: Sequence[Any] | None) -> _Collected:
    found = _Collected()
    for position, tool in enumerate(tools or ()):
        where = f"tools[{position}]"
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind == "function":
            spec, echo = _function(tool, where)
            found.function(spec, None, where)
            found.echo.append(echo)
        elif kind == "namespace":
            _namespace(tool, where, found)
        elif isinstance(kind, str) and kind in BUILT_IN_TOOLS:
            found.withheld.append(kind)
            found.echo.append(dict(tool))
        else:
            raise _invalid(f"{where}.type", f"Invalid value for '{where}.type': {kind!r}. "
                           "Supported values are 'function', 'namespace' and OpenAI's "
                           "built-in tool types.")
    return found


def _named(choice: Mapping[str, Any], found: _Collected, param: str) -> str:
    """The shown name of the function a ``{"type": "function", ...}`` choice names."""
    name = choice.get("name")
    namespace = choice.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str | None):
        raise _invalid(param, f"Invalid value for '{param}': a function choice needs a "
                       "'name' string.")
    shown = shown_name(namespace, name)
    if shown not in found.origins:
        raise _invalid(param, f"Invalid value for '{param}': no function named {shown!r} "
                       "was given in 'tools'.")
    return shown


def _forced_built_in(kind: str, found: _Collected, param: str) -> InvalidRequest:
    offered = f" (offered and withheld: {', '.join(found.withheld)})" if found.withheld else ""
    return _invalid(param, f"Invalid value for '{param}': it forces the tool type {kind!r}, "
                    f"which this server does not run{offered}. Offer function tools instead.",
                    "unsupported_value")


def _allowed(choice: Mapping[str, Any], found: _Collected) -> tuple[str, list[ToolSpec]]:
    """``allowed_tools``: its mode, and the offered functions it lists."""
    mode = choice.get("mode")
    if mode not in ("auto", "required"):
        raise _invalid("tool_choice.mode", "Invalid value for 'tool_choice.mode': expected "
                       "'auto' or 'required'.")
    listed = choice.get("tools")
    if not isinstance(listed, list):
        raise _invalid("tool_choice.tools", "Missing required parameter: 'tool_choice.tools'.",
                       "missing_required_parameter")
    allowed: set[str] = set()
    for position, tool in enumerate(listed):
        at = f"tool_choice.tools[{position}]"
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind == "function":
            allowed.add(_named(tool, found, at))
        elif not (isinstance(kind, str) and kind in BUILT_IN_TOOLS):
            raise _invalid(f"{at}.type", f"Invalid value for '{at}.type': {kind!r}.")
    specs = [spec for spec in found.specs if spec.name in allowed]
    if mode == "required" and not specs:
        raise _forced_built_in("built-in", found, "tool_choice")
    return str(mode), specs


def offered_tools(tools: Sequence[Any] | None, tool_choice: Any,
                  parallel_tool_calls: bool | None) -> OfferedTools:
    found = _collect(tools)
    specs = found.specs
    echo_choice: str | JSON = "auto" if tool_choice is None else tool_choice
    if tool_choice is None or tool_choice in _OPTIONS:
        choice = "auto" if tool_choice is None else str(tool_choice)
        if choice == "required" and not specs:
            raise (_forced_built_in("required", found, "tool_choice") if found.withheld else
                   _invalid("tool_choice", "Invalid value for 'tool_choice': 'required' needs "
                            "at least one function in 'tools'."))
    elif isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        choice = _named(tool_choice, found, "tool_choice")
    elif isinstance(tool_choice, Mapping) and tool_choice.get("type") == "allowed_tools":
        choice, specs = _allowed(tool_choice, found)
    elif isinstance(tool_choice, Mapping) and isinstance(tool_choice.get("type"), str):
        raise _forced_built_in(str(tool_choice["type"]), found, "tool_choice")
    else:
        raise _invalid("tool_choice", "Invalid value for 'tool_choice': expected 'none', "
                       "'auto', 'required' or an object naming a function.")
    use = ToolUse(tuple(specs), choice, parallel=parallel_tool_calls is not False) \
        if specs else None
    return OfferedTools(use, dict(found.origins), tuple(found.withheld), tuple(found.echo),
                        echo_choice if isinstance(echo_choice, str) else dict(echo_choice))
