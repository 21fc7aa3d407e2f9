"""The stored-state routes through the official SDK: conversations and their items, stored chat
completions (``store: true``), stored responses' delete and input items; every body checked
against OpenAI's spec; a second key gets the same 404 as an unknown id for all of it; what one
key may keep (its storage quota, items per conversation)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from appliance.api.stored_state import StoredResponse
from appliance.store import StoreBounds
from tests.compatibility_rows import DOC, ROW
from tests.openapi_contract import validate
from tests.state_stack import ALICE_SECRET, BOB_SECRET, StateStack, state_stack

pytestmark = pytest.mark.anyio
# Any: the SDK types items as a union of TypedDicts that a plain dict literal is not.
MESSAGE: Any = {"type": "message", "role": "user", "content": "What is tea?"}
MINE: Any = {**MESSAGE, "id": "msg_mine"}  # a client's own id, twice below


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[StateStack]:
    async with state_stack(tmp_path) as made:
        yield made


async def _spec_checked(stack: StateStack, method: str, path: str, schema: str,
                        **kwargs: Any) -> dict[str, Any]:
    response = await stack.raw(method, path, **kwargs)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    validate(body, schema)
    return body


# -- conversations ------------------------------------------------------------------------


async def test_a_conversation_through_the_sdk(stack: StateStack) -> None:
    client = stack.client
    conv = await client.conversations.create(metadata={"topic": "tea"}, items=[MESSAGE])
    assert conv.id.startswith("conv_")
    assert conv.metadata == {"topic": "tea"}
    assert (await client.conversations.retrieve(conv.id)).id == conv.id
    updated = await client.conversations.update(conv.id, metadata={"topic": "coffee"})
    assert updated.metadata == {"topic": "coffee"}
    added = await client.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "assistant", "content": "A drink."},
        {"type": "function_call", "call_id": "call_1", "name": "brew", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "brewed"},
    ])
    assert [item.type for item in added.data] == ["message", "function_call",
                                                  "function_call_output"]
    assert added.first_id == added.data[0].id
    listed = [item async for item in client.conversations.items.list(conv.id, order="asc")]
    assert [item.id for item in listed[1:]] == [item.id for item in added.data]
    first = listed[0]
    assert first.type == "message"
    assert first.role == "user"
    assert first.content[0].type == "input_text"
    assert first.content[0].text == "What is tea?"
    got = await client.conversations.items.retrieve(first.id, conversation_id=conv.id)
    assert got.id == first.id
    after_delete = await client.conversations.items.delete(first.id, conversation_id=conv.id)
    assert after_delete.id == conv.id
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.retrieve(first.id, conversation_id=conv.id)
    deleted = await client.conversations.delete(conv.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (conv.id, True,
                                                             "conversation.deleted")
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(conv.id)


async def test_conversation_bodies_match_the_spec(stack: StateStack) -> None:
    conv = await _spec_checked(stack, "POST", "/v1/conversations", "ConversationResource",
                               json={"metadata": {"a": "b"}, "items": [MESSAGE]})
    base = f"/v1/conversations/{conv['id']}"
    await _spec_checked(stack, "GET", base, "ConversationResource")
    await _spec_checked(stack, "POST", base, "ConversationResource", json={"metadata": {}})
    added = await _spec_checked(stack, "POST", f"{base}/items", "ConversationItemList", json={
        "items": [{"type": "message", "role": "assistant",
                   "content": [{"type": "output_text", "text": "Hi."}]},
                  {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                  {"type": "function_call_output", "call_id": "c", "output": "done"},
                  {"type": "reasoning", "summary": []}]})
    listed = await _spec_checked(stack, "GET", f"{base}/items?limit=2&include=reasoning."
                                 "encrypted_content", "ConversationItemList")
    assert listed["has_more"] is True
    for item in added["data"]:
        await _spec_checked(stack, "GET", f"{base}/items/{item['id']}", "ConversationItem")
    await _spec_checked(stack, "DELETE", f"{base}/items/{added['data'][0]['id']}",
                        "ConversationResource")
    await _spec_checked(stack, "DELETE", base, "DeletedConversationResource")


async def test_items_page_through_with_the_sdk(stack: StateStack) -> None:
    client = stack.client
    turns: list[Any] = [{**MESSAGE, "content": f"turn {n}"} for n in range(25)]
    conv = await client.conversations.create(items=turns[:20])
    await client.conversations.items.create(conv.id, items=turns[20:])
    texts = [item.content[0].text  # type: ignore[union-attr,index]
             async for item in client.conversations.items.list(conv.id, limit=7)]
    # Newest first by default, as OpenAI lists them; every page followed by its cursor.
    assert texts == [f"turn {n}" for n in reversed(range(25))]
    ascending = [item.content[0].text  # type: ignore[union-attr,index]
                 async for item in client.conversations.items.list(conv.id, limit=10,
                                                                   order="asc")]
    assert ascending == [f"turn {n}" for n in range(25)]


async def test_client_item_ids_are_replaced_with_fresh_ones(stack: StateStack) -> None:
    conv = await stack.client.conversations.create(
        items=[MINE, MINE])
    ids = [item.id async for item in stack.client.conversations.items.list(conv.id)]
    assert len(set(ids)) == 2
    assert "msg_mine" not in ids


# -- stored chat completions --------------------------------------------------------------


async def test_a_stored_completion_through_the_sdk(stack: StateStack) -> None:
    client = stack.client
    made = await client.chat.completions.create(
        model="gpt-4o-mini", store=True, metadata={"team": "tea"},
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
    got = await client.chat.completions.retrieve(made.id)
    assert got.choices[0].message.content == made.choices[0].message.content
    assert got.metadata == {"team": "tea"}
    listed = [c.id async for c in client.chat.completions.list(metadata={"team": "tea"})]
    assert listed == [made.id]
    assert [c.id async for c in client.chat.completions.list(model="gpt-4o-mini")] == [made.id]
    assert [c.id async for c in client.chat.completions.list(model="other")] == []
    assert [c.id async for c in client.chat.completions.list(metadata={"team": "x"})] == []
    messages = [m async for m in client.chat.completions.messages.list(made.id)]
    assert [(m.id, m.role, m.content) for m in messages] == [
        (f"{made.id}-0", "system", "Be brief."), (f"{made.id}-1", "user", "Hi")]
    assert messages[1].content_parts is not None
    updated = await client.chat.completions.update(made.id, metadata={"team": "coffee"})
    assert updated.metadata == {"team": "coffee"}
    deleted = await client.chat.completions.delete(made.id)
    assert (deleted.id, deleted.deleted) == (made.id, True)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.retrieve(made.id)


async def test_a_streamed_completion_is_stored_assembled(stack: StateStack) -> None:
    stream = await stack.client.chat.completions.create(
        model="fake-chat", store=True, stream=True,
        messages=[{"role": "user", "content": "Hi"}])
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    got = await stack.client.chat.completions.retrieve(chunks[0].id)
    assert got.object == "chat.completion"
    assert got.choices[0].message.content == text == stack.engine.reply
    assert got.choices[0].finish_reason == "stop"
    assert got.usage is not None


async def test_stored_completion_bodies_match_the_spec(stack: StateStack) -> None:
    made = (await stack.raw("POST", "/v1/chat/completions", json={
        "model": "fake-chat", "store": True, "metadata": {"k": "v"},
        "messages": [{"role": "user", "content": "Hi"}]})).json()
    base = f"/v1/chat/completions/{made['id']}"
    await _spec_checked(stack, "GET", base, "CreateChatCompletionResponse")
    await _spec_checked(stack, "GET", "/v1/chat/completions?metadata[k]=v&limit=5",
                        "ChatCompletionList")
    await _spec_checked(stack, "POST", base, "CreateChatCompletionResponse",
                        json={"metadata": {"k": "w"}})
    messages = (await stack.raw("GET", f"{base}/messages")).json()
    # The spec's message list reuses the assistant's response message, whose `role` enum is
    # ["assistant"], for the request's messages too (OpenAI itself lists "user" there): all
    # but that enum is checked.
    validate({**messages, "data": [{**m, "role": "assistant"} for m in messages["data"]]},
             "ChatCompletionMessageList")
    assert [m["role"] for m in messages["data"]] == ["user"]
    await _spec_checked(stack, "DELETE", base, "ChatCompletionDeleted")


async def test_store_needs_a_store(tmp_path: Path) -> None:
    async with state_stack(tmp_path, state=None) as bare:
        with pytest.raises(openai.BadRequestError) as refused:
            await bare.client.chat.completions.create(
                model="fake-chat", store=True, messages=[{"role": "user", "content": "Hi"}])
        assert refused.value.body["param"] == "store"  # type: ignore[index]
        for path in ("/v1/conversations/conv_x", "/v1/chat/completions",
                     "/v1/responses/resp_x/input_items"):
            assert (await bare.raw("GET", path)).status_code == 404


async def test_store_false_stores_nothing(stack: StateStack) -> None:
    made = await stack.client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.NotFoundError):
        await stack.client.chat.completions.retrieve(made.id)


# -- stored responses ---------------------------------------------------------------------


async def _stored_response(stack: StateStack, inputs: int = 3,
                           owner: str | None = None) -> str:
    response_id = f"resp_{time.monotonic_ns()}"
    await stack.store.put_response(StoredResponse(
        id=response_id, owner=owner or stack.alice.id, created_at=time.time(),
        model="fake-chat", previous_response_id=None, conversation_id=None,
        input_items=tuple({"id": f"msg_{n}", "type": "message", "role": "user",
                           "status": "completed",
                           "content": [{"type": "input_text", "text": f"input {n}"}]}
                          for n in range(inputs)),
        body={"id": response_id, "object": "response"}))
    return response_id


async def test_input_items_and_delete_through_the_sdk(stack: StateStack) -> None:
    response_id = await _stored_response(stack, inputs=5)
    items = [item.id async for item in stack.client.responses.input_items.list(response_id,
                                                                                limit=2)]
    assert items == ["msg_4", "msg_3", "msg_2", "msg_1", "msg_0"]
    page = await _spec_checked(stack, "GET", f"/v1/responses/{response_id}/input_items"
                               "?order=asc&after=msg_1", "ResponseItemList")
    assert [item["id"] for item in page["data"]] == ["msg_2", "msg_3", "msg_4"]
    deleted = (await stack.raw("DELETE", f"/v1/responses/{response_id}")).json()
    assert deleted == {"id": response_id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.delete(response_id)
    with pytest.raises(openai.NotFoundError):
        await stack.client.responses.input_items.list(response_id)


async def test_the_sdk_deletes_a_response(stack: StateStack) -> None:
    response_id = await _stored_response(stack)
    await stack.client.responses.delete(response_id)
    assert await stack.store.get_response(stack.alice.id, response_id) is None


# -- scoping ------------------------------------------------------------------------------


async def test_another_key_gets_404_for_everything(stack: StateStack) -> None:
    conv = await stack.client.conversations.create(items=[MESSAGE])
    items = [item.id async for item in stack.client.conversations.items.list(conv.id)]
    item_id = str(items[0])
    made = await stack.client.chat.completions.create(
        model="fake-chat", store=True, messages=[{"role": "user", "content": "Hi"}])
    response_id = await _stored_response(stack)
    other = stack.other
    attempts: list[Callable[[], Awaitable[Any]]] = [
        lambda: other.conversations.retrieve(conv.id),
        lambda: other.conversations.update(conv.id, metadata={"x": "y"}),
        lambda: other.conversations.items.list(conv.id),
        lambda: other.conversations.items.create(conv.id, items=[MESSAGE]),
        lambda: other.conversations.items.retrieve(item_id, conversation_id=conv.id),
        lambda: other.conversations.items.delete(item_id, conversation_id=conv.id),
        lambda: other.conversations.delete(conv.id),
        lambda: other.chat.completions.retrieve(made.id),
        lambda: other.chat.completions.update(made.id, metadata={"x": "y"}),
        lambda: other.chat.completions.messages.list(made.id),
        lambda: other.chat.completions.delete(made.id),
        lambda: other.responses.input_items.list(response_id),
        lambda: other.responses.delete(response_id),
    ]
    for attempt in attempts:
        with pytest.raises(openai.NotFoundError):
            await attempt()
    # Bob's list is his own (empty), and Alice's ids are no cursor in it.
    assert [c async for c in other.chat.completions.list()] == []
    cursor = await stack.raw("GET", f"/v1/chat/completions?after={made.id}", secret=BOB_SECRET)
    assert cursor.status_code == 400
    assert cursor.json()["error"]["param"] == "after"
    # ... and all of Alice's state is still there for her.
    assert (await stack.client.conversations.retrieve(conv.id)).id == conv.id
    assert [i.id async for i in stack.client.conversations.items.list(conv.id)] == [item_id]
    assert (await stack.client.chat.completions.retrieve(made.id)).id == made.id
    assert await stack.store.get_response(stack.alice.id, response_id) is not None


async def test_stored_state_routes_need_a_key_and_are_ledgered(stack: StateStack) -> None:
    no_key = await stack.http.get("/v1/conversations/conv_x")
    assert no_key.status_code == 401
    await stack.client.conversations.create()
    rows = [row for row in stack.ledger.rows if row.endpoint == "/v1/conversations"]
    assert [(row.status, row.key_id, row.price) for row in rows] == [("ok", stack.alice.id, 0)]


# -- bounds -------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "param"), [
    ("POST", "/v1/conversations", {"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata"),
    ("POST", "/v1/conversations", {"metadata": {"k" * 65: "v"}}, "metadata"),
    ("POST", "/v1/conversations", {"metadata": {"k": "v" * 513}}, "metadata.k"),
    ("POST", "/v1/conversations", {"metadata": {"k": 1}}, "metadata.k"),
    ("POST", "/v1/conversations", {"items": [MESSAGE] * 21}, "items"),
    ("POST", "/v1/conversations", {"items": [{"type": "web_search_call"}]}, "items[0].type"),
    ("POST", "/v1/conversations", {"items": [{"role": "user"}]}, "items[0].content"),
    ("POST", "/v1/conversations", {"items": [{**MESSAGE, "content": "x" * 1_000_001}]},
     "items[0]"),
    ("GET", "/v1/chat/completions?limit=0", None, "limit"),
    ("GET", "/v1/chat/completions?limit=101", None, "limit"),
    ("GET", "/v1/chat/completions?limit=ten", None, "limit"),
    ("GET", "/v1/chat/completions?order=sideways", None, "order"),
    ("GET", "/v1/chat/completions?after=chatcmpl-nowhere", None, "after"),
    ("GET", "/v1/chat/completions?" + "&".join(f"metadata[k{n}]=v" for n in range(17)), None,
     "metadata"),
    ("GET", "/v1/chat/completions?model=" + "m" * 300, None, "model"),
    ("GET", "/v1/chat/completions?after=" + "c" * 300, None, "after"),
])
async def test_bounds_are_400s_naming_the_field(stack: StateStack, method: str, path: str,
                                                body: Any, param: str) -> None:
    response = await stack.raw(method, path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    validate(response.json(), "ErrorResponse")


async def test_list_query_bounds_on_items(stack: StateStack) -> None:
    conv = await stack.client.conversations.create(items=[MESSAGE])
    base = f"/v1/conversations/{conv.id}/items"
    for query, param in (("?include=everything", "include"),
                         ("?" + "&".join(["include=reasoning.encrypted_content"] * 17),
                          "include"),
                         ("?after=msg_nowhere", "after"), ("?limit=1000", "limit")):
        response = await stack.raw("GET", base + query)
        assert response.status_code == 400, query
        assert response.json()["error"]["param"] == param


# -- what one key may keep ----------------------------------------------------------------

SMALL = StoreBounds(max_owner_bytes=8192, max_conversation_items=5)
TEXT: Any = {"type": "message", "role": "user", "content": "t" * 3000}


@pytest.fixture
async def small(tmp_path: Path) -> AsyncIterator[StateStack]:
    """Alice and Bob may keep 8 KiB each, 5 items in a conversation."""
    async with state_stack(tmp_path, store_bounds=SMALL) as made:
        yield made


def _quota_refusal(refused: openai.APIStatusError, param: str) -> None:
    assert refused.status_code == 429
    assert refused.response.headers["x-should-retry"] == "false"
    error = refused.response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "insufficient_quota", "storage_quota_exceeded", param)
    assert "at most 8,192 bytes per key" in error["message"]


async def test_a_write_past_the_keys_storage_quota_is_a_permanent_429(
        small: StateStack) -> None:
    client = small.client
    conv = await client.conversations.create(items=[TEXT, TEXT])
    with pytest.raises(openai.RateLimitError) as refused:
        await client.conversations.items.create(conv.id, items=[TEXT])
    _quota_refusal(refused.value, "items")
    with pytest.raises(openai.RateLimitError) as refused:
        await client.conversations.create(items=[TEXT])
    _quota_refusal(refused.value, "items")
    with pytest.raises(openai.RateLimitError) as refused:
        await client.conversations.update(conv.id, metadata={"k": "v" * 512, "l": "w" * 512,
                                                             "m": "x" * 512, "n": "y" * 512})
    _quota_refusal(refused.value, "metadata")
    # Nothing of a refused write was kept.
    assert len([item async for item in client.conversations.items.list(conv.id)]) == 2
    assert (await client.conversations.retrieve(conv.id)).metadata == {}
    # The SDK does not retry a permanent 429: one request, one ledger row.
    rows = len(small.ledger.rows)
    with pytest.raises(openai.RateLimitError):
        await client.with_options(max_retries=2).conversations.items.create(conv.id,
                                                                            items=[TEXT])
    assert len(small.ledger.rows) == rows + 1
    # Each key has its own quota; a delete gives the room back.
    await small.other.conversations.create(items=[TEXT, TEXT])
    await client.conversations.delete(conv.id)
    await client.conversations.create(items=[TEXT, TEXT])


async def test_store_true_past_the_quota_is_refused_before_the_engine(small: StateStack) -> None:
    await small.client.conversations.create(items=[TEXT, TEXT])
    calls = len(small.engine.calls)
    with pytest.raises(openai.RateLimitError) as refused:
        await small.client.chat.completions.create(
            model="fake-chat", store=True, messages=[{"role": "user", "content": "w " * 1500}])
    _quota_refusal(refused.value, "store")
    assert len(small.engine.calls) == calls
    # Without store the same request is answered: the quota bounds what is kept, not asked.
    made = await small.client.chat.completions.create(
        model="fake-chat", messages=[{"role": "user", "content": "Hi"}])
    assert made.choices[0].message.content == small.engine.reply


async def test_an_answer_too_large_to_keep_is_still_delivered(
        small: StateStack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "appliance.api")
    small.engine.reply = "word " * 2000  # ~10 KB of answer: past the quota once generated
    made = await small.client.chat.completions.with_raw_response.create(
        model="fake-chat", store=True, messages=[{"role": "user", "content": "Hi"}])
    assert made.headers["x-appliance-not-stored"] == "storage_quota_exceeded"
    completion = made.parse()
    assert completion.choices[0].message.content == small.engine.reply.strip()
    with pytest.raises(openai.NotFoundError):
        await small.client.chat.completions.retrieve(completion.id)
    stream = await small.client.chat.completions.create(
        model="fake-chat", store=True, stream=True,
        messages=[{"role": "user", "content": "Hi"}])
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks
                   if c.choices) == small.engine.reply.strip()
    with pytest.raises(openai.NotFoundError):
        await small.client.chat.completions.retrieve(chunks[0].id)
    logged = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
    assert len(logged) == 2  # once per completion
    assert completion.id in logged[0] and chunks[0].id in logged[1]
    assert "storage quota exceeded" in logged[0].lower()


async def test_a_conversation_past_its_item_bound_is_a_400_naming_items(
        small: StateStack) -> None:
    client = small.client
    conv = await client.conversations.create(items=[MESSAGE] * 3)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.conversations.items.create(conv.id, items=[MESSAGE] * 3)
    error = refused.value.response.json()["error"]
    assert error["param"] == "items"
    assert "would have 6 items" in error["message"]
    assert "at most 5 in one conversation" in error["message"]
    assert len([item async for item in client.conversations.items.list(conv.id)]) == 3
    await client.conversations.items.create(conv.id, items=[MESSAGE] * 2)
    with pytest.raises(openai.BadRequestError):
        await client.conversations.create(items=[MESSAGE] * 6)


# -- docs/compatibility.md's stored-state rows --------------------------------------------


def _state_rows() -> list[tuple[str, str, str, str, Any]]:
    """(method, path, param, status, example) of every row under the Stored state section's
    ``### METHOD path`` headings (the shared row reader takes ``## POST`` sections only)."""
    found: list[tuple[str, str, str, str, Any]] = []
    section, method, path = False, "", ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line.startswith("## Stored state")
        elif section and line.startswith("### "):
            method, path = line.removeprefix("### ").split(" ", 1)
        elif section and (match := ROW.match(line)):
            found.append((method, path, match["param"], match["status"],
                          json.loads(match["example"])))
    return found


def _query(param: str, value: Any) -> list[tuple[str, str]]:
    """A value as the SDKs put it in a query: arrays repeated, maps as ``param[key]``."""
    if isinstance(value, list):
        return [(param, str(item)) for item in value]
    if isinstance(value, dict):
        return [(f"{param}[{key}]", str(item)) for key, item in value.items()]
    return [(param, str(value))]


def test_the_stored_state_rows_are_there() -> None:
    assert len(_state_rows()) >= 20
    assert {method for method, *_ in _state_rows()} == {"GET", "POST"}


@pytest.mark.parametrize(("method", "path", "param", "status", "example"), _state_rows(),
                         ids=lambda value: value if isinstance(value, str) else "")
async def test_stored_state_row_is_true(stack: StateStack, method: str, path: str, param: str,
                                        status: str, example: Any) -> None:
    conv = await stack.client.conversations.create(items=[MESSAGE, MESSAGE])
    # Two of each list's items, so that every paging example has a second page of one.
    made, _ = [await stack.client.chat.completions.create(
        model="fake-chat", store=True, metadata={"k": "v"},
        messages=[{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}])
        for _ in range(2)]
    response_id = await _stored_response(stack, inputs=2)
    newest = (await stack.client.conversations.items.list(conv.id)).data[0]
    ids = {"conversation_id": conv.id, "completion_id": made.id, "response_id": response_id,
           "item_id": str(newest.id), "message_id": f"{made.id}-0", "input_item_id": "msg_1"}
    url = "/v1" + path.removeprefix("/v1").format(**ids)
    if isinstance(example, str):
        example = example.format(**ids)
    if method == "GET" or param == "include":
        response = await stack.raw(method, url, params=_query(param, example),
                                   json={"items": [MESSAGE]} if method == "POST" else None)
    else:
        response = await stack.raw(method, url, json={param: example})
    if status == "rejected":
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    else:
        assert response.status_code == 200, response.text
    if param in ("after", "limit") and status == "honoured":
        assert len(response.json()["data"]) == 1  # the example pages to the second of two


async def test_a_revoked_key_reaches_none_of_its_state(tmp_path: Path) -> None:
    async with state_stack(tmp_path) as stack:
        conv = await stack.client.conversations.create()
        record = stack.keys.secrets[ALICE_SECRET]
        stack.keys.secrets[ALICE_SECRET] = dataclasses.replace(record, revoked_at=time.time())
        with pytest.raises(openai.AuthenticationError):
            await stack.client.conversations.retrieve(conv.id)
        with pytest.raises(openai.NotFoundError):  # nor does anyone else
            await stack.other.conversations.retrieve(conv.id)
