"""A response's output items, built from the engine's events, with the stream events that
build them in OpenAI's order.

Reasoning becomes a ``reasoning`` item before the answer (one ``reasoning_text`` part,
``summary: []``: these models write no summary; with ``include:
["reasoning.encrypted_content"]`` also the sealed text, reasoning_seal.py), text a ``message``
item (one ``output_text`` part, ``annotations: []``), each call a ``function_call`` item (its
``namespace`` when it came from a namespace tool). For every item:
``response.output_item.added``; for reasoning ``response.content_part.added``, the
``response.reasoning_text.delta`` events, ``.reasoning_text.done`` and ``.content_part.done``;
for a message the same with ``output_text``; for a call the
``response.function_call_arguments.delta`` events and ``.done``; then
``response.output_item.done``. A streamed and a gathered response are built by this one class,
so they cannot differ. Whitespace the model writes before a call (or after one) is no message
of its own: it is held until real text follows, and dropped if none does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from appliance.api.wire.responses_tools import OfferedTools
from appliance.engines.base import (
    ReasoningDelta,
    TextDelta,
    TokenChoice,
    TokenLogprob,
    ToolCallDelta,
)

JSON = dict[str, Any]
ItemStatus = Literal["completed", "incomplete"]
Seal = Callable[[str], str]  # reasoning text -> its encrypted_content


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _choice_json(choice: TokenChoice) -> JSON:
    return {"token": choice.token, "logprob": choice.logprob, "bytes": list(choice.bytes)}


def part_logprobs(entries: Iterable[TokenLogprob]) -> list[JSON]:
    """The spec's LogProb list of an output_text part (with bytes)."""
    return [{**_choice_json(e.chosen), "top_logprobs": [_choice_json(t) for t in e.top]}
            for e in entries]


def event_logprobs(entries: Iterable[TokenLogprob]) -> list[JSON]:
    """The spec's ResponseLogProb list of a delta or done event (no bytes)."""
    return [{"token": e.chosen.token, "logprob": e.chosen.logprob,
             "top_logprobs": [{"token": t.token, "logprob": t.logprob} for t in e.top]}
            for e in entries]


@dataclass
class _Message:
    id: str
    index: int
    texts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def part(self) -> JSON:
        return {"type": "output_text", "text": "".join(self.texts), "annotations": [],
                "logprobs": part_logprobs(self.logprobs)}

    def item(self, status: str) -> JSON:
        content = [self.part()] if status != "in_progress" else []
        return {"id": self.id, "type": "message", "status": status, "role": "assistant",
                "content": content}


@dataclass
class _Reasoning:
    id: str
    index: int
    seal: Seal | None
    texts: list[str] = field(default_factory=list)

    def part(self) -> JSON:
        return {"type": "reasoning_text", "text": "".join(self.texts)}

    def item(self, status: str) -> JSON:
        item: JSON = {"id": self.id, "type": "reasoning", "summary": [],
                      "content": [self.part()] if status != "in_progress" else [],
                      "status": status}
        if self.seal is not None and status != "in_progress":
            item["encrypted_content"] = self.seal(self.part()["text"])
        return item


@dataclass
class _Call:
    id: str
    index: int
    call_id: str
    name: str
    namespace: str | None
    arguments: list[str] = field(default_factory=list)

    def item(self, status: str) -> JSON:
        item: JSON = {"id": self.id, "type": "function_call", "status": status,
                      "arguments": "".join(self.arguments) if status != "in_progress" else "",
                      "call_id": self.call_id, "name": self.name}
        if self.namespace is not None:
            item["namespace"] = self.namespace
        return item


class OutputBuilder:
    """One response's output, fed the engine's events in order; each feed returns the stream
    events it makes (without ``sequence_number``: the stream numbers them)."""

    def __init__(self, tools: OfferedTools, seal: Seal | None = None):
        self._tools = tools
        self._seal = seal  # None: reasoning items carry no encrypted_content
        self._items: list[_Message | _Call | _Reasoning] = []
        self._done: list[JSON] = []  # the finished items, in output order
        self._open: _Message | _Call | _Reasoning | None = None
        self._calls: dict[int, _Call] = {}  # the engine's call index -> its item
        self._held: list[TextDelta] = []  # whitespace not yet known to be a message's

    @property
    def output(self) -> list[JSON]:
        return list(self._done)

    def text(self, delta: TextDelta) -> list[JSON]:
        if not isinstance(self._open, _Message):
            if not delta.text.strip():  # what is held is whitespace too
                self._held.append(delta)
                return []
            events = self._close("completed")
            events += self._open_message()
            held, self._held = self._held, []
            return events + self._write([*held, delta])
        return self._write([delta])

    def reasoning(self, delta: ReasoningDelta) -> list[JSON]:
        if not delta.text:
            return []
        events: list[JSON] = []
        if not isinstance(self._open, _Reasoning):
            events += self._close("completed")
            item = _Reasoning(new_id("rs"), len(self._items), self._seal)
            self._items.append(item)
            self._open = item
            events += [{"type": "response.output_item.added", "output_index": item.index,
                        "item": item.item("in_progress")},
                       {"type": "response.content_part.added", "item_id": item.id,
                        "output_index": item.index, "content_index": 0,
                        "part": {"type": "reasoning_text", "text": ""}}]
        reasoning = self._open
        assert isinstance(reasoning, _Reasoning)
        reasoning.texts.append(delta.text)
        return [*events, {"type": "response.reasoning_text.delta", "item_id": reasoning.id,
                          "output_index": reasoning.index, "content_index": 0,
                          "delta": delta.text}]

    def call(self, delta: ToolCallDelta) -> list[JSON]:
        if delta.id is not None:
            self._held = []  # whitespace before a call is no message
            events = self._close("completed")
            namespace, name = self._tools.origin(delta.name or "")
            call = _Call(new_id("fc"), len(self._items), delta.id, name, namespace)
            self._items.append(call)
            self._calls[delta.call_index] = call
            self._open = call
            events.append({"type": "response.output_item.added", "output_index": call.index,
                           "item": call.item("in_progress")})
            if not delta.arguments:
                return events
            return events + self._arguments(call, delta.arguments)
        known = self._calls.get(delta.call_index)
        if known is None or known is not self._open or not delta.arguments:
            return []  # the engine's parser sends each call whole before the next
        return self._arguments(known, delta.arguments)

    def finish(self, status: ItemStatus) -> list[JSON]:
        """Closes the open item; a reply with no answer at all (no message, no call: maybe
        only reasoning) ends with one message (maybe empty)."""
        events = self._close(status)
        if not any(isinstance(item, _Message | _Call) for item in self._items):
            events += self._open_message()
            held, self._held = self._held, []
            events += self._write(held) if held else []
            events += self._close(status)
        return events

    def stop(self) -> list[JSON]:
        """Closes the open item as incomplete: work stopped from outside (a cancel, a
        failure, the shutdown cut) keeps what it made, as its usage is charged."""
        self._held = []
        return self._close("incomplete")

    def _open_message(self) -> list[JSON]:
        message = _Message(new_id("msg"), len(self._items))
        self._items.append(message)
        self._open = message
        return [{"type": "response.output_item.added", "output_index": message.index,
                 "item": message.item("in_progress")},
                {"type": "response.content_part.added", "item_id": message.id,
                 "output_index": message.index, "content_index": 0,
                 "part": {"type": "output_text", "text": "", "annotations": [],
                          "logprobs": []}}]

    def _write(self, deltas: list[TextDelta]) -> list[JSON]:
        message = self._open
        assert isinstance(message, _Message)
        text = "".join(d.text for d in deltas)
        logprobs = [entry for d in deltas for entry in d.logprobs]
        if not text and not logprobs:
            return []
        message.texts.append(text)
        message.logprobs.extend(logprobs)
        return [{"type": "response.output_text.delta", "item_id": message.id,
                 "output_index": message.index, "content_index": 0, "delta": text,
                 "logprobs": event_logprobs(logprobs)}]

    def _arguments(self, call: _Call, fragment: str) -> list[JSON]:
        call.arguments.append(fragment)
        return [{"type": "response.function_call_arguments.delta", "item_id": call.id,
                 "output_index": call.index, "delta": fragment}]

    def _close(self, status: ItemStatus) -> list[JSON]:
        item, self._open = self._open, None
        if item is None:
            return []
        done = item.item(status)
        self._done.append(done)
        if isinstance(item, _Reasoning):
            part = done["content"][0]
            return [{"type": "response.reasoning_text.done", "item_id": item.id,
                     "output_index": item.index, "content_index": 0, "text": part["text"]},
                    {"type": "response.content_part.done", "item_id": item.id,
                     "output_index": item.index, "content_index": 0, "part": part},
                    {"type": "response.output_item.done", "output_index": item.index,
                     "item": done}]
        if isinstance(item, _Message):
            part = item.part()
            return [{"type": "response.output_text.done", "item_id": item.id,
                     "output_index": item.index, "content_index": 0, "text": part["text"],
                     "logprobs": event_logprobs(item.logprobs)},
                    {"type": "response.content_part.done", "item_id": item.id,
                     "output_index": item.index, "content_index": 0, "part": part},
                    {"type": "response.output_item.done", "output_index": item.index,
                     "item": done}]
        return [{"type": "response.function_call_arguments.done", "item_id": item.id,
                 "output_index": item.index, "name": item.name, "arguments": done["arguments"]},
                {"type": "response.output_item.done", "output_index": item.index,
                 "item": done}]


def _event_entries(part: JSON) -> list[JSON]:
    """A stored part's logprobs (with bytes) as an event carries them (without)."""
    return [{"token": e["token"], "logprob": e["logprob"],
             "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]}
                              for t in e.get("top_logprobs", [])]}
            for e in part.get("logprobs", []) if isinstance(e, dict)]


def _reasoning_events(index: int, item: JSON) -> list[JSON]:
    events: list[JSON] = [{"type": "response.output_item.added", "output_index": index,
                           "item": {k: v for k, v in {**item, "status": "in_progress",
                                                      "content": []}.items()
                                    if k != "encrypted_content"}}]
    for at, part in enumerate(item.get("content", [])):
        where = {"item_id": item["id"], "output_index": index, "content_index": at}
        events += [{"type": "response.content_part.added", **where,
                    "part": {"type": "reasoning_text", "text": ""}},
                   {"type": "response.reasoning_text.delta", **where, "delta": part["text"]},
                   {"type": "response.reasoning_text.done", **where, "text": part["text"]},
                   {"type": "response.content_part.done", **where, "part": part}]
    events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events


def _item_events(index: int, item: JSON) -> list[JSON]:
    if item.get("type") == "reasoning":
        return _reasoning_events(index, item)
    if item.get("type") == "function_call":
        return [{"type": "response.output_item.added", "output_index": index,
                 "item": {**item, "status": "in_progress", "arguments": ""}},
                {"type": "response.function_call_arguments.delta", "item_id": item["id"],
                 "output_index": index, "delta": item["arguments"]},
                {"type": "response.function_call_arguments.done", "item_id": item["id"],
                 "output_index": index, "name": item["name"], "arguments": item["arguments"]},
                {"type": "response.output_item.done", "output_index": index, "item": item}]
    events: list[JSON] = [{"type": "response.output_item.added", "output_index": index,
                           "item": {**item, "status": "in_progress", "content": []}}]
    for at, part in enumerate(item.get("content", [])):
        where = {"item_id": item["id"], "output_index": index, "content_index": at}
        events += [{"type": "response.content_part.added", **where,
                    "part": {**part, "text": "", "logprobs": []}},
                   {"type": "response.output_text.delta", **where, "delta": part["text"],
                    "logprobs": _event_entries(part)},
                   {"type": "response.output_text.done", **where, "text": part["text"],
                    "logprobs": _event_entries(part)},
                   {"type": "response.content_part.done", **where, "part": part}]
    events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events


def replayed_events(body: JSON, ending: str) -> list[JSON]:
    """The events of a finished response rebuilt from its stored body, one delta per part:
    what a late stream of a background response gets once its own frames are gone."""
    start = {**body, "status": "in_progress", "output": [], "completed_at": None,
             "error": None, "incomplete_details": None}
    start.pop("usage", None)
    events: list[JSON] = [{"type": "response.created", "response": start},
                          {"type": "response.in_progress", "response": start}]
    for index, item in enumerate(body.get("output", [])):
        events += _item_events(index, item)
    events.append({"type": ending, "response": body})
    return events
