"""Stored responses over the fake engine and the real SQLite state store: retrieve (with
include), previous_response_id chains, conversations, keys that see none of another's state,
a server without a store, truncation, input_tokens, and background responses (polled,
streamed from starting_after, cancelled, charged when their work completes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import openai
import pytest

from appliance.api.bounds import RequestBounds
from appliance.api.stored_state import StoredResponse
from appliance.engines.base import CancelToken, ChatEvent, ChatParams, TextDelta
from appliance.ledger import KeyLimits
from appliance.store import StoreBounds
from tests.fakes import FakeChatEngine, FakeKeys
from tests.fast.responses_stack import API_KEY, ResponsesStack, responses_stack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
POLLS = 500  # a background response is polled at most this many times


@dataclass
class HeldEngine(FakeChatEngine):
    """Holds every word until ``gate`` opens: background work stays in progress meanwhile."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)

    async def chat(self, params: ChatParams,
                   cancel: CancelToken) -> AsyncGenerator[ChatEvent, None]:
        async for event in super().chat(params, cancel):
            if isinstance(event, TextDelta):
                await self.gate.wait()
            yield event


@dataclass
class HalfHeldEngine(FakeChatEngine):
    """Lets the first ``through`` words out, then holds the rest until ``gate`` opens;
    ``holding`` is set once it holds."""

    through: int = 2
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    holding: asyncio.Event = field(default_factory=asyncio.Event)

    async def chat(self, params: ChatParams,
                   cancel: CancelToken) -> AsyncGenerator[ChatEvent, None]:
        words = 0
        async for event in super().chat(params, cancel):
            if isinstance(event, TextDelta):
                words += 1
                if words > self.through:
                    self.holding.set()
                    await self.gate.wait()
            yield event


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[ResponsesStack]:
    async with responses_stack(tmp_path, engine=HeldEngine(context_length=256)) as opened:
        held = opened.engine
        assert isinstance(held, HeldEngine)
        held.gate.set()  # open unless a test closes it
        yield opened


def owner(stack: ResponsesStack) -> str:
    record = stack.services.keys.lookup(API_KEY)
    assert record is not None
    return record.id


def gate(stack: ResponsesStack) -> asyncio.Event:
    assert isinstance(stack.engine, HeldEngine)
    return stack.engine.gate


async def settled(stack: ResponsesStack, response_id: str,
                  client: openai.AsyncOpenAI | None = None) -> openai.types.responses.Response:
    for _ in range(POLLS):
        response = await (client or stack.client).responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        await asyncio.sleep(0.01)
    raise AssertionError(f"{response_id} never finished")


async def test_a_stored_response_is_retrieved_as_it_was_returned(stack: ResponsesStack) -> None:
    created = await stack.client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Hi", include=["message.output_text.logprobs"])
    made = created.parse()
    raw = await stack.http.get(f"/v1/responses/{made.id}", headers=stack.auth(),
                               params={"include": "message.output_text.logprobs"})
    validate(raw.json(), "Response")
    assert raw.json() == json.loads(created.content)
    assert raw.json()["output"][0]["content"][0]["logprobs"]
    plain = await stack.client.responses.retrieve(made.id)
    assert plain.output[0].content[0].logprobs == []  # type: ignore[union-attr]
    bad = await stack.http.get(f"/v1/responses/{made.id}", headers=stack.auth(),
                               params={"include": "nonsense"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "include"


async def test_a_chain_replays_every_turn_without_old_instructions(
        stack: ResponsesStack) -> None:
    first = await stack.client.responses.create(model="gpt-4o-mini", input="One",
                                                instructions="Old rules.")
    second = await stack.client.responses.create(model="gpt-4o-mini", input="Two",
                                                 previous_response_id=first.id)
    await stack.client.responses.create(model="gpt-4o-mini", input="Three",
                                        instructions="New rules.",
                                        previous_response_id=second.id)
    sent = stack.engine.calls[-1].messages
    reply = stack.engine.reply
    assert [(m.role, m.content) for m in sent] == [
        ("system", "New rules."), ("user", "One"), ("assistant", reply), ("user", "Two"),
        ("assistant", reply), ("user", "Three")]


async def test_store_false_keeps_nothing(stack: ResponsesStack) -> None:
    made = await stack.client.responses.create(model="gpt-4o-mini", input="Hi", store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await stack.client.responses.create(model="gpt-4o-mini", input="Again",
                                            previous_response_id=made.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


async def test_another_key_sees_none_of_it(stack: ResponsesStack) -> None:
    made = await stack.client.responses.create(model="gpt-4o-mini", input="Hi")
    with pytest.raises(openai.NotFoundError):
        await stack.other.responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        await stack.other.responses.create(model="gpt-4o-mini", input="Again",
                                           previous_response_id=made.id)
    with pytest.raises(openai.NotFoundError):
        await stack.other.responses.cancel(made.id)


async def test_a_conversation_is_continued_and_grows(stack: ResponsesStack) -> None:
    assert stack.state is not None
    conversation = await stack.state.create_conversation(
        owner(stack), {}, [{"id": "msg_seed", "type": "message", "role": "user",
                            "content": [{"type": "input_text", "text": "Earlier"}]}])
    made = await stack.client.responses.create(model="gpt-4o-mini", input="Now",
                                               conversation=conversation.id)
    assert made.conversation is not None and made.conversation.id == conversation.id
    assert [m.content for m in stack.engine.calls[-1].messages] == ["Earlier", "Now"]
    items = await stack.state.all_items(owner(stack), conversation.id, 100)
    assert items is not None
    assert [i["type"] for i in items] == ["message", "message", "message"]
    assert items[-1]["id"] == made.output[0].id
    await stack.client.responses.create(model="gpt-4o-mini", input="Later",
                                        conversation={"id": conversation.id})
    assert [m.content for m in stack.engine.calls[-1].messages] == [
        "Earlier", "Now", stack.engine.reply, "Later"]
    with pytest.raises(openai.NotFoundError) as caught:
        await stack.other.responses.create(model="gpt-4o-mini", input="x",
                                           conversation=conversation.id)
    assert caught.value.body["param"] == "conversation"  # type: ignore[index]


async def test_without_a_state_store_nothing_is_stored(tmp_path: Path) -> None:
    async with responses_stack(tmp_path, with_state=False) as stack:
        made = await stack.client.responses.create(model="gpt-4o-mini", input="Hi")
        assert made.store is False  # in effect: there is nowhere to keep it
        with pytest.raises(openai.NotFoundError):
            await stack.client.responses.retrieve(made.id)
        raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
            "model": "gpt-4o-mini", "input": "Hi", "background": True})
        assert raw.status_code == 400 and raw.json()["error"]["param"] == "background"


async def test_truncation_disabled_refuses_an_input_too_long(tmp_path: Path) -> None:
    async with responses_stack(tmp_path, engine=FakeChatEngine(context_length=20)) as stack:
        with pytest.raises(openai.BadRequestError) as caught:
            await stack.client.responses.create(model="gpt-4o-mini", input="word " * 30)
        assert caught.value.code == "context_length_exceeded"
        assert caught.value.body["param"] == "input"  # type: ignore[index]


async def test_truncation_auto_drops_the_oldest_items(tmp_path: Path) -> None:
    async with responses_stack(tmp_path, engine=FakeChatEngine(context_length=40)) as stack:
        history = [{"role": "user" if i % 2 == 0 else "assistant",
                    "content": f"turn {i} has five words"} for i in range(12)]
        raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
            "model": "gpt-4o-mini", "instructions": "Keep me.", "truncation": "auto",
            "input": [*history, {"role": "user", "content": "last"}]})
        assert raw.status_code == 200, raw.text
        dropped = int(raw.headers["x-appliance-truncated-messages"])
        sent = stack.engine.calls[-1].messages
        assert sent[0].content == "Keep me." and sent[-1].content == "last"
        assert len(sent) == 1 + len(history) + 1 - dropped
        assert sum(len(m.content.split()) + 1 for m in sent) <= 40
        # One message fewer dropped would not have fitted.
        assert sum(len(m.content.split()) + 1 for m in sent) + 6 > 40
        assert raw.json()["truncation"] == "auto"


async def test_input_tokens_counts_what_create_would_read(stack: ResponsesStack) -> None:
    counted = await stack.client.responses.input_tokens.count(
        model="gpt-4o-mini", instructions="Be brief.", input="Hello there")
    assert counted.object == "response.input_tokens"
    made = await stack.client.responses.create(model="gpt-4o-mini", instructions="Be brief.",
                                               input="Hello there")
    assert made.usage is not None and counted.input_tokens == made.usage.input_tokens
    chained = await stack.client.responses.input_tokens.count(
        model="gpt-4o-mini", input="More", previous_response_id=made.id)
    assert chained.input_tokens > counted.input_tokens
    row = stack.ledger.rows[-1]
    assert row.endpoint == "/v1/responses/input_tokens" and row.price == 0.0
    assert row.kind is None  # no model request: the usage reports do not count it


async def test_a_background_response_is_queued_then_completes(stack: ResponsesStack) -> None:
    gate(stack).clear()
    raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Hi", "background": True})
    assert raw.status_code == 200, raw.text
    queued = raw.json()
    validate(queued, "Response")
    assert queued["status"] == "queued" and queued["background"] is True
    row = next(r for r in stack.ledger.rows if r.request_id == raw.headers["x-request-id"])
    assert row.status == "started"  # charged when the work completes, not before
    polled = await stack.client.responses.retrieve(queued["id"])
    assert polled.status in ("queued", "in_progress")
    gate(stack).set()
    done = await settled(stack, queued["id"])
    assert done.status == "completed" and done.output_text == stack.engine.reply
    for _ in range(POLLS):
        row = next(r for r in stack.ledger.rows if r.request_id == raw.headers["x-request-id"])
        if row.status != "started":
            break
        await asyncio.sleep(0.01)
    assert (row.status, row.price, row.endpoint) == ("ok", 0.25, "/v1/responses")
    assert done.usage is not None and row.completion_tokens == done.usage.output_tokens


async def test_a_background_stream_resumes_after_a_sequence_number(
        stack: ResponsesStack) -> None:
    gate(stack).clear()
    made = await stack.client.responses.create(model="gpt-4o-mini", input="Hi",
                                               background=True)
    reading = asyncio.create_task(stack.http.get(
        f"/v1/responses/{made.id}", headers=stack.auth(),
        params={"stream": "true", "starting_after": "1"}))
    await asyncio.sleep(0)
    gate(stack).set()
    streamed = await reading
    events = [json.loads(frame.split("data: ", 1)[1])
              for frame in streamed.text.split("\n\n") if frame.strip()]
    for event in events:
        validate(event, "ResponseStreamEvent")
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(2, 2 + len(events)))
    assert events[-1]["type"] == "response.completed"
    # Once finished, the whole stream can be read again from the start.
    again = await stack.http.get(f"/v1/responses/{made.id}", headers=stack.auth(),
                                 params={"stream": "true"})
    replayed = [json.loads(frame.split("data: ", 1)[1])
                for frame in again.text.split("\n\n") if frame.strip()]
    assert replayed[0]["type"] == "response.created" and replayed[2:] == events


def _events(text: str) -> list[dict[str, object]]:
    return [json.loads(frame.split("data: ", 1)[1]) for frame in text.split("\n\n")
            if frame.strip()]


async def test_a_late_stream_keeps_its_frames_past_other_keys_work_and_always_ends(
        stack: ResponsesStack) -> None:
    """The last 16 finished jobs were the server's, so another key's work pushed a key's
    frames out; and a stream rebuilt from the body, asked to start after an event it does
    not have, answered 200 with no events at all."""
    mine = await stack.client.responses.create(model="gpt-4o-mini", input="Hi",
                                               background=True)
    assert (await settled(stack, mine.id)).status == "completed"
    live = _events((await stack.http.get(f"/v1/responses/{mine.id}", headers=stack.auth(),
                                         params={"stream": "true"})).text)
    for _ in range(17):
        theirs = await stack.other.responses.create(model="gpt-4o-mini", input="Hi",
                                                    background=True)
        assert (await settled(stack, theirs.id, stack.other)).status == "completed"
    kept = _events((await stack.http.get(f"/v1/responses/{mine.id}", headers=stack.auth(),
                                         params={"stream": "true"})).text)
    assert kept == live
    for _ in range(16):  # now this key's own work pushes it out
        made = await stack.client.responses.create(model="gpt-4o-mini", input="Hi",
                                                   background=True)
        assert (await settled(stack, made.id)).status == "completed"
    after = len(live) - 2
    rebuilt = _events((await stack.http.get(
        f"/v1/responses/{mine.id}", headers=stack.auth(),
        params={"stream": "true", "starting_after": str(after)})).text)
    assert [(e["type"], e["sequence_number"]) for e in rebuilt] == [
        ("response.completed", after + 1)]
    validate(rebuilt[0], "ResponseStreamEvent")


async def test_a_background_response_can_be_cancelled(stack: ResponsesStack) -> None:
    gate(stack).clear()
    raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Hi", "background": True})
    response_id = raw.json()["id"]
    cancelled = await stack.http.post(f"/v1/responses/{response_id}/cancel",
                                      headers=stack.auth())
    assert cancelled.status_code == 200, cancelled.text
    validate(cancelled.json(), "Response")
    assert cancelled.json()["status"] == "cancelled"
    assert (await stack.client.responses.retrieve(response_id)).status == "cancelled"
    row = next(r for r in stack.ledger.rows if r.request_id == raw.headers["x-request-id"])
    assert row.status == "cancelled" and row.price == 0.0
    again = await stack.http.post(f"/v1/responses/{response_id}/cancel", headers=stack.auth())
    assert again.status_code == 400
    gate(stack).set()
    plain = await stack.client.responses.create(model="gpt-4o-mini", input="Hi")
    refused = await stack.http.post(f"/v1/responses/{plain.id}/cancel", headers=stack.auth())
    assert refused.status_code == 400 and "background" in refused.json()["error"]["message"]


async def test_a_cancelled_background_response_keeps_what_it_streamed(tmp_path: Path) -> None:
    """The words made before the cancel are charged, so they are in the body too: the
    open message was dropped, and GET answered an empty output."""
    engine = HalfHeldEngine(context_length=256)
    async with responses_stack(tmp_path, engine=engine) as stack:
        raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
            "model": "gpt-4o-mini", "input": "Hi", "background": True})
        response_id = raw.json()["id"]
        await asyncio.wait_for(engine.holding.wait(), 5)
        cancelled = (await stack.http.post(f"/v1/responses/{response_id}/cancel",
                                           headers=stack.auth())).json()
        validate(cancelled, "Response")
        assert cancelled["status"] == "cancelled"
        [message] = cancelled["output"]
        text = message["content"][0]["text"]
        assert message["status"] == "incomplete" and text
        assert engine.reply.startswith(text) and len(text) < len(engine.reply)
        assert (await stack.client.responses.retrieve(response_id)).output_text == text
        streamed = await stack.http.get(f"/v1/responses/{response_id}", headers=stack.auth(),
                                        params={"stream": "true"})
        events = [json.loads(frame.split("data: ", 1)[1])
                  for frame in streamed.text.split("\n\n") if frame.strip()]
        for event in events:
            validate(event, "ResponseStreamEvent")
        kinds = [event["type"] for event in events]
        # OpenAI's stream has no cancelled event: the ending is response.failed, its
        # response's status "cancelled".
        assert kinds[-3:] == ["response.content_part.done", "response.output_item.done",
                              "response.failed"], ", ".join(kinds)
        assert events[-1]["response"]["status"] == "cancelled"
        assert events[-1]["response"]["output"] == cancelled["output"]
        assert kinds.count("response.output_item.added") == 1


async def test_a_background_response_deleted_while_it_runs_stays_deleted(
        stack: ResponsesStack) -> None:
    """Its work stored its ending after the DELETE, and the deleted response came back."""
    gate(stack).clear()
    raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Hi", "background": True})
    response_id = raw.json()["id"]
    deleted = await stack.http.delete(f"/v1/responses/{response_id}", headers=stack.auth())
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"id": response_id, "object": "response", "deleted": True}
    gate(stack).set()
    for _ in range(POLLS):
        row = next(r for r in stack.ledger.rows if r.request_id == raw.headers["x-request-id"])
        if row.status != "started":
            break
        await asyncio.sleep(0.01)
    assert row.status == "cancelled"
    for method, path, params in (
            ("GET", f"/v1/responses/{response_id}", {}),
            ("GET", f"/v1/responses/{response_id}", {"stream": "true"}),
            ("GET", f"/v1/responses/{response_id}/input_items", {}),
            ("POST", f"/v1/responses/{response_id}/cancel", {}),
            ("DELETE", f"/v1/responses/{response_id}", {})):
        answer = await stack.http.request(method, path, headers=stack.auth(), params=params)
        assert answer.status_code == 404, (method, path, params, answer.text)
    assert await stack.services.state.get_response(owner(stack), response_id) is None


async def test_background_responses_in_flight_are_bounded_per_key(tmp_path: Path) -> None:
    engine = HeldEngine(context_length=256)
    async with responses_stack(tmp_path, engine=engine) as stack:
        bounds = stack.services.bounds
        made = [await stack.client.responses.create(model="gpt-4o-mini", input="Hi",
                                                    background=True)
                for _ in range(bounds.max_background_per_key)]
        with pytest.raises(openai.RateLimitError):
            await stack.client.responses.create(model="gpt-4o-mini", input="Hi",
                                                background=True)
        other = await stack.other.responses.create(model="gpt-4o-mini", input="Hi",
                                                   background=True)
        engine.gate.set()
        for response in made:
            assert (await settled(stack, response.id)).status == "completed"
        assert (await settled(stack, other.id, stack.other)).status == "completed"


async def test_a_background_response_holds_its_keys_place_until_its_work_ends(
        tmp_path: Path) -> None:
    """Its place was given back when the POST answered: a key limited to one request in
    flight ran up to eight background responses and a chat beside them. Polling the running
    one calls no model and takes no place."""
    engine = HeldEngine(context_length=256)
    async with responses_stack(tmp_path, engine=engine) as stack:
        keys = stack.services.keys
        assert isinstance(keys, FakeKeys)
        keys.secrets[API_KEY] = replace(keys.secrets[API_KEY],
                                        limits=KeyLimits(max_concurrent=1))
        made = await stack.client.responses.create(model="gpt-4o-mini", input="Hi",
                                                   background=True)
        for _ in range(2):
            with pytest.raises(openai.RateLimitError) as busy:
                await stack.client.responses.create(model="gpt-4o-mini", input="Hi",
                                                    background=True)
            assert "concurrent" in busy.value.message
        assert (await stack.client.responses.retrieve(made.id)).status == "in_progress"
        engine.gate.set()
        assert (await settled(stack, made.id)).status == "completed"
        assert (await stack.client.responses.create(model="gpt-4o-mini", input="Hi")).id


async def test_work_left_unfinished_by_a_stopped_server_reads_as_failed(
        stack: ResponsesStack) -> None:
    assert stack.state is not None
    made = await stack.client.responses.create(model="gpt-4o-mini", input="Hi")
    stored = await stack.state.get_response(owner(stack), made.id)
    assert stored is not None
    await stack.state.put_response(StoredResponse(
        "resp_orphan", stored.owner, stored.created_at, stored.model, None, None,
        stored.input_items, {**stored.body, "id": "resp_orphan", "status": "in_progress",
                             "background": True}))
    orphan = await stack.client.responses.retrieve("resp_orphan")
    assert orphan.status == "failed" and orphan.error is not None


async def test_retrieve_refuses_bad_query_values(stack: ResponsesStack) -> None:
    made = await stack.client.responses.create(model="gpt-4o-mini", input="Hi")
    for params, param in ([{"stream": "maybe"}, "stream"],
                          [{"starting_after": "-3"}, "starting_after"],
                          [{"starting_after": "\u00b2"}, "starting_after"],
                          [{"stream": "true"}, "stream"]):
        raw = await stack.http.get(f"/v1/responses/{made.id}", headers=stack.auth(),
                                   params=params)
        assert raw.status_code == 400, raw.text
        assert raw.json()["error"]["param"] == param




async def test_the_shutdown_waits_for_background_work_then_cuts_it(
        stack: ResponsesStack) -> None:
    gate(stack).clear()
    raw = await stack.http.post("/v1/responses", headers=stack.auth(), json={
        "model": "gpt-4o-mini", "input": "Hi", "background": True})
    drain = stack.services.drain
    assert drain.in_flight == 1  # the drain counts it as it counts requests
    assert drain.cut_all() == 1
    cut = await settled(stack, raw.json()["id"])
    assert cut.status == "failed" and cut.error is not None
    assert "shut down" in cut.error.message
    for _ in range(POLLS):
        row = next(r for r in stack.ledger.rows if r.request_id == raw.headers["x-request-id"])
        if row.status != "started":
            break
        await asyncio.sleep(0.01)
    assert (row.status, row.error_code, row.price) == ("error", "shutting_down", 0.0)
    assert drain.in_flight == 0


async def test_a_chain_longer_than_its_bound_or_looping_is_a_400(tmp_path: Path) -> None:
    bounds = replace(RequestBounds(), max_chain_turns=3, max_body_bytes=256 * 1024)
    async with responses_stack(tmp_path, bounds=bounds) as stack:
        assert stack.state is not None
        previous: str | None = None
        for turn in range(4):  # the last one continues a chain of 3: the bound
            made = await stack.client.responses.create(model="gpt-4o-mini", input=f"t{turn}",
                                                       previous_response_id=previous)
            previous = made.id
        with pytest.raises(openai.BadRequestError) as caught:
            await stack.client.responses.create(model="gpt-4o-mini", input="t4",
                                                previous_response_id=previous)
        assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
        # Ids made here cannot form a loop; a rewritten store could. Its bound ends it.
        stored = await stack.state.get_response(owner(stack), made.id)
        assert stored is not None
        for this, that in (("resp_loop_a", "resp_loop_b"), ("resp_loop_b", "resp_loop_a")):
            await stack.state.put_response(StoredResponse(
                this, stored.owner, stored.created_at, stored.model, that, None,
                stored.input_items, {**stored.body, "id": this}))
        with pytest.raises(openai.BadRequestError) as looped:
            await stack.client.responses.create(model="gpt-4o-mini", input="again",
                                                previous_response_id="resp_loop_a")
        assert looped.value.body["param"] == "previous_response_id"  # type: ignore[index]


async def test_the_key_s_storage_quota_is_asked_first_and_never_loses_an_answer(
        tmp_path: Path) -> None:
    async with responses_stack(tmp_path, store_bounds=StoreBounds(max_owner_bytes=600)) as stack:
        with pytest.raises(openai.RateLimitError) as caught:
            await stack.client.responses.create(model="gpt-4o-mini", input="x" * 1000)
        assert caught.value.code == "storage_quota_exceeded"
        assert caught.value.body["param"] == "store"  # type: ignore[index]
        assert stack.engine.calls == []  # refused before the engine ran
        # Room for the input, none for the answer: delivered all the same, and said so.
        raw = await stack.http.post("/v1/responses", headers=stack.auth(),
                                    json={"model": "gpt-4o-mini", "input": "Hi"})
        assert raw.status_code == 200, raw.text
        assert raw.headers["x-appliance-not-stored"] == "storage_quota_exceeded"
        assert raw.json()["output"][0]["content"][0]["text"] == stack.engine.reply
        stored = await stack.client.responses.create(model="gpt-4o-mini", input="Hi",
                                                     store=False)
        assert stored.status == "completed"
