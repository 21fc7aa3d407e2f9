"""Tool calling on the real models: forced calls validate, streams assemble, history renders."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
WEATHER_PARAMS = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
                  "properties": {"city": {"type": "string", "maxLength": 30},
                                 "unit": {"enum": ["celsius", "fahrenheit"]}}}
ADD_PARAMS = {"type": "object", "required": ["a", "b"],
              "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
TOOLS: Any = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": WEATHER_PARAMS, "strict": True}},
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
                                      "parameters": ADD_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "add": ADD_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def assert_valid_calls(calls: Any, only: str | None = None) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in SCHEMAS and (only is None or call.function.name == only)
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_required_and_named_calls_validate(real_server: RealServer, model: str) -> None:
    for seed in range(3):
        for choice, only in (("required", None),
                             ({"type": "function", "function": {"name": "add"}}, "add")):
            # One call per reply: at temperature 1 a tiny model may otherwise go on calling
            # (up to 8 parallel calls) until max_tokens cuts the last one.
            completion = real_server.sdk.chat.completions.create(
                model=model, messages=ASK, tools=TOOLS, tool_choice=choice,  # type: ignore[arg-type]
                temperature=1.0, seed=seed, max_tokens=300, parallel_tool_calls=False)
            result = completion.choices[0]
            assert result.finish_reason == "tool_calls", result
            assert result.message.content is None
            assert_valid_calls(result.message.tool_calls, only)
            assert len(result.message.tool_calls or []) == 1


def test_parallel_calls_are_complete_or_cut_by_length(real_server: RealServer) -> None:
    for seed in range(3):
        result = real_server.sdk.chat.completions.create(
            model=GEMMA, messages=ASK, tools=TOOLS, tool_choice="required", temperature=1.0,
            seed=seed, max_tokens=300).choices[0]
        calls = result.message.tool_calls or []
        assert 1 <= len(calls) <= 8
        if result.finish_reason == "length":
            calls = calls[:-1]  # the last one may be cut; every earlier one is whole
        else:
            assert result.finish_reason == "tool_calls"
        for call in calls:
            assert_valid_calls([call])


def test_stream_helper_assembles_the_same_call(real_server: RealServer) -> None:
    kwargs: Any = {"model": SMOL, "messages": ASK, "tools": TOOLS, "tool_choice": "required",
                   "temperature": 0, "max_tokens": 300, "parallel_tool_calls": False}
    plain = real_server.sdk.chat.completions.create(**kwargs).choices[0].message
    with real_server.sdk.chat.completions.stream(**kwargs) as stream:
        fragments = [event for event in stream
                     if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion().choices[0]
    assert len(fragments) > 1  # arguments arrive in pieces, not in one lump
    assert final.finish_reason == "tool_calls"
    assert final.message.tool_calls is not None and plain.tool_calls is not None
    assert len(final.message.tool_calls) == 1
    streamed, whole = final.message.tool_calls[0].function, plain.tool_calls[0].function
    assert (streamed.name, streamed.arguments) == (whole.name, whole.arguments)
    assert_valid_calls(final.message.tool_calls)


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_tool_results_in_history_lead_to_an_answer(real_server: RealServer, model: str) -> None:
    messages: Any = [*ASK,
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "call_w1", "type": "function", "function": {
                             "name": "get_weather",
                             "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
                     {"role": "tool", "tool_call_id": "call_w1", "content": "21 C and sunny"}]
    completion = real_server.sdk.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, tool_choice="none", temperature=0,
        max_tokens=40)
    result = completion.choices[0]
    assert result.message.tool_calls is None
    assert result.message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 60


def test_legacy_functions_are_served(real_server: RealServer) -> None:
    response = real_server.sdk.chat.completions.with_raw_response.create(
        model=SMOL, messages=ASK, functions=[TOOLS[1]["function"]], function_call={"name": "add"},
        max_tokens=200, temperature=0)
    body = json.loads(response.content)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "add"
    jsonschema.validate(json.loads(choice["message"]["function_call"]["arguments"]), ADD_PARAMS)


def test_auto_with_json_object_gives_an_object_or_calls(real_server: RealServer) -> None:
    for seed in range(3):
        result = real_server.sdk.chat.completions.create(
            model=SMOL, messages=ASK, tools=TOOLS, tool_choice="auto", seed=seed,
            response_format={"type": "json_object"}, max_tokens=200).choices[0]
        if result.finish_reason == "tool_calls":
            assert_valid_calls(result.message.tool_calls)
        else:
            assert result.finish_reason == "stop"
            assert isinstance(json.loads(result.message.content or ""), dict)


def test_auto_answers_in_text_or_valid_calls(real_server: RealServer) -> None:
    for seed in range(3):
        result = real_server.sdk.chat.completions.create(
            model=GEMMA, messages=ASK, tools=TOOLS, seed=seed, max_tokens=60).choices[0]
        if result.message.tool_calls:
            assert_valid_calls(result.message.tool_calls)
        else:
            assert result.message.content is not None
            assert "<tool_call>" not in result.message.content or \
                result.finish_reason == "length"
