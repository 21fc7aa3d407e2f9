"""POST /v1/responses over the fake engine, through the official SDK: the response object and
its stream in OpenAI's shapes (each validated against the spec), what reaches the engine, the
ledger row, and the 400s that name their parameter."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from appliance.engines.base import ChatParams
from tests.fakes import FakeChatEngine
from tests.fast.responses_stack import ResponsesStack, responses_stack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ResponsesStack]:
    async with responses_stack(tmp_path) as opened:
        yield opened


def last_call(stack: ResponsesStack) -> ChatParams:
    return stack.engine.calls[-1]


async def sse_events(stack: ResponsesStack, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The raw stream: each frame's ``event:`` line must name the type its data carries."""
    response = await stack.http.post("/v1/responses", json={**body, "stream": True},
                                     headers=stack.auth())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for frame in response.text.split("\n\n"):
        if not frame.strip():
            continue
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        event = json.loads(data_line.removeprefix("data: "))
        assert event["type"] == event_line.removeprefix("event: ")
        events.append(event)
    return events


async def test_a_plain_response_has_openai_shape(stack: ResponsesStack) -> None:
    raw = await stack.client.responses.with_raw_response.create(
        model="gpt-4o-mini", instructions="Be brief.", input="Hi", metadata={"k": "v"},
        temperature=0.5, user="u-1")
    body = json.loads(raw.content)
    validate(body, "Response")
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.error is None
    assert response.output_text == stack.engine.reply
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_")
    assert message.status == "completed" and message.role == "assistant"
    assert body["output"][0]["content"][0]["annotations"] == []
    assert response.model == "fake-chat"
    assert (response.instructions, response.metadata, response.temperature) == (
        "Be brief.", {"k": "v"}, 0.5)
    assert (body["user"], body["store"], body["truncation"], body["tool_choice"]) == (
        "u-1", True, "disabled", "auto")
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert response.usage.output_tokens == len(stack.engine.reply.split())
    sent = last_call(stack)
    assert [m.role for m in sent.messages] == ["system", "user"]
    assert sent.messages[0].content == "Be brief." and sent.sampling.temperature == 0.5


async def test_the_ledger_row_is_the_responses_endpoint(stack: ResponsesStack) -> None:
    response = await stack.client.responses.create(model="gpt-4o-mini", input="Hi")
    row = stack.ledger.rows[-1]
    assert (row.endpoint, row.model, row.status, row.http_status) == (
        "/v1/responses", "fake-chat", "ok", 200)
    assert row.price == 0.25 and row.kind == "chat"
    assert response.usage is not None
    assert (row.prompt_tokens, row.completion_tokens) == (response.usage.input_tokens,
                                                          response.usage.output_tokens)


async def test_input_items_become_the_history(stack: ResponsesStack) -> None:
    await stack.client.responses.create(model="gpt-4o-mini", instructions="Rules.", input=[
        {"role": "developer", "content": "Be terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "A"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "B"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"role": "user", "content": "C"},
    ])
    sent = last_call(stack).messages
    # Instructions and the developer message make one system message: templates take one.
    assert [(m.role, m.content) for m in sent] == [
        ("system", "Rules.\n\nBe terse."), ("user", "A"), ("assistant", "B"), ("user", "C")]


async def test_max_output_tokens_makes_an_incomplete_response(stack: ResponsesStack) -> None:
    stack.engine.reply = " ".join(f"w{i}" for i in range(40))
    raw = await stack.client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Hi", max_output_tokens=16)
    validate(json.loads(raw.content), "Response")
    response = raw.parse()
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]
    assert last_call(stack).max_tokens == 16


async def test_the_stream_is_openai_s_event_sequence(stack: ResponsesStack) -> None:
    events = await sse_events(stack, {"model": "gpt-4o-mini", "input": "Hi"})
    for event in events:
        validate(event, "ResponseStreamEvent")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    words = len(stack.engine.reply.split())
    assert types == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.content_part.added",
                     *["response.output_text.delta"] * words,
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress"
    assert "".join(e["delta"] for e in events if "delta" in e) == stack.engine.reply
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == stack.engine.reply


async def test_the_sdk_assembles_the_stream_into_the_plain_response(
        stack: ResponsesStack) -> None:
    plain = await stack.client.responses.create(model="gpt-4o-mini", input="Hi")
    async with stack.client.responses.stream(model="gpt-4o-mini", input="Hi") as stream:
        deltas = [event.delta async for event in stream
                  if event.type == "response.output_text.delta"]
        streamed = await stream.get_final_response()
    assert "".join(deltas) == streamed.output_text == plain.output_text

    def shape(response: openai.types.responses.Response) -> Any:
        body = response.model_dump(exclude={"id", "created_at", "completed_at"})
        for item in body["output"]:
            item.pop("id")
            for part in item.get("content", []):
                part.pop("parsed", None)  # the stream helper's own field (text_format)
        return body

    assert shape(streamed) == shape(plain)


async def test_a_failure_mid_stream_is_an_error_event_then_failed(
        tmp_path: Path) -> None:
    async with responses_stack(tmp_path, engine=FakeChatEngine(fail_after=2)) as stack:
        events = await sse_events(stack, {"model": "gpt-4o-mini", "input": "Hi"})
        for event in events:
            validate(event, "ResponseStreamEvent")
        assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
        assert events[-1]["response"]["status"] == "failed"
        assert events[-1]["response"]["error"]["code"] == "server_error"
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        row = stack.ledger.rows[-1]
        assert row.status == "error" and row.error_code == "engine_error"


async def test_logprobs_come_with_include(stack: ResponsesStack) -> None:
    raw = await stack.client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Hi", include=["message.output_text.logprobs"],
        top_logprobs=2)
    body = json.loads(raw.content)
    validate(body, "Response")
    logprobs = body["output"][0]["content"][0]["logprobs"]
    assert len(logprobs) == len(stack.engine.reply.split())
    assert len(logprobs[0]["top_logprobs"]) == 2 and logprobs[0]["bytes"]
    assert last_call(stack).sampling.logprobs == 2
    plain = await stack.client.responses.create(model="gpt-4o-mini", input="Hi")
    assert last_call(stack).sampling.logprobs is None
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]


@pytest.mark.parametrize(("extra", "param"), [
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"context_management": [{"type": "compaction"}]}, "context_management"),
    ({"include": ["nonsense"]}, "include[0]"),
    ({"max_output_tokens": 5}, "max_output_tokens"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"text": {"verbosity": "high"}}, "text.verbosity"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
    ({"store": False, "background": True}, "background"),
    ({"reasoning": {"effort": "enormous"}}, "reasoning.effort"),
    ({"truncation": "sometimes"}, "truncation"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
     "input[0].content[0].type"),
    # Not a data URL (test_image_input.py has the rest of image input).
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].image_url"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]},
     "input[0].call_id"),
    ({"input": [{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"role": "user", "content": "next"}]}, "input[0]"),
    ({"previous_response_id": "resp_1", "conversation": "conv_1"}, "conversation"),
])
async def test_refusals_name_their_parameter(stack: ResponsesStack, extra: dict[str, Any],
                                             param: str) -> None:
    body = {"model": "gpt-4o-mini", "input": "Hi", **extra}
    response = await stack.http.post("/v1/responses", json=body, headers=stack.auth())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_unknown_fields_and_accepted_hints_are_taken(stack: ResponsesStack) -> None:
    response = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Hi", "client_metadata": {"x": 1},
        "reasoning": {"effort": "medium", "summary": "auto"}, "prompt_cache_key": "k",
        "include": ["reasoning.encrypted_content"], "safety_identifier": "s",
        "max_tool_calls": 3, "service_tier": "auto", "prompt_cache_retention": "24h"})
    assert response.status_code == 200, response.text
    body = response.json()
    validate(body, "Response")
    assert body["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert body["output"][0]["type"] == "message"


async def test_an_unknown_model_is_a_404_naming_model(stack: ResponsesStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await stack.client.responses.create(model="nope", input="Hi")
    assert caught.value.body["param"] == "model"  # type: ignore[index]
