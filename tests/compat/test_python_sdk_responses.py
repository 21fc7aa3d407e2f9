"""The official Python SDK's Responses and Conversations APIs on the real server and models.

What is asserted is the protocol, not the tiny models' wisdom: a function call happens because
``tool_choice`` forces it and its arguments validate because the server holds them to the
schema by grammar; a structured output parses because ``json_schema`` is strict. Greedy
sampling (temperature 0) makes a streamed answer comparable with a non-streamed one. The raw
JSON bodies are checked against OpenAI's published spec as well (tests/openapi_contract.py).
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.openapi_contract import validate
from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat, pytest.mark.anyio]
# SmolLM2 by an alias from models.toml, as existing code would send it; Gemma by its id.
MODELS = ["gpt-4o-mini", "gemma-3-270m"]
ASK = "What is the weather in Paris?"
CITY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["city"],
    "properties": {"city": {"type": "string", "maxLength": 30}}}
WEATHER: Any = {"type": "function", "name": "get_weather", "strict": True,
                "description": "The current weather in a city.", "parameters": CITY_SCHEMA}
# A namespace groups functions (Codex sends one); the call names its namespace.
FORECASTS: Any = {"type": "namespace", "name": "forecasts",
                  "description": "Weather services.", "tools": [WEATHER]}
CITY_FORMAT: Any = {"format": {"type": "json_schema", "name": "city", "strict": True,
                               "schema": CITY_SCHEMA}}
STORY = "Write a long story about a lighthouse keeper."
TOOL_OUTPUT = json.dumps({"forecast": "sunny", "celsius": 21})


class Forecast(BaseModel):
    # maxLength bounds what greedy decoding may write before max_output_tokens cuts it.
    city: str = Field(max_length=30)
    sunny: bool


def checked(client: openai.OpenAI, **request: Any) -> Any:
    """responses.create, its raw body validated against the spec's Response first."""
    raw = client.responses.with_raw_response.create(**request)
    validate(raw.http_response.json(), "Response")
    return raw.parse()


def function_calls(response: Any) -> list[Any]:
    return [item for item in response.output if item.type == "function_call"]


@pytest.mark.parametrize("model", MODELS)
def test_create_retrieve_count_and_continue(real_server: RealServer, model: str) -> None:
    client = real_server.sdk
    ask: dict[str, Any] = {"model": model, "instructions": "Be brief.",
                           "max_output_tokens": 16, "temperature": 0}
    first = checked(client, **ask, input="Say hello.", metadata={"suite": "compat"})
    assert first.id.startswith("resp_") and first.object == "response"
    assert first.status in ("completed", "incomplete"), first.status
    if first.status == "incomplete":
        assert first.incomplete_details.reason == "max_output_tokens"
    messages = [item for item in first.output if item.type == "message"]
    assert len(messages) == 1 and messages[0].role == "assistant"
    assert first.output_text == "".join(part.text for part in messages[0].content
                                        if part.type == "output_text")
    # Echoed as OpenAI does.
    assert (first.instructions, first.max_output_tokens, first.temperature) == ("Be brief.", 16, 0)
    assert first.metadata == {"suite": "compat"}
    usage = first.usage
    assert 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    counted = client.responses.input_tokens.count(model=model, instructions="Be brief.",
                                                  input="Say hello.")
    assert counted.input_tokens == usage.input_tokens
    assert client.responses.retrieve(first.id).output_text == first.output_text

    # The second turn replays the first (its input and output) behind the same instructions,
    # so its prompt starts with the first prompt and the prefix cache serves it.
    second = checked(client, **ask, input="Again.", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > usage.input_tokens + usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0
    listed = client.responses.input_items.list(second.id)
    said = [part.text for item in listed.data if item.type == "message"
            for part in item.content if part.type == "input_text"]
    assert "Again." in said

    deleted = client.responses.delete(second.id)
    assert deleted is None  # the SDK returns nothing; a 404 would have raised
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)


@pytest.mark.parametrize("model", MODELS)
def test_stream_helper_assembles_what_create_returns(real_server: RealServer,
                                                     model: str) -> None:
    client = real_server.sdk
    # A strict schema ends the answer well inside the budget: the SDK's stream helper builds
    # its final response from response.completed, which an answer cut short never sends.
    ask: dict[str, Any] = {"model": model, "input": ASK, "max_output_tokens": 100,
                           "temperature": 0, "store": False, "text": CITY_FORMAT}
    plain = checked(client, **ask)
    assert plain.status == "completed"
    with client.responses.stream(**ask) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert {"response.output_item.added", "response.content_part.added",
            "response.output_text.done", "response.content_part.done",
            "response.output_item.done"} <= set(kinds)
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == plain.output_text
    jsonschema.validate(json.loads(final.output_text), CITY_SCHEMA)
    assert final.id == events[-1].response.id
    assert final.usage.output_tokens == plain.usage.output_tokens
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        client.responses.retrieve(final.id)

    # Cut by max_output_tokens, the raw stream ends with response.incomplete instead.
    cut = list(client.responses.create(model=model, input=STORY, max_output_tokens=16,
                                       temperature=0, store=False, stream=True))
    last = cut[-1]
    assert last.type == f"response.{last.response.status}"
    assert [event.sequence_number for event in cut] == list(range(len(cut)))
    if last.type == "response.incomplete":
        assert last.response.incomplete_details.reason == "max_output_tokens"
        assert last.response.usage.output_tokens == 16
    else:
        assert last.type == "response.completed"


@pytest.mark.parametrize("model", MODELS)
def test_tool_round_trip_chained_and_stateless(real_server: RealServer, model: str) -> None:
    client = real_server.sdk
    called = checked(client, model=model, input=ASK, tools=[WEATHER], tool_choice="required",
                     parallel_tool_calls=False, max_output_tokens=100, temperature=0)
    assert called.status == "completed"
    [call] = function_calls(called)
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), CITY_SCHEMA)
    answer: Any = {"type": "function_call_output", "call_id": call.call_id,
                   "output": TOOL_OUTPUT}
    after: dict[str, Any] = {"model": model, "tools": [WEATHER], "tool_choice": "none",
                             "max_output_tokens": 24, "temperature": 0}

    chained = checked(client, **after, previous_response_id=called.id, input=[answer])
    assert not function_calls(chained)
    assert [item.type for item in chained.output] == ["message"]
    # The SDK's own idiom: the output items go back in as input, with the call's output.
    stateless = checked(client, **after, store=False,
                        input=[{"role": "user", "content": ASK}, *called.output, answer])
    assert not function_calls(stateless)
    # Same prompt both ways: the chain replayed the call and its output exactly, and that
    # prompt is longer than the question alone by them.
    assert stateless.usage.input_tokens == chained.usage.input_tokens
    alone = checked(client, **after, store=False, input=ASK)
    assert chained.usage.input_tokens > alone.usage.input_tokens + called.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_parse_structured_output_tools_and_namespace(real_server: RealServer,
                                                     model: str) -> None:
    client = real_server.sdk
    parsed = client.responses.parse(model=model, input=ASK, text_format=Forecast,
                                    max_output_tokens=100, temperature=0)
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Forecast)
    assert parsed.text.format.type == "json_schema"

    tool = openai.pydantic_responses_function_tool(Forecast, name="report_forecast")
    with_tool = client.responses.parse(model=model, input=ASK, tools=[tool],
                                       tool_choice="required", parallel_tool_calls=False,
                                       max_output_tokens=100, temperature=0)
    [call] = function_calls(with_tool)
    assert call.name == "report_forecast"
    assert isinstance(call.parsed_arguments, Forecast)

    grouped = checked(client, model=model, input=ASK, tools=[FORECASTS],
                      tool_choice="required", parallel_tool_calls=False,
                      max_output_tokens=100, temperature=0)
    [namespaced] = function_calls(grouped)
    assert (namespaced.namespace, namespaced.name) == ("forecasts", "get_weather")
    jsonschema.validate(json.loads(namespaced.arguments), CITY_SCHEMA)


def test_conversation_items_and_lifecycle(real_server: RealServer) -> None:
    client = real_server.sdk
    conversation = client.conversations.create(
        metadata={"suite": "compat"},
        items=[{"type": "message", "role": "user", "content": "My name is Ada."}])
    assert conversation.id.startswith("conv_") and conversation.metadata == {"suite": "compat"}
    turn: dict[str, Any] = {"model": MODELS[0], "conversation": conversation.id,
                            "max_output_tokens": 16, "temperature": 0}
    first = checked(client, **turn, input="What is my name?")
    second = checked(client, **turn, input="Say it again.")
    assert first.conversation.id == second.conversation.id == conversation.id
    # The second turn's prompt holds the whole conversation so far.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens

    items = list(client.conversations.items.list(conversation.id, order="asc"))
    assert [(item.type, item.role) for item in items] == [
        ("message", "user"), ("message", "user"), ("message", "assistant"),
        ("message", "user"), ("message", "assistant")]
    assert items[2].content[0].text == first.output_text
    assert items[4].content[0].text == second.output_text
    page = client.conversations.items.list(conversation.id, order="asc", limit=2)
    assert [item.id for item in page.data] == [item.id for item in items[:2]]
    assert page.has_more
    following = page.get_next_page()
    assert [item.id for item in following.data] == [item.id for item in items[2:4]]

    added = client.conversations.items.create(
        conversation.id, items=[{"type": "message", "role": "user", "content": "One more."}])
    [new_item] = added.data
    fetched = client.conversations.items.retrieve(new_item.id, conversation_id=conversation.id)
    assert fetched.id == new_item.id and fetched.content[0].text == "One more."
    client.conversations.items.delete(new_item.id, conversation_id=conversation.id)
    with pytest.raises(openai.NotFoundError):
        client.conversations.items.retrieve(new_item.id, conversation_id=conversation.id)

    updated = client.conversations.update(conversation.id, metadata={"suite": "done"})
    assert updated.metadata == {"suite": "done"}
    assert client.conversations.retrieve(conversation.id).metadata == {"suite": "done"}
    assert client.conversations.delete(conversation.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(conversation.id)


@pytest.mark.parametrize("model", MODELS)
async def test_async_client_streams_a_function_call(real_server: RealServer,
                                                    model: str) -> None:
    async with openai.AsyncOpenAI(base_url=real_server.base_url, api_key=real_server.key,
                                  max_retries=0) as client:
        async with client.responses.stream(model=model, input=ASK, tools=[WEATHER],
                                           tool_choice={"type": "function",
                                                        "name": "get_weather"},
                                           max_output_tokens=100) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
        [call] = function_calls(final)
        added = [e.item for e in events if e.type == "response.output_item.added"]
        assert [item.type for item in added] == ["function_call"]
        done = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert len(done) == 1 and done[0].item_id == call.id
        deltas = "".join(e.delta for e in events
                         if e.type == "response.function_call_arguments.delta")
        assert deltas == done[0].arguments == call.arguments
        jsonschema.validate(json.loads(call.arguments), CITY_SCHEMA)
        assert events[-1].type == "response.completed"

        answered = await client.responses.create(
            model=model, previous_response_id=final.id, max_output_tokens=16,
            input=[{"type": "function_call_output", "call_id": call.call_id,
                    "output": TOOL_OUTPUT}])
        assert [item.type for item in answered.output] == ["message"]
        with pytest.raises(openai.BadRequestError) as caught:
            await client.responses.create(model=model, input=ASK, tools=[WEATHER],
                                          tool_choice={"type": "function", "name": "other"})
        assert caught.value.param == "tool_choice"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
