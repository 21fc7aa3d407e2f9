"""Tools on the chat API over a fake engine: wire shapes, legacy functions, history, errors."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import FastStack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
USER = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CLOCK: Any = {"type": "function", "function": {"name": "now"}}


async def test_forced_call_comes_back_as_tool_calls(stack: FastStack) -> None:
    raw = await stack.client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=USER, tools=[WEATHER, CLOCK], tool_choice="required")
    validate(json.loads(raw.content), "CreateChatCompletionResponse")
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id == "call_fake0"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_engine_gets_tools_choice_and_parallel_flag(stack: FastStack) -> None:
    await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "now"}},
        parallel_tool_calls=False)
    use = stack.engine.calls[-1].tools
    assert use is not None
    assert [t.name for t in use.tools] == ["get_weather", "now"]
    assert use.choice == "now" and not use.parallel and use.single
    assert use.tools[0].parameters["required"] == ["city"]


async def test_auto_and_none_reach_the_engine(stack: FastStack) -> None:
    for choice in ("auto", "none"):
        completion = await stack.client.chat.completions.create(
            model="fake-chat", messages=USER, tools=[WEATHER], tool_choice=choice)
        assert completion.choices[0].message.content == stack.engine.reply
        use = stack.engine.calls[-1].tools
        assert use is not None and use.choice == choice


async def test_streamed_tool_call_deltas_assemble_in_the_sdk_helper(stack: FastStack) -> None:
    chunks: list[dict[str, Any]] = []
    raw = await stack.http.post("/v1/chat/completions", headers=_auth(stack), json={
        "model": "fake-chat", "messages": USER, "tools": [WEATHER], "tool_choice": "required",
        "stream": True})
    for line in raw.text.splitlines():
        if line.startswith("data: {"):
            chunks.append(json.loads(line.removeprefix("data: ")))
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    first_call = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert first_call == {"index": 0, "id": "call_fake0", "type": "function",
                          "function": {"name": "get_weather", "arguments": ""}}
    assert chunks[0]["choices"][0]["delta"]["content"] is None
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    async with stack.client.chat.completions.stream(
            model="fake-chat", messages=USER, tools=[WEATHER], tool_choice="required") as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == '{"city": "Paris"}'


async def test_legacy_functions_answer_with_function_call(stack: FastStack) -> None:
    raw = await stack.http.post("/v1/chat/completions", headers=_auth(stack), json={
        "model": "fake-chat", "messages": USER, "functions": [WEATHER["function"]],
        "function_call": {"name": "get_weather"}})
    body = raw.json()
    validate(body, "CreateChatCompletionResponse")
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {"name": "get_weather",
                                                  "arguments": '{"city": "Paris"}'}
    assert "tool_calls" not in choice["message"]
    use = stack.engine.calls[-1].tools
    assert use is not None and use.choice == "get_weather" and not use.parallel


async def test_tool_history_reaches_the_engine_paired(stack: FastStack) -> None:
    messages: Any = [
        *USER,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]
    await stack.client.chat.completions.create(model="fake-chat", messages=messages,
                                               tools=[WEATHER])
    sent = stack.engine.calls[-1].messages
    assert sent[1].tool_calls[0].name == "get_weather"
    assert sent[1].tool_calls[0].arguments == '{"city": "Paris"}'
    assert (sent[2].role, sent[2].tool_call_id, sent[2].name) == ("tool", "call_1",
                                                                  "get_weather")


async def test_legacy_function_history_pairs_by_name(stack: FastStack) -> None:
    messages: Any = [
        *USER,
        {"role": "assistant", "content": None,
         "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    await stack.client.chat.completions.create(model="fake-chat", messages=messages)
    sent = stack.engine.calls[-1].messages
    assert sent[2].tool_call_id == sent[1].tool_calls[0].id
    assert sent[2].role == "tool"


CALL: Any = {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize(("extra", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": []}, "tools"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
     "tools[0].function.parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
     "tool_choice"),
    ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"messages": [*USER, {"role": "tool", "content": "x"}]}, "messages[1].tool_call_id"),
    ({"messages": [*USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
     "messages[1].tool_call_id"),
    ({"messages": [*USER, {"role": "assistant", "tool_calls": [CALL]}]}, "messages[1].role"),
    ({"messages": [*USER, {"role": "assistant", "tool_calls": [{"type": "function"}]}]},
     "messages[1].tool_calls[0].id"),
    ({"messages": [*USER, {"role": "user", "content": "x", "tool_calls": [CALL]}]},
     "messages[1].tool_calls"),
])
async def test_bad_tool_requests_are_400_naming_the_param(stack: FastStack,
                                                          extra: dict[str, Any],
                                                          param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await stack.client.chat.completions.create(
            **{"model": "fake-chat", "messages": USER, **extra})
    assert caught.value.param == param, caught.value.message
    assert stack.ledger.rows[-1].http_status == 400


def _auth(stack: FastStack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.client.api_key}"}
