"""Reading tool calls out of a model's text as it streams.

Text before a dialect's start marker is content. After the marker comes JSON: one call object
or an array of them, each ``{"name": ..., "arguments"|"parameters": {...}}``. The parser walks
it character by character so a call's id and name go out as soon as the name is complete and
its arguments then go out fragment by fragment, the way OpenAI streams tool calls. A block
that turns out not to be JSON is given back as content, never dropped.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from appliance.engines.base import TextDelta, ToolCallDelta
from appliance.engines.llm.tool_dialects import ToolDialect

ParsedEvent = TextDelta | ToolCallDelta
ARGUMENT_KEYS = ("arguments", "parameters")
T = TypeVar("T")


def new_call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)


@dataclass
class _Call:
    """The call object being read: its keys at the top level and what was sent of it."""

    name: str | None = None
    announced: bool = False
    key: str | None = None
    expecting: str = "key"  # key | colon | value | comma
    reading_key: bool = False
    key_raw: list[str] = field(default_factory=list)
    value_raw: list[str] = field(default_factory=list)
    value_streamed: bool = False  # the arguments object is going out as it is read
    value_done: bool = False  # the current value's container or string has closed
    held_arguments: list[str] = field(default_factory=list)  # read before it was announced
    arguments: list[str] = field(default_factory=list)  # all of its arguments' text
    has_arguments: bool = False
    # Its name was called before: it is held until complete, and dropped if it repeats an
    # earlier call exactly (a small model may loop on one call; a repeat can add nothing).
    deferred: bool = False


class ToolCallParser:
    def __init__(self, dialect: ToolDialect, index: int = 0,
                 make_id: Callable[[], str] = new_call_id):
        self._dialect = dialect
        self._index = index
        self._make_id = make_id
        self._state = "text"  # text | before_json | json | after_json
        self._held = ""  # text that may be the start of a marker, or of the end marker
        self._block_raw: list[str] = []  # the current block's text, given back if not JSON
        self._pending_space = ""  # whitespace-only content, sent once real text follows
        self._stack: list[str] = []
        self._in_string = False
        self._escaped = False
        self._call_depth = 1
        self._call: _Call | None = None
        self._calls_before_block = 0
        self._out: list[ParsedEvent] = []
        self.calls = 0
        self.done = False  # a repeated call was seen: the rest of the output is ignored
        self._made: set[tuple[str, str]] = set()  # (name, arguments) of the calls so far

    # -- public ---------------------------------------------------------------------------

    def feed(self, text: str) -> list[ParsedEvent]:
        if self.done:
            return []
        for char in text:
            if self.done:
                break
            self._char(char)
        if self._state == "text":
            self._release_text(final=False)
        return self._take()

    def finish(self) -> list[ParsedEvent]:
        """Generation ended: held text goes out; a half-read block stays as it was sent."""
        if self.done:
            return self._take()
        if self._state == "text":
            self._release_text(final=True)
        elif self._state in ("before_json", "json") and self._call is None and not self._stack:
            self._give_back_block()
        if self._state == "after_json":
            self._held = ""
        if self.calls == 0 and self._pending_space:
            self._out.append(TextDelta(self._pending_space, self._index))
        self._pending_space = ""
        return self._take()

    # -- text outside calls ---------------------------------------------------------------

    def _char(self, char: str) -> None:
        if self._state == "text":
            self._held += char
            if self._held.endswith(self._dialect.start):
                before = self._held[: -len(self._dialect.start)]
                self._content(before)
                self._held = ""
                self._open_block()
            return
        self._block_raw.append(char)
        if self._state == "before_json":
            if char.isspace():
                return
            if char not in "{[":
                self._give_back_block()
                return
            self._state = "json"
            self._call_depth = 1 if char == "{" else 2
        if self._state == "json":
            self._json_char(char)
        elif self._state == "after_json":
            self._after_json_char(char)

    def _open_block(self) -> None:
        self._block_raw = [self._dialect.start]
        self._stack = []
        self._in_string = False
        self._escaped = False
        self._call = None
        self._calls_before_block = self.calls
        self._state = "before_json"
        if self._dialect.marker_in_payload:  # the marker was the JSON's start: read it as JSON
            for char in self._dialect.start:
                self._char(char)
            self._block_raw = list(self._dialect.start)

    def _release_text(self, final: bool) -> None:
        markers = (self._dialect.start, *self._dialect.noise)
        keep = 0 if final else max(_partial_suffix(self._held, m) for m in markers)
        ready = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep:]
        self._content(ready)

    def _content(self, text: str) -> None:
        """Content goes out at once, except trailing whitespace: it waits for more text, and
        is dropped if a tool call comes next (so the text reads the same however it streams)."""
        for noise in self._dialect.noise:
            text = text.replace(noise, "")
        text = self._pending_space + text
        body = text.rstrip()
        self._pending_space = text[len(body):]
        if body:
            self._out.append(TextDelta(body, self._index))

    def _give_back_block(self) -> None:
        """What followed the marker is not a call: it was content after all."""
        raw = "".join(self._block_raw)
        self._block_raw = []
        self._state = "text"
        self._stack = []
        self._call = None
        self._held = ""
        self._content(raw)

    def _after_json_char(self, char: str) -> None:
        end = self._dialect.end
        self._held += char
        stripped = self._held.lstrip()
        if not stripped:
            return
        if end and end.startswith(stripped):
            if stripped == end:
                self._close_block()
            return
        if stripped.startswith(";"):  # Llama 3 separates calls with ';'
            self._close_block()
            return
        self._close_block()
        for again in stripped:  # not a closing marker: text (or a new block) follows
            self._char(again)

    def _close_block(self) -> None:
        self._state = "text"
        self._held = ""
        self._block_raw = []

    # -- the JSON of a block --------------------------------------------------------------

    def _json_char(self, char: str) -> None:
        depth_before = len(self._stack)
        call = self._call
        at_call_level = call is not None and depth_before == self._call_depth
        if self._in_string:
            self._string_char(char, call, at_call_level)
            return
        if char == '"':
            self._in_string = True
            if at_call_level and call is not None:
                if call.expecting == "key":
                    call.reading_key = True
                    call.key_raw = [char]
                    return
                self._begin_value(call, char)
                return
            self._value_char(call, char)
            return
        if char in "{[":
            self._stack.append(char)
            if len(self._stack) == self._call_depth and char == "{":
                self._call = _Call()
                return
            if at_call_level and call is not None and call.expecting == "value":
                self._begin_value(call, char)
                return
            self._value_char(call, char)
            return
        if char in "}]":
            if not self._stack:
                self._give_back_block()
                return
            self._stack.pop()
            if call is not None and depth_before == self._call_depth:
                if call.expecting == "value_or_end" or call.value_raw:
                    self._end_value(call)
                self._end_call(call)
                self._call = None
                if self.done:
                    return
            elif call is not None and depth_before == self._call_depth + 1:
                self._value_char(call, char)
                call.value_done = True
            else:
                self._value_char(call, char)
            if not self._stack:
                if self.calls == self._calls_before_block:
                    self._give_back_block()  # JSON, but no call in it: it was content
                    return
                self._state = "after_json"
                self._held = ""
            return
        if at_call_level and call is not None:
            if char == ":" and call.expecting == "colon":
                call.expecting = "value"
            elif char == ",":
                if call.value_raw:
                    self._end_value(call)
                call.expecting = "key"
            elif char.isspace():
                pass
            elif call.expecting == "value":
                self._begin_value(call, char)
            else:
                self._value_char(call, char)
            return
        self._value_char(call, char)

    def _string_char(self, char: str, call: _Call | None, at_call_level: bool) -> None:
        if call is not None and at_call_level and call.reading_key:
            call.key_raw.append(char)
        else:
            self._value_char(call, char)
        if self._escaped:
            self._escaped = False
            return
        if char == "\\":
            self._escaped = True
            return
        if char == '"':
            self._in_string = False
            if call is not None and at_call_level:
                if call.reading_key:
                    call.reading_key = False
                    call.key = _loads_or(str, "".join(call.key_raw), "")
                    call.expecting = "colon"
                else:
                    call.value_done = True

    def _begin_value(self, call: _Call, char: str) -> None:
        call.value_raw = []
        call.value_done = False
        call.expecting = "value_or_end"
        call.value_streamed = call.key in ARGUMENT_KEYS and char == "{"
        if call.key in ARGUMENT_KEYS:
            call.has_arguments = True
        self._value_char(call, char)

    def _value_char(self, call: _Call | None, char: str) -> None:
        if call is None or call.expecting != "value_or_end" or call.value_done:
            return
        call.value_raw.append(char)
        if call.value_streamed:
            self._arguments_fragment(call, char)

    def _end_value(self, call: _Call) -> None:
        raw = "".join(call.value_raw).strip()
        call.value_raw = []
        call.expecting = "comma"
        if call.key == "name" and call.name is None:
            name = _loads_or(str, raw, None)
            if name:
                call.name = name
                call.deferred = any(made == name for made, _ in self._made)
                if not call.deferred:
                    self._announce(call)
        elif call.key in ARGUMENT_KEYS and not call.value_streamed:
            value = _loads_or(str, raw, None)
            self._arguments_fragment(call, value if value is not None else raw)

    def _end_call(self, call: _Call) -> None:
        if call.name is None:
            return  # an object without a name is not a call; nothing of it was sent
        if not call.has_arguments:
            self._arguments_fragment(call, "{}")
        made = (call.name, _canonical("".join(call.arguments)))
        if call.deferred:
            if made in self._made:
                self.done = True
                return
            self._announce(call)
        self._made.add(made)

    def _announce(self, call: _Call) -> None:
        call.announced = True
        self._out.append(ToolCallDelta(self.calls, "", self._index, self._make_id(), call.name))
        self.calls += 1
        if call.held_arguments:
            self._out.append(ToolCallDelta(self.calls - 1, "".join(call.held_arguments),
                                           self._index))
            call.held_arguments = []

    def _arguments_fragment(self, call: _Call, text: str) -> None:
        call.arguments.append(text)
        if not call.announced:
            call.held_arguments.append(text)
            return
        last = self._out[-1] if self._out else None
        if isinstance(last, ToolCallDelta) and last.id is None \
                and last.call_index == self.calls - 1:
            self._out[-1] = ToolCallDelta(last.call_index, last.arguments + text, self._index)
        else:
            self._out.append(ToolCallDelta(self.calls - 1, text, self._index))

    def _take(self) -> list[ParsedEvent]:
        out, self._out = self._out, []
        return out


def _loads_or(kind: type[T], raw: str, default: T | None) -> T | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json reads
        return default
    return value if isinstance(value, kind) else default


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except (ValueError, RecursionError):
        return arguments


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is the start of ``marker``."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0
