"""Tool calls read out of streamed model text, for every dialect, however the text is split."""

from __future__ import annotations

import itertools
import json

import pytest

from appliance.engines.base import (
    ChatMessage,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    ToolUse,
)
from appliance.engines.llm.tool_dialects import (
    HERMES,
    HERMES_LIST,
    LLAMA3,
    MISTRAL,
    ToolDialect,
    detect,
    rewrite_for_prompt,
)
from appliance.engines.llm.tool_grammar import MAX_PARALLEL_CALLS, tool_call_grammar
from appliance.engines.llm.tool_parser import ToolCallParser
from appliance.errors import InvalidRequest

Parsed = tuple[str, list[tuple[str, str]]]


def parse(dialect: ToolDialect, text: str, step: int) -> tuple[Parsed, list[object]]:
    ids = (f"call_{i}" for i in itertools.count())
    parser = ToolCallParser(dialect, make_id=lambda: next(ids))
    events: list[object] = []
    for at in range(0, len(text), step):
        events += parser.feed(text[at:at + step])
    events += parser.finish()
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls: dict[int, list[str]] = {}
    for event in events:
        if isinstance(event, ToolCallDelta):
            if event.id is not None:
                assert event.id == f"call_{event.call_index}" and event.arguments == ""
                calls[event.call_index] = [event.name or "", ""]
            calls[event.call_index][1] += event.arguments
    return (content, [(name, args) for name, args in calls.values()]), events


CASES: list[tuple[ToolDialect, str, Parsed]] = [
    (HERMES, 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
     '"n": [1, {"a": "}"}]}}\n</tool_call>\n<tool_call>{"name":"b","arguments":{}}</tool_call>',
     ("Sure.", [("get_weather", '{"city": "Paris", "n": [1, {"a": "}"}]}'), ("b", "{}")])),
    (HERMES, "Hello <b>world</b> <tool_ca", ("Hello <b>world</b> <tool_ca", [])),
    (HERMES_LIST, '<tool_call>[{"name": "x", "arguments": "{\\"q\\": 1}"}, '
     '{"arguments": {"z": true}, "name": "y"}]</tool_call>',
     ("", [("x", '{"q": 1}'), ("y", '{"z": true}')])),
    (HERMES, '<tool_call>{"foo": 1}</tool_call> hi', ('<tool_call>{"foo": 1}</tool_call> hi', [])),
    (HERMES, "<tool_call>oops, not JSON", ("<tool_call>oops, not JSON", [])),
    (HERMES, '<tool_call>{"name": "now"}</tool_call>', ("", [("now", "{}")])),
    (MISTRAL, '[TOOL_CALLS][{"name": "x", "arguments": {"a": 1}}, {"name": "y", "arguments": '
     '{"b": 2}}]', ("", [("x", '{"a": 1}'), ("y", '{"b": 2}')])),
    (LLAMA3, '<|python_tag|>{"name": "x", "parameters": {"a": 1}}; {"name": "y", '
     '"parameters": {"b": -2.5}}', ("", [("x", '{"a": 1}'), ("y", '{"b": -2.5}')])),
    (HERMES, '<tool_call>\n{"name": "x", "arguments": {"a": "cut', ("", [("x", '{"a": "cut')])),
    (HERMES, "\n\n  Plain answer.\n", ("\n\n  Plain answer.\n", [])),
]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize(("dialect", "text", "expected"), CASES)
def test_calls_and_content_do_not_depend_on_chunking(dialect: ToolDialect, text: str,
                                                     expected: Parsed, step: int) -> None:
    assert parse(dialect, text, step)[0] == expected


def test_arguments_stream_in_fragments_after_the_name() -> None:
    _, events = parse(HERMES, '<tool_call>{"name": "f", "arguments": {"text": "abcdef"}}'
                      "</tool_call>", 4)
    pieces = [e for e in events if isinstance(e, ToolCallDelta)]
    assert pieces[0].name == "f" and pieces[0].id is not None
    assert len(pieces) > 3 and all(p.id is None for p in pieces[1:])


def test_an_exact_repeat_ends_the_reply() -> None:
    text = ('<tool_call>{"name":"a","arguments":{"x":1}}</tool_call>'
            '<tool_call>{"name":"a","arguments":{"x":2}}</tool_call>'
            '<tool_call>{"name":"a","arguments":{ "x": 1 }}</tool_call>'
            '<tool_call>{"name":"b","arguments":{}}</tool_call>')
    for step in (1, 5, 1000):
        counter = itertools.count()
        parser = ToolCallParser(HERMES, make_id=lambda c=counter: f"call_{next(c)}")
        events = [e for at in range(0, len(text), step) for e in parser.feed(text[at:at + step])]
        assert parser.done
        names = [e.name for e in events if isinstance(e, ToolCallDelta) and e.name]
        assert names == ["a", "a"]


@pytest.mark.parametrize(("source", "dialect", "native"), [
    ("{% for m in messages %}{{ m.content }}{% endfor %}", HERMES_LIST, False),
    ("{% if tools %}<tool_call>{% endif %}", HERMES, True),
    ("{% if tools %}[TOOL_CALLS]{% endif %}", MISTRAL, True),
    ("{% if tools %}<|python_tag|>{% endif %}", LLAMA3, True),
])
def test_dialect_is_read_off_the_template(source: str, dialect: ToolDialect,
                                          native: bool) -> None:
    support = detect(source)
    assert (support.dialect, support.native) == (dialect, native)


def test_history_is_rewritten_for_templates_without_tools() -> None:
    use = ToolUse((ToolSpec("get_weather", "Weather", {"type": "object"}),), "required")
    messages = (ChatMessage("user", "Weather?"),
                ChatMessage("assistant", "", (ToolCall("c1", "get_weather", '{"city": "Oslo"}'),
                                              ToolCall("c2", "get_weather", '{"city": "Rome"}'))),
                ChatMessage("tool", "cold", tool_call_id="c1", name="get_weather"),
                ChatMessage("tool", "warm", tool_call_id="c2", name="get_weather"))
    out = rewrite_for_prompt(messages, use, HERMES_LIST)
    assert [m.role for m in out] == ["system", "user", "assistant", "user"]
    assert "get_weather" in out[0].content and "must call" in out[0].content
    assert out[2].content == ('<tool_call>[{"name": "get_weather", "arguments": {"city": '
                              '"Oslo"}}, {"name": "get_weather", "arguments": {"city": '
                              '"Rome"}}]</tool_call>')
    assert out[3].content.count("<tool_response>") == 2
    assert json.loads(out[3].content.split("\n")[1]) == {"name": "get_weather",
                                                        "content": "cold"}


def test_grammar_caps_parallel_calls_and_names_force_one() -> None:
    tools = (ToolSpec("a"), ToolSpec("b", parameters={"type": "object", "properties": {
        "n": {"type": "integer"}}, "required": ["n"]}))
    parallel = tool_call_grammar(ToolUse(tools, "required"), HERMES)
    assert f"{{0,{MAX_PARALLEL_CALLS - 1}}}" in parallel
    named = tool_call_grammar(ToolUse(tools, "b"), HERMES)
    assert "(tool-ws tool-block)" not in named
    assert '"\\"a\\""' not in named and '"\\"b\\""' in named


def test_strict_tool_refuses_what_it_cannot_enforce() -> None:
    tool = ToolSpec("f", parameters={"type": "object", "properties": {
        "n": {"type": "integer", "multipleOf": 3}}}, strict=True)
    with pytest.raises(InvalidRequest) as caught:
        tool_call_grammar(ToolUse((ToolSpec("g"), tool), "required"), HERMES)
    assert caught.value.param == "tools[1].function.parameters.properties.n.multipleOf"
