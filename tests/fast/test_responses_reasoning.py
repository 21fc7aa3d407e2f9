"""The Responses API on a reasoning model (the fake engine thinking before it answers),
through the official SDK: reasoning items and their stream events (each validated against
the spec), ``reasoning.effort`` reaching the engine (or not, on a model that does not reason),
``summary`` empty, reasoning given back in ``input`` becoming the assistant turn's reasoning,
the sealed ``encrypted_content`` (a stateless second turn, a changed or foreign token, the
key kept in the data dir), and chains and conversations carrying the reasoning."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest

from appliance.api.reasoning_seal import ReasoningSeal
from appliance.api.wire.responses_output import replayed_events
from appliance.engines.base import ChatMessage
from appliance.errors import ConfigError, InvalidRequest
from tests.fakes import FakeChatEngine
from tests.fast.responses_stack import OTHER_KEY, ResponsesStack, responses_stack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
MODEL = "gpt-4o-mini"
ENCRYPTED = "reasoning.encrypted_content"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ResponsesStack]:
    engine = FakeChatEngine(reasoning="think", context_length=1024)
    async with responses_stack(tmp_path, engine=engine) as opened:
        yield opened


async def create(stack: ResponsesStack, body: dict[str, Any], key: str | None = None,
                 status: int = 200) -> dict[str, Any]:
    response = await stack.http.post("/v1/responses", json={"model": MODEL, **body},
                                     headers=stack.auth(key) if key else stack.auth())
    assert response.status_code == status, response.text
    created: dict[str, Any] = response.json()
    if status == 200:
        validate(created, "Response")
    return created


async def sse_events(stack: ResponsesStack, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = await stack.http.post("/v1/responses",
                                     json={"model": MODEL, **body, "stream": True},
                                     headers=stack.auth())
    assert response.status_code == 200, response.text
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines()
              if line.startswith("data: ")]
    for event in events:
        validate(event, "ResponseStreamEvent")
    return events


def assistant_turns(stack: ResponsesStack) -> list[ChatMessage]:
    return [m for m in stack.engine.calls[-1].messages if m.role == "assistant"]


async def test_reasoning_is_an_item_before_the_message(stack: ResponsesStack) -> None:
    body = await create(stack, {"input": "Hi", "reasoning": {"effort": "low",
                                                             "summary": "auto"}})
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning" and reasoning["id"].startswith("rs_")
    assert reasoning["status"] == "completed"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": stack.engine.thinking}]
    assert reasoning["summary"] == []  # no model here writes a summary, whatever is asked
    assert "encrypted_content" not in reasoning  # only with include
    assert message["type"] == "message"
    assert message["content"][0]["text"] == stack.engine.reply
    assert body["reasoning"] == {"effort": "low", "summary": "auto"}
    thought = len(stack.engine.thinking.split())
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == thought
    assert body["usage"]["output_tokens"] == thought + len(stack.engine.reply.split())
    assert stack.engine.calls[-1].reasoning_effort == "low"
    response = await stack.client.responses.retrieve(body["id"])
    assert response.output_text == stack.engine.reply  # the SDK reads the message alone


async def test_the_stream_sends_reasoning_events_then_the_message(
        stack: ResponsesStack) -> None:
    events = await sse_events(stack, {"input": "Hi"})
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    thought = len(stack.engine.thinking.split())
    words = len(stack.engine.reply.split())
    assert types == ["response.created", "response.in_progress",
                     "response.output_item.added", "response.content_part.added",
                     *["response.reasoning_text.delta"] * thought,
                     "response.reasoning_text.done", "response.content_part.done",
                     "response.output_item.done",
                     "response.output_item.added", "response.content_part.added",
                     *["response.output_text.delta"] * words,
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.completed"]
    deltas = [e for e in events if e["type"] == "response.reasoning_text.delta"]
    assert {(e["output_index"], e["content_index"]) for e in deltas} == {(0, 0)}
    assert "".join(e["delta"] for e in deltas) == stack.engine.thinking
    added = events[2]["item"]
    assert (added["type"], added["status"], added["content"]) == ("reasoning", "in_progress",
                                                                  [])
    [done] = [e for e in events if e["type"] == "response.reasoning_text.done"]
    assert done["text"] == stack.engine.thinking and done["item_id"] == added["id"]
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert events[-1]["response"]["output"][0] == events[thought + 6]["item"]


async def test_a_streamed_reasoning_item_is_sealed_when_done(stack: ResponsesStack) -> None:
    events = await sse_events(stack, {"input": "Hi", "include": [ENCRYPTED]})
    added, done = (next(e for e in events if e["type"] == kind and
                        e["item"]["type"] == "reasoning")
                   for kind in ("response.output_item.added", "response.output_item.done"))
    assert "encrypted_content" not in added["item"]  # sealed once the text is whole
    token = done["item"]["encrypted_content"]
    assert events[-1]["response"]["output"][0]["encrypted_content"] == token
    await create(stack, {"input": [
        {"type": "reasoning", "summary": [], "encrypted_content": token},
        {"role": "assistant", "content": "x"}, {"role": "user", "content": "Hi"}]})
    assert assistant_turns(stack)[0].reasoning == stack.engine.thinking


async def test_background_work_reasons_and_replays_its_reasoning(
        stack: ResponsesStack) -> None:
    queued = await create(stack, {"input": "Hi", "background": True})
    for _ in range(500):
        polled = await stack.client.responses.retrieve(queued["id"])
        if polled.status == "completed":
            break
        await asyncio.sleep(0.01)
    assert polled.status == "completed"
    assert [item.type for item in polled.output] == ["reasoning", "message"]
    streamed = await stack.http.get(f"/v1/responses/{queued['id']}", headers=stack.auth(),
                                    params={"stream": "true"})
    events = [json.loads(line.removeprefix("data: ")) for line in streamed.text.splitlines()
              if line.startswith("data: ")]
    for event in events:
        validate(event, "ResponseStreamEvent")
    thought = "".join(e["delta"] for e in events
                      if e["type"] == "response.reasoning_text.delta")
    assert thought == stack.engine.thinking


async def test_the_sdk_assembles_the_reasoning_stream(stack: ResponsesStack) -> None:
    plain = await stack.client.responses.create(model=MODEL, input="Hi")
    async with stack.client.responses.stream(model=MODEL, input="Hi") as stream:
        thought = [event.delta async for event in stream
                   if event.type == "response.reasoning_text.delta"]
        streamed = await stream.get_final_response()
    assert "".join(thought) == stack.engine.thinking
    assert streamed.output_text == plain.output_text == stack.engine.reply
    [reasoning] = [i for i in streamed.output if i.type == "reasoning"]
    assert reasoning.content is not None
    assert reasoning.content[0].text == stack.engine.thinking


@pytest.mark.parametrize("effort", ["none", "minimal"])
async def test_effort_none_makes_no_reasoning_item(stack: ResponsesStack, effort: str) -> None:
    body = await create(stack, {"input": "Hi", "reasoning": {"effort": effort}})
    assert [i["type"] for i in body["output"]] == ["message"]
    assert body["usage"]["output_tokens_details"]["reasoning_tokens"] == 0
    assert stack.engine.calls[-1].reasoning_effort == effort


@pytest.mark.parametrize(("effort", "engine_effort"), [("xhigh", "high"), ("max", "high"),
                                                        ("medium", "medium"), (None, None)])
async def test_efforts_past_high_are_high(stack: ResponsesStack, effort: str | None,
                                          engine_effort: str | None) -> None:
    await create(stack, {"input": "Hi", "reasoning": {"effort": effort}})
    assert stack.engine.calls[-1].reasoning_effort == engine_effort


async def test_a_model_that_does_not_reason_accepts_reasoning_without_effect(
        tmp_path: Path) -> None:
    async with responses_stack(tmp_path) as stack:  # the plain fake: no reasoning
        body = await create(stack, {"input": "Hi", "include": [ENCRYPTED],
                                    "reasoning": {"effort": "high", "summary": "detailed"}})
        assert [i["type"] for i in body["output"]] == ["message"]
        assert body["reasoning"] == {"effort": "high", "summary": "detailed"}
        assert stack.engine.calls[-1].reasoning_effort is None


async def test_an_unknown_effort_or_summary_is_a_400_naming_it(stack: ResponsesStack) -> None:
    for reasoning, param in (({"effort": "extreme"}, "reasoning.effort"),
                             ({"summary": "long"}, "reasoning.summary")):
        with pytest.raises(openai.BadRequestError) as refused:
            await stack.client.responses.create(  # type: ignore[call-overload]
                model=MODEL, input="Hi", reasoning=reasoning)
        assert refused.value.body["param"] == param  # type: ignore[index]


async def test_a_stateless_second_turn_gets_its_reasoning_back(stack: ResponsesStack) -> None:
    first = await create(stack, {"input": "Hi", "store": False, "include": [ENCRYPTED]})
    reasoning, message = first["output"]
    token = reasoning["encrypted_content"]
    assert isinstance(token, str) and stack.engine.thinking not in token
    # As Codex hands it back: the reasoning item without its text, the token alone.
    given_back = {"type": "reasoning", "id": reasoning["id"], "summary": [],
                  "encrypted_content": token}
    second = await create(stack, {"store": False, "include": [ENCRYPTED], "input": [
        {"role": "user", "content": "Hi"}, given_back, message,
        {"role": "user", "content": "And then?"}]})
    [turn] = assistant_turns(stack)
    assert turn.reasoning == stack.engine.thinking
    assert turn.content == stack.engine.reply
    assert second["output"][0]["encrypted_content"] != token  # a fresh nonce each time


async def test_reasoning_text_given_back_reaches_the_model(stack: ResponsesStack) -> None:
    await create(stack, {"input": [
        {"role": "user", "content": "Hi"},
        {"type": "reasoning", "summary": [], "content": [
            {"type": "reasoning_text", "text": "Think first."}]},
        {"type": "reasoning", "summary": [], "content": [{"type": "text", "text": "Then."}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "reasoning", "summary": [], "content": [
            {"type": "reasoning_text", "text": "Now answer."}]},
        {"role": "assistant", "content": "Done."},
        {"type": "reasoning", "summary": [], "content": [
            {"type": "reasoning_text", "text": "Answers nothing."}]},
        {"role": "user", "content": "Next"}]})
    sent = stack.engine.calls[-1].messages
    assert [(m.role, m.reasoning) for m in sent] == [
        ("user", None), ("assistant", "Think first.\n\nThen."), ("tool", None),
        ("assistant", "Now answer."), ("user", None)]


async def test_a_changed_token_is_a_400_naming_it(stack: ResponsesStack) -> None:
    first = await create(stack, {"input": "Hi", "store": False, "include": [ENCRYPTED]})
    token: str = first["output"][0]["encrypted_content"]
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    for bad in (flipped, "not a token", token[:-8], "", "é" * 40):
        refused = await create(stack, {"store": False, "input": [
            {"role": "user", "content": "Hi"},
            {"type": "reasoning", "summary": [], "encrypted_content": bad},
            {"role": "user", "content": "Again"}]}, status=400)
        assert refused["error"]["param"] == "input[1].encrypted_content", bad
        assert refused["error"]["code"] == "invalid_encrypted_content"


async def test_another_key_cannot_open_a_token(stack: ResponsesStack) -> None:
    first = await create(stack, {"input": "Hi", "store": False, "include": [ENCRYPTED]})
    token = first["output"][0]["encrypted_content"]
    refused = await create(stack, {"store": False, "input": [
        {"type": "reasoning", "summary": [], "encrypted_content": token},
        {"role": "assistant", "content": "x"}, {"role": "user", "content": "Hi"}]},
        key=OTHER_KEY, status=400)
    assert refused["error"]["param"] == "input[0].encrypted_content"


async def test_a_chain_carries_the_reasoning_of_earlier_turns(stack: ResponsesStack) -> None:
    first = await create(stack, {"input": "Hi"})
    await create(stack, {"input": "More", "previous_response_id": first["id"]})
    [turn] = assistant_turns(stack)
    assert (turn.reasoning, turn.content) == (stack.engine.thinking, stack.engine.reply)
    items = await stack.http.get(f"/v1/responses/{first['id']}/input_items",
                                 headers=stack.auth())
    validate(items.json(), "ResponseItemList")


async def test_a_conversation_carries_the_reasoning(stack: ResponsesStack) -> None:
    conversation = await stack.client.conversations.create()
    await create(stack, {"input": "Hi", "conversation": conversation.id})
    listed = await stack.http.get(f"/v1/conversations/{conversation.id}/items",
                                  headers=stack.auth())
    kinds = [item["type"] for item in listed.json()["data"]]
    assert sorted(kinds) == ["message", "message", "reasoning"]
    for item in listed.json()["data"]:
        validate(item, "ConversationItem")
    await create(stack, {"input": "More", "conversation": conversation.id})
    [turn] = assistant_turns(stack)
    assert turn.reasoning == stack.engine.thinking


async def test_retrieve_seals_the_reasoning_only_when_asked(stack: ResponsesStack) -> None:
    first = await create(stack, {"input": "Hi", "include": [ENCRYPTED]})
    plain = await stack.http.get(f"/v1/responses/{first['id']}", headers=stack.auth())
    assert "encrypted_content" not in plain.json()["output"][0]
    asked = await stack.http.get(f"/v1/responses/{first['id']}",
                                 params={"include[]": ENCRYPTED}, headers=stack.auth())
    validate(asked.json(), "Response")
    token = asked.json()["output"][0]["encrypted_content"]
    await create(stack, {"input": [
        {"type": "reasoning", "summary": [], "encrypted_content": token},
        {"role": "assistant", "content": "x"}, {"role": "user", "content": "Hi"}]})
    assert assistant_turns(stack)[0].reasoning == stack.engine.thinking


async def test_a_tool_call_after_reasoning(stack: ResponsesStack) -> None:
    body = await create(stack, {"input": "Weather?", "tool_choice": "required", "tools": [
        {"type": "function", "name": "weather", "parameters": {"type": "object"}}]})
    assert [i["type"] for i in body["output"]] == ["reasoning", "function_call"]


async def test_a_replayed_reasoning_response_is_the_spec_s_events(
        stack: ResponsesStack) -> None:
    body = await create(stack, {"input": "Hi", "include": [ENCRYPTED]})
    events = replayed_events(body, "response.completed")
    for number, event in enumerate(events):
        validate({**event, "sequence_number": number}, "ResponseStreamEvent")
    types = [e["type"] for e in events]
    assert types[2:8] == ["response.output_item.added", "response.content_part.added",
                          "response.reasoning_text.delta", "response.reasoning_text.done",
                          "response.content_part.done", "response.output_item.done"]
    assert "encrypted_content" not in events[2]["item"]


async def test_input_tokens_counts_the_reasoning_given_back(stack: ResponsesStack) -> None:
    count = await stack.http.post("/v1/responses/input_tokens", headers=stack.auth(), json={
        "model": MODEL, "input": [
            {"type": "reasoning", "summary": [], "encrypted_content": "x" * 64},
            {"role": "assistant", "content": "x"}, {"role": "user", "content": "Hi"}]})
    assert count.status_code == 400
    assert count.json()["error"]["param"] == "input[0].encrypted_content"


def test_the_seal_key_is_made_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "reasoning-seal.key"
    first = ReasoningSeal.from_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = first.seal("a thought", "key-1")
    again = ReasoningSeal.from_key_file(path)  # the next boot
    assert again.open(token, "key-1", "p", 10_000) == "a thought"
    with pytest.raises(InvalidRequest) as other_owner:
        again.open(token, "key-2", "p", 10_000)
    assert other_owner.value.param == "p"
    elsewhere = ReasoningSeal.from_key_file(tmp_path / "other.key")
    with pytest.raises(InvalidRequest):
        elsewhere.open(token, "key-1", "p", 10_000)
    # One character changed to another of base64's (the standard one's '+', a shift).
    for bad in (token[:6] + "+" + token[7:], "A" + token, token.rstrip("=") + "A"):
        with pytest.raises(InvalidRequest):
            again.open(bad, "key-1", "p", 10_000)
    with pytest.raises(InvalidRequest) as too_long:
        again.open(token, "key-1", "p", len(token) - 1)
    assert too_long.value.code == "string_above_max_length"


def test_a_damaged_key_file_stops_the_boot(tmp_path: Path) -> None:
    path = tmp_path / "reasoning-seal.key"
    path.write_text("short\n")
    with pytest.raises(ConfigError):
        ReasoningSeal.from_key_file(path)
