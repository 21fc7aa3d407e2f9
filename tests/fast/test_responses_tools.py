"""Tools and text formats on POST /v1/responses over the fake engine: function calls and
their round trip, namespace tools, built-in tools withheld (or refused when forced),
tool_choice in every form, and text.format through ``responses.parse``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.fast.responses_stack import ResponsesStack, responses_stack
from tests.fast.test_responses_api import sse_events
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}, "strict": False}
CLOCK: Any = {"type": "function", "name": "now", "parameters": None, "strict": None}
CRM: Any = {"type": "namespace", "name": "crm", "description": "The customer database.",
            "tools": [{"type": "function", "name": "find", "parameters": {"type": "object"}},
                      {"type": "custom", "name": "freeform"}]}
SEARCH: Any = {"type": "web_search", "external_web_access": False}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ResponsesStack]:
    async with responses_stack(tmp_path) as opened:
        yield opened


async def test_a_forced_call_is_a_function_call_item(stack: ResponsesStack) -> None:
    raw = await stack.client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Weather in Paris?", tools=[WEATHER, CLOCK],
        tool_choice="required")
    body = json.loads(raw.content)
    validate(body, "Response")
    [call] = raw.parse().output
    assert call.type == "function_call" and call.id.startswith("fc_")
    assert (call.call_id, call.name, call.status) == ("call_fake0", "get_weather", "completed")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert body["tools"][0] == WEATHER  # echoed as the spec's FunctionTool
    use = stack.engine.calls[-1].tools
    assert use is not None and use.choice == "required"
    assert [t.name for t in use.tools] == ["get_weather", "now"]


async def test_a_tool_round_trip_through_previous_response_id(stack: ResponsesStack) -> None:
    first = await stack.client.responses.create(
        model="gpt-4o-mini", input="Weather in Paris?", tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"})
    [call] = first.output
    assert call.type == "function_call"
    second = await stack.client.responses.create(
        model="gpt-4o-mini", previous_response_id=first.id, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    assert second.output_text == stack.engine.reply
    sent = stack.engine.calls[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool"]
    assert sent[1].tool_calls[0].id == call.call_id and sent[1].tool_calls[0].name == \
        "get_weather"
    assert (sent[2].content, sent[2].tool_call_id, sent[2].name) == (
        "Sunny", call.call_id, "get_weather")


async def test_calls_given_back_in_the_input_pair_with_their_outputs(
        stack: ResponsesStack) -> None:
    await stack.client.responses.create(model="gpt-4o-mini", tools=[WEATHER], input=[
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather",
         "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "c2", "output": "Warm"},
        {"type": "function_call_output", "call_id": "c1",
         "output": [{"type": "input_text", "text": "Mild"}]},
    ])
    sent = stack.engine.calls[-1].messages
    assert [m.role for m in sent] == ["user", "assistant", "tool", "tool"]
    assert sent[1].content == "Checking." and [c.id for c in sent[1].tool_calls] == ["c1", "c2"]
    assert [(m.tool_call_id, m.content) for m in sent[2:]] == [("c2", "Warm"), ("c1", "Mild")]


async def test_the_stream_of_a_call_validates_and_assembles(stack: ResponsesStack) -> None:
    events = await sse_events(stack, {"model": "gpt-4o-mini", "input": "Weather?",
                                      "tools": [WEATHER], "tool_choice": "required"})
    for event in events:
        validate(event, "ResponseStreamEvent")
    types = [e["type"] for e in events]
    assert types[2] == "response.output_item.added"
    assert "response.output_text.delta" not in types
    assert types[-3:] == ["response.function_call_arguments.done",
                          "response.output_item.done", "response.completed"]
    arguments = "".join(e["delta"] for e in events
                        if e["type"] == "response.function_call_arguments.delta")
    assert arguments == events[-3]["arguments"] == stack.engine.tool_arguments
    async with stack.client.responses.stream(model="gpt-4o-mini", input="Weather?",
                                             tools=[WEATHER], tool_choice="required") as s:
        final = await s.get_final_response()
    assert final.output[0].type == "function_call"
    assert final.output[0].arguments == stack.engine.tool_arguments


async def test_namespace_functions_carry_their_namespace(stack: ResponsesStack) -> None:
    raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Find Ada", "tools": [CRM],
        "tool_choice": {"type": "function", "name": "find", "namespace": "crm"}})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    validate(body, "Response")
    call = body["output"][0]
    assert (call["type"], call["name"], call["namespace"]) == ("function_call", "find", "crm")
    assert raw.headers["x-appliance-withheld-tools"] == "crm.freeform"
    use = stack.engine.calls[-1].tools
    assert use is not None and [t.name for t in use.tools] == ["crm.find"]
    assert use.tools[0].description == "The customer database."
    # Given back, the call is the same function to the model.
    await stack.client.responses.create(model="gpt-4o-mini", previous_response_id=body["id"],
                                        input=[{"type": "function_call_output",
                                                "call_id": call["call_id"], "output": "ok"}])
    assert stack.engine.calls[-1].messages[1].tool_calls[0].name == "crm.find"


async def test_offered_built_in_tools_are_withheld_and_named(stack: ResponsesStack) -> None:
    raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Hi", "tools": [WEATHER, SEARCH,
                                                          {"type": "file_search",
                                                           "vector_store_ids": ["vs_1"]}]})
    assert raw.status_code == 200, raw.text
    assert raw.headers["x-appliance-withheld-tools"] == "web_search, file_search"
    body = raw.json()
    validate(body, "Response")
    assert body["tools"][1] == SEARCH
    use = stack.engine.calls[-1].tools
    assert use is not None and [t.name for t in use.tools] == ["get_weather"]
    only_built_in = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Hi", "tools": [SEARCH]})
    assert only_built_in.status_code == 200 and stack.engine.calls[-1].tools is None


@pytest.mark.parametrize("choice", [
    {"type": "web_search_preview"}, {"type": "file_search"},
    {"type": "mcp", "server_label": "x"}, {"type": "custom", "name": "freeform"},
    "required",
])
async def test_forcing_a_built_in_tool_is_a_400(stack: ResponsesStack, choice: Any) -> None:
    raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Hi", "tools": [SEARCH], "tool_choice": choice})
    assert raw.status_code == 400, raw.text
    assert raw.json()["error"]["param"] == "tool_choice"


async def test_allowed_tools_narrow_what_the_model_sees(stack: ResponsesStack) -> None:
    response = await stack.client.responses.create(
        model="gpt-4o-mini", input="Hi", tools=[WEATHER, CLOCK],
        tool_choice={"type": "allowed_tools", "mode": "required",
                     "tools": [{"type": "function", "name": "now"}]})
    use = stack.engine.calls[-1].tools
    assert use is not None and use.choice == "required" and [t.name for t in use.tools] == \
        ["now"]
    assert response.output[0].type == "function_call" and response.output[0].name == "now"
    assert response.tool_choice.type == "allowed_tools"  # type: ignore[union-attr]


@pytest.mark.parametrize(("tools", "choice", "param"), [
    ([WEATHER], {"type": "function", "name": "missing"}, "tool_choice"),
    ([WEATHER, WEATHER], None, "tools[1]"),
    ([{"type": "hologram"}], None, "tools[0].type"),
    ([{"type": "function", "name": "bad name!"}], None, "tools[0].name"),
    ([{"type": "namespace", "name": "ns", "tools": []}], None, "tools[0].tools"),
    ([{"type": "namespace", "name": "ns", "tools": [{"type": "custom", "name": "a\r\nb: c"}]}],
     None, "tools[0].tools[0].name"),
    ([WEATHER], {"type": "allowed_tools", "mode": "sometimes", "tools": []},
     "tool_choice.mode"),
    (None, "required", "tool_choice"),
])
async def test_bad_tools_are_400s_naming_the_field(stack: ResponsesStack, tools: Any,
                                                   choice: Any, param: str) -> None:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "input": "Hi"}
    if tools is not None:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    raw = await stack.http.post("/v1/responses", headers=stack.auth(), json=body)
    assert raw.status_code == 400, raw.text
    assert raw.json()["error"]["param"] == param


async def test_parallel_tool_calls_reach_the_engine(stack: ResponsesStack) -> None:
    response = await stack.client.responses.create(
        model="gpt-4o-mini", input="Hi", tools=[WEATHER], parallel_tool_calls=False)
    use = stack.engine.calls[-1].tools
    assert use is not None and not use.parallel and response.parallel_tool_calls is False


class City(BaseModel):
    city: str
    population: int


async def test_parse_with_a_pydantic_model(stack: ResponsesStack) -> None:
    stack.engine.reply = '{"city": "Paris", "population": 2100000}'
    parsed = await stack.client.responses.parse(model="gpt-4o-mini", input="A city?",
                                                text_format=City)
    assert parsed.output_parsed == City(city="Paris", population=2100000)
    output = stack.engine.calls[-1].output
    assert output is not None and output.kind == "json_schema" and output.strict
    assert output.schema is not None and output.schema["required"] == ["city", "population"]
    assert parsed.text is not None and parsed.text.format is not None
    assert parsed.text.format.type == "json_schema"


async def test_json_object_format_reaches_the_engine(stack: ResponsesStack) -> None:
    await stack.client.responses.create(model="gpt-4o-mini", input="JSON please",
                                        text={"format": {"type": "json_object"}})
    output = stack.engine.calls[-1].output
    assert output is not None and output.kind == "json_object"
