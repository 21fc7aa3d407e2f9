"""The Responses API on the real models through the official SDK: a function tool round trip,
a json_schema answer that validates, a second turn through previous_response_id that reads its
prefix from the cache, and a stream the SDK assembles into what the plain call returns. Every
body and event is checked against OpenAI's spec."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx2
import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.openapi_contract import validate
from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
SMOL = "smollm2-135m-instruct"
GEMMA = "gemma-3-270m"
WEATHER_PARAMS = {"type": "object", "additionalProperties": False, "required": ["city"],
                  "properties": {"city": {"type": "string", "maxLength": 30}}}
WEATHER: Any = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                "parameters": WEATHER_PARAMS, "strict": True}


def _raw(real_server: RealServer, body: dict[str, Any]) -> httpx2.Response:
    with httpx2.Client(base_url=real_server.server.base_url, timeout=120,
                       headers={"authorization": f"Bearer {real_server.key}"}) as http:
        return http.post("/v1/responses", json=body)


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_a_tool_round_trip(real_server: RealServer, model: str) -> None:
    sdk = real_server.sdk
    raw = sdk.responses.with_raw_response.create(
        model=model, input="What is the weather in Paris?", tools=[WEATHER],
        tool_choice="required", temperature=0, parallel_tool_calls=False,
        max_output_tokens=200)
    validate(json.loads(raw.content), "Response")
    first = raw.parse()
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER_PARAMS)
    second = sdk.responses.create(
        model=model, previous_response_id=first.id, tools=[WEATHER], temperature=0,
        max_output_tokens=32,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": json.dumps({"city": "Paris", "sky": "sunny", "celsius": 21})}])
    assert second.status in ("completed", "incomplete")
    assert second.output and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # type: ignore[union-attr]


BOUNDED = {"type": "object", "additionalProperties": False, "required": ["greeting"],
           "properties": {"greeting": {"type": "string", "maxLength": 12}}}


class Forecast(BaseModel):
    city: str
    sunny: bool


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_a_json_schema_answer_validates(real_server: RealServer, model: str) -> None:
    parsed = real_server.sdk.responses.parse(
        model=model, input="Is it sunny in Paris? Answer as JSON.", text_format=Forecast,
        temperature=0, max_output_tokens=64)
    assert parsed.status == "completed", parsed
    assert isinstance(parsed.output_parsed, Forecast)


def test_the_second_turn_reads_its_prefix_from_the_cache(real_server: RealServer) -> None:
    sdk = real_server.sdk
    first = sdk.responses.create(model=SMOL, instructions="You are terse.",
                                 input="Name three colours.", temperature=0,
                                 max_output_tokens=24)
    second = sdk.responses.create(model=SMOL, instructions="You are terse.",
                                  previous_response_id=first.id, input="And three fruits?",
                                  temperature=0, max_output_tokens=24)
    assert first.usage is not None and second.usage is not None
    cached = second.usage.input_tokens_details.cached_tokens
    # The first turn's prompt (instructions and question) is the second's prefix.
    assert cached >= first.usage.input_tokens - 1, (cached, first.usage)
    assert second.usage.input_tokens > first.usage.input_tokens


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_a_stream_assembles_into_the_plain_response(real_server: RealServer,
                                                    model: str) -> None:
    # An answer that ends: the SDK's helper assembles only a `response.completed`. Gemma 3
    # 270M is a base model and rambles on; a bounded schema ends its answer.
    body: dict[str, Any] = {"model": model, "input": "Say hi.", "temperature": 0,
                            "max_output_tokens": 200}
    if model == GEMMA:
        body["text"] = {"format": {"type": "json_schema", "name": "greeting", "strict": True,
                                   "schema": BOUNDED}}
    plain = _raw(real_server, body)
    assert plain.status_code == 200, plain.text
    validate(plain.json(), "Response")
    streamed = _raw(real_server, {**body, "stream": True})
    assert streamed.status_code == 200, streamed.text
    events = [json.loads(line.removeprefix("data: "))
              for line in streamed.text.splitlines() if line.startswith("data: ")]
    for event in events:
        validate(event, "ResponseStreamEvent")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed", events[-1]
    with real_server.sdk.responses.stream(**body) as stream:
        assembled = stream.get_final_response()
    expected = plain.json()
    assert assembled.output_text == expected["output"][0]["content"][0]["text"]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == assembled.output_text
    assert assembled.status == expected["status"]
    assert assembled.usage is not None
    assert assembled.usage.output_tokens == expected["usage"]["output_tokens"]


def test_background_work_completes_and_is_charged_on_the_real_model(
        real_server: RealServer) -> None:
    sdk = real_server.sdk
    queued = sdk.responses.create(model=SMOL, input="Say hi.", background=True,
                                  temperature=0, max_output_tokens=16)
    assert queued.status == "queued"
    for _ in range(1200):  # a minute at most
        polled = sdk.responses.retrieve(queued.id)
        if polled.status not in ("queued", "in_progress"):
            break
        time.sleep(0.05)
    assert polled.status in ("completed", "incomplete")
    assert polled.output_text


def test_a_cancel_keeps_the_streamed_text_and_a_delete_while_running_holds(
        real_server: RealServer) -> None:
    """A cancelled response kept no output though its tokens were charged; a response
    deleted while it ran was stored again by its own ending."""
    sdk = real_server.sdk
    story = {"model": SMOL, "input": "Write a long story about a dragon.", "background": True,
             "temperature": 0, "max_output_tokens": 400}
    running = sdk.responses.create(**story, stream=True)
    response_id, streamed = "", ""
    for event in running:
        if event.type == "response.created":
            response_id = event.response.id
        elif event.type == "response.output_text.delta":
            streamed += event.delta
            if len(streamed) >= 40:
                break
    running.close()
    cancelled = sdk.responses.cancel(response_id)
    validate(cancelled.model_dump(mode="json", exclude_unset=True), "Response")
    assert cancelled.status == "cancelled"
    assert cancelled.output[0].status == "incomplete"
    assert cancelled.output_text.startswith(streamed), (cancelled.output_text, streamed)
    assert sdk.responses.retrieve(response_id).output_text == cancelled.output_text

    doomed = sdk.responses.create(**story)
    deleted = sdk.responses.delete(doomed.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    time.sleep(1.0)  # the work would have stored its ending by now
    for look in (lambda: sdk.responses.retrieve(doomed.id),
                 lambda: sdk.responses.input_items.list(doomed.id),
                 lambda: sdk.responses.cancel(doomed.id)):
        with pytest.raises(openai.NotFoundError):
            look()


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_input_tokens_counts_what_a_response_reads(real_server: RealServer, model: str) -> None:
    sdk = real_server.sdk
    ask: dict[str, Any] = {"model": model, "instructions": "Be brief.",
                           "input": "What is the weather in Paris?", "tools": [WEATHER]}
    counted = sdk.responses.input_tokens.count(**ask)
    made = sdk.responses.create(**ask, temperature=0, max_output_tokens=16)
    assert made.usage is not None
    assert counted.input_tokens == made.usage.input_tokens
