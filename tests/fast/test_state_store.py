"""The SQLite state store (appliance/store): owner scoping, retention and its sweep, restart
durability, chains with a bound, pagination, the schema its migrations produce, and what one
owner may keep (the per-owner sums against a full recount, the quota, items per conversation)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from appliance.api.stored_state import StateStore
from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.store import (
    MIGRATION_SET,
    Conversation,
    ConversationFull,
    CursorNotFound,
    DuplicateItemId,
    SqliteStateStore,
    StateTooLarge,
    StorageQuotaExceeded,
    StoreBounds,
    StoredCompletion,
    StoredResponse,
    stored_size,
)
from appliance.store.items import PAGE_BYTES
from appliance.store.schema import ROW_BYTES, m001_responses, m002_conversations, m003_completions

pytestmark = pytest.mark.anyio

DAY = 86_400.0
ALICE = "key_alice00000"
BOB = "key_bob0000000"


@dataclass
class Clock:
    """The store's wall clock, moved by hand."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteStateStore]:
    opened = SqliteStateStore(tmp_path / "state.sqlite", retention_s=30 * DAY,
                              wall_clock=clock, sweep_interval_s=None)
    try:
        yield opened
    finally:
        opened.close()


def _message(item_id: str, text: str = "hi") -> dict[str, object]:
    return {"id": item_id, "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": text}]}


def _response(response_id: str, *, owner: str | None = ALICE, previous: str | None = None,
              created_at: float, inputs: int = 1) -> StoredResponse:
    return StoredResponse(
        id=response_id, owner=owner, created_at=created_at, model="fake-chat",
        previous_response_id=previous, conversation_id=None,
        input_items=tuple(_message(f"msg_{response_id}_{n}") for n in range(inputs)),
        body={"id": response_id, "object": "response", "status": "completed", "output": []})


def _completion(completion_id: str, *, owner: str | None = ALICE, model: str = "fake-chat",
                metadata: dict[str, str] | None = None, created_at: float) -> StoredCompletion:
    return StoredCompletion(
        id=completion_id, owner=owner, created_at=created_at, model=model,
        metadata=metadata or {},
        messages=({"id": f"{completion_id}-0", "role": "user", "content": "Hello"},),
        body={"id": completion_id, "object": "chat.completion", "model": model,
              "created": int(created_at), "choices": []})


async def test_the_store_is_a_state_store(store: SqliteStateStore) -> None:
    typed: StateStore = store  # mypy checks the Protocol; this test names the intent
    assert typed is store


def test_migrations_make_the_pinned_tables(tmp_path: Path) -> None:
    SqliteStateStore(tmp_path / "s.sqlite", retention_s=DAY, sweep_interval_s=None).close()
    conn = sqlite3.connect(tmp_path / "s.sqlite")
    try:
        tables = {name: [column[1] for column in conn.execute(f"PRAGMA table_info({name})")]
                  for (name,) in conn.execute(
                      "SELECT name FROM sqlite_master WHERE type = 'table'"
                      " AND name NOT LIKE 'sqlite_%' AND name != '_sqlite_migrations'")}
        (journal,) = conn.execute("PRAGMA journal_mode").fetchone()
    finally:
        conn.close()
    children = ["position", "item_id", "item"]
    assert tables == {
        "responses": ["seq", "id", "owner", "created_at", "expires_at", "model",
                      "previous_response_id", "conversation_id", "body", "stored_bytes"],
        "response_input_items": ["response_seq", *children],
        "conversations": ["seq", "id", "owner", "created_at", "expires_at", "metadata",
                          "stored_bytes", "item_count"],
        "conversation_items": ["conversation_seq", *children],
        "completions": ["seq", "id", "owner", "created_at", "expires_at", "model", "metadata",
                        "body", "stored_bytes"],
        "completion_metadata": ["completion_seq", "key", "value"],
        "completion_messages": ["completion_seq", *children],
        "owner_usage": ["owner", "stored_bytes"],
    }
    assert journal == "wal"


# -- responses ----------------------------------------------------------------------------


async def test_a_response_is_its_owners_alone(store: SqliteStateStore, clock: Clock) -> None:
    await store.put_response(_response("resp_1", created_at=clock.now, inputs=2))
    got = await store.get_response(ALICE, "resp_1")
    assert got is not None
    assert got.body["status"] == "completed"
    assert [item["id"] for item in got.input_items] == ["msg_resp_1_0", "msg_resp_1_1"]
    # Another key, and no key at all, see nothing: exactly an unknown id.
    assert await store.get_response(BOB, "resp_1") is None
    assert await store.get_response(None, "resp_1") is None
    assert await store.input_items(BOB, "resp_1", order="asc", after=None, limit=10) is None
    assert await store.chain(BOB, "resp_1", max_turns=5) is None
    assert await store.delete_response(BOB, "resp_1") is False
    assert await store.get_response(ALICE, "resp_1") is not None
    assert await store.delete_response(ALICE, "resp_1") is True
    assert await store.get_response(ALICE, "resp_1") is None
    assert await store.delete_response(ALICE, "resp_1") is False


async def test_a_keyless_owner_is_an_owner_too(store: SqliteStateStore, clock: Clock) -> None:
    await store.put_response(_response("resp_anon", owner=None, created_at=clock.now))
    assert await store.get_response(None, "resp_anon") is not None
    assert await store.get_response(ALICE, "resp_anon") is None


async def test_a_response_written_again_replaces_body_and_items(store: SqliteStateStore,
                                                                clock: Clock) -> None:
    first = _response("resp_bg", created_at=clock.now, inputs=3)
    await store.put_response(first)
    finished = StoredResponse(**{**first.__dict__, "body": {**first.body, "status": "done"},
                                 "input_items": (_message("msg_only"),)})
    await store.put_response(finished)
    got = await store.get_response(ALICE, "resp_bg")
    assert got is not None
    assert got.body["status"] == "done"
    assert [item["id"] for item in got.input_items] == ["msg_only"]


async def test_another_owners_response_id_cannot_be_overwritten(store: SqliteStateStore,
                                                                clock: Clock) -> None:
    await store.put_response(_response("resp_x", created_at=clock.now))
    with pytest.raises(ValueError, match="another owner"):
        await store.put_response(_response("resp_x", owner=BOB, created_at=clock.now))
    assert await store.get_response(ALICE, "resp_x") is not None


async def test_input_items_repeating_an_id_keep_nothing(store: SqliteStateStore,
                                                        clock: Clock) -> None:
    twice = StoredResponse(**{**_response("resp_dup", created_at=clock.now).__dict__,
                              "input_items": (_message("msg_a"), _message("msg_a"))})
    with pytest.raises(DuplicateItemId):
        await store.put_response(twice)
    assert await store.get_response(ALICE, "resp_dup") is None


async def _chain_of(store: SqliteStateStore, clock: Clock, turns: int,
                    owner: str | None = ALICE) -> list[str]:
    ids: list[str] = []
    for turn in range(turns):
        response_id = f"resp_turn{turn}"
        await store.put_response(_response(response_id, owner=owner, created_at=clock.now,
                                           previous=ids[-1] if ids else None))
        ids.append(response_id)
    return ids


async def test_a_chain_is_walked_oldest_first(store: SqliteStateStore, clock: Clock) -> None:
    ids = await _chain_of(store, clock, 5)
    chain = await store.chain(ALICE, ids[-1], max_turns=5)
    assert chain is not None
    assert [r.id for r in chain] == ids
    assert [r.input_items[0]["id"] for r in chain] == [f"msg_{i}_0" for i in ids]
    middle = await store.chain(ALICE, ids[2], max_turns=5)
    assert middle is not None
    assert [r.id for r in middle] == ids[:3]


async def test_a_chain_past_its_bound_is_a_400_not_a_404(store: SqliteStateStore,
                                                         clock: Clock) -> None:
    ids = await _chain_of(store, clock, 6)
    with pytest.raises(StateTooLarge, match="longer than 5 turns") as raised:
        await store.chain(ALICE, ids[-1], max_turns=5)
    assert raised.value.status == 400
    exact = await store.chain(ALICE, ids[-1], max_turns=6)
    assert exact is not None
    assert len(exact) == 6


async def test_a_chain_with_a_missing_link_is_not_found(store: SqliteStateStore,
                                                        clock: Clock) -> None:
    ids = await _chain_of(store, clock, 4)
    assert await store.delete_response(ALICE, ids[1]) is True
    assert await store.chain(ALICE, ids[-1], max_turns=10) is None
    assert await store.chain(ALICE, ids[0], max_turns=10) is not None


async def test_a_chain_through_another_owners_response_is_not_found(
        store: SqliteStateStore, clock: Clock) -> None:
    await store.put_response(_response("resp_bobs", owner=BOB, created_at=clock.now))
    await store.put_response(_response("resp_alices", previous="resp_bobs",
                                       created_at=clock.now))
    assert await store.chain(ALICE, "resp_alices", max_turns=10) is None


async def test_input_items_page_by_id_both_ways(store: SqliteStateStore, clock: Clock) -> None:
    await store.put_response(_response("resp_p", created_at=clock.now, inputs=7))
    ids = [f"msg_resp_p_{n}" for n in range(7)]

    async def walk(order: str) -> list[str]:
        seen: list[str] = []
        after: str | None = None
        while True:
            page = await store.input_items(ALICE, "resp_p", order=order,  # type: ignore[arg-type]
                                           after=after, limit=3)
            assert page is not None
            seen.extend(item["id"] for item in page.items)
            if not page.has_more:
                return seen
            after = page.items[-1]["id"]

    assert await walk("asc") == ids
    assert await walk("desc") == ids[::-1]
    last = await store.input_items(ALICE, "resp_p", order="asc", after=ids[-1], limit=3)
    assert last is not None
    assert last.items == ()
    assert last.has_more is False
    with pytest.raises(CursorNotFound):
        await store.input_items(ALICE, "resp_p", order="asc", after="msg_nowhere", limit=3)


async def test_a_page_ends_early_once_it_holds_its_bytes(store: SqliteStateStore,
                                                         clock: Clock) -> None:
    """100 items of 1 M emoji made one 264 MB body; now a page stops past PAGE_BYTES (one
    item at least), says has_more, and the next pages hold the rest."""
    sizes = [6, 6, 6, 20, 1, 1]  # MiB of text; the 20 MiB item is a page of its own
    items = tuple(_message(f"msg_big_{n}", "a" * (size << 20)) for n, size in enumerate(sizes))
    await store.put_response(StoredResponse(
        id="resp_big", owner=ALICE, created_at=clock.now, model="fake-chat",
        previous_response_id=None, conversation_id=None, input_items=items,
        body={"id": "resp_big", "object": "response", "status": "completed", "output": []}))
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        page = await store.input_items(ALICE, "resp_big", order="asc", after=after, limit=100)
        assert page is not None
        pages.append([item["id"] for item in page.items])
        if not page.has_more:
            break
        after = page.items[-1]["id"]
    assert pages == [["msg_big_0", "msg_big_1"], ["msg_big_2"], ["msg_big_3"],
                     ["msg_big_4", "msg_big_5"]]
    assert PAGE_BYTES == 16 << 20


# -- conversations ------------------------------------------------------------------------


async def test_a_conversation_and_its_items(store: SqliteStateStore) -> None:
    conv = await store.create_conversation(ALICE, {"topic": "tea"},
                                           [_message("msg_1"), _message("msg_2")])
    assert conv.id.startswith("conv_")
    assert conv.metadata == {"topic": "tea"}
    assert await store.get_conversation(ALICE, conv.id) == conv
    assert await store.append_items(ALICE, conv.id, [_message("msg_3")]) is True
    assert [i["id"] for i in await store.all_items(ALICE, conv.id, 10) or []] == \
        ["msg_1", "msg_2", "msg_3"]
    assert await store.get_item(ALICE, conv.id, "msg_2") == _message("msg_2")
    assert await store.delete_item(ALICE, conv.id, "msg_2") is True
    assert await store.get_item(ALICE, conv.id, "msg_2") is None
    assert await store.delete_item(ALICE, conv.id, "msg_2") is False
    page = await store.list_items(ALICE, conv.id, order="desc", after=None, limit=1)
    assert page is not None
    assert [i["id"] for i in page.items] == ["msg_3"]
    assert page.has_more is True
    updated = await store.update_conversation(ALICE, conv.id, {"topic": "coffee"})
    assert updated == Conversation(id=conv.id, owner=ALICE, created_at=conv.created_at,
                                   metadata={"topic": "coffee"})
    assert await store.delete_conversation(ALICE, conv.id) is True
    assert await store.get_conversation(ALICE, conv.id) is None
    assert await store.all_items(ALICE, conv.id, 10) is None


async def test_another_owner_gets_nothing_of_a_conversation(store: SqliteStateStore) -> None:
    conv = await store.create_conversation(ALICE, {}, [_message("msg_1")])
    assert await store.get_conversation(BOB, conv.id) is None
    assert await store.update_conversation(BOB, conv.id, {"x": "y"}) is None
    assert await store.append_items(BOB, conv.id, [_message("msg_bob")]) is False
    assert await store.all_items(BOB, conv.id, 10) is None
    assert await store.list_items(BOB, conv.id, order="asc", after=None, limit=5) is None
    assert await store.get_item(BOB, conv.id, "msg_1") is None
    assert await store.delete_item(BOB, conv.id, "msg_1") is False
    assert await store.delete_conversation(BOB, conv.id) is False
    # ... and Alice's is untouched by all of that.
    assert await store.get_conversation(ALICE, conv.id) == conv
    assert await store.all_items(ALICE, conv.id, 10) == [_message("msg_1")]


async def test_a_repeated_item_id_adds_nothing(store: SqliteStateStore) -> None:
    conv = await store.create_conversation(ALICE, {}, [_message("msg_1")])
    with pytest.raises(DuplicateItemId):
        await store.append_items(ALICE, conv.id, [_message("msg_2"), _message("msg_1")])
    assert await store.all_items(ALICE, conv.id, 10) == [_message("msg_1")]
    with pytest.raises(ValueError, match="id"):
        await store.append_items(ALICE, conv.id, [{"type": "message"}])


async def test_a_conversation_too_long_to_continue_says_so(store: SqliteStateStore) -> None:
    conv = await store.create_conversation(ALICE, {}, [_message(f"msg_{n}") for n in range(4)])
    assert len(await store.all_items(ALICE, conv.id, 4) or []) == 4
    with pytest.raises(StateTooLarge, match="more than 3 items"):
        await store.all_items(ALICE, conv.id, 3)


async def test_ids_sqlite_cannot_hold_are_unknown_not_errors(store: SqliteStateStore) -> None:
    conv = await store.create_conversation(ALICE, {"k\ud800": "v\udfff"}, [_message("msg_1")])
    assert (await store.get_conversation(ALICE, conv.id) or conv).metadata == \
        {"k\ud800": "v\udfff"}
    lone = "conv_\ud800"
    assert await store.get_conversation(ALICE, lone) is None
    assert await store.get_response(ALICE, "resp_\udfff") is None
    assert await store.get_item(ALICE, conv.id, "msg_\ud800") is None
    with pytest.raises(CursorNotFound):
        await store.list_items(ALICE, conv.id, order="asc", after="msg_\ud800", limit=5)


# -- stored chat completions --------------------------------------------------------------


async def test_completions_list_by_model_and_metadata(store: SqliteStateStore,
                                                      clock: Clock) -> None:
    await store.put_completion(_completion("chatcmpl-1", metadata={"team": "a"},
                                           created_at=clock.now))
    await store.put_completion(_completion("chatcmpl-2", model="other",
                                           metadata={"team": "a", "run": "7"},
                                           created_at=clock.now))
    await store.put_completion(_completion("chatcmpl-3", metadata={"team": "b"},
                                           created_at=clock.now))
    await store.put_completion(_completion("chatcmpl-bob", owner=BOB, metadata={"team": "a"},
                                           created_at=clock.now))

    async def ids(**query: object) -> list[str]:
        options: dict[str, object] = {"model": None, "metadata": {}, "order": "asc",
                                      "after": None, "limit": 20, **query}
        page = await store.list_completions(ALICE, **options)  # type: ignore[arg-type]
        assert page is not None
        return [item["id"] for item in page.items]

    assert await ids() == ["chatcmpl-1", "chatcmpl-2", "chatcmpl-3"]
    assert await ids(order="desc") == ["chatcmpl-3", "chatcmpl-2", "chatcmpl-1"]
    assert await ids(model="fake-chat") == ["chatcmpl-1", "chatcmpl-3"]
    assert await ids(metadata={"team": "a"}) == ["chatcmpl-1", "chatcmpl-2"]
    assert await ids(metadata={"team": "a", "run": "7"}) == ["chatcmpl-2"]
    assert await ids(metadata={"team": "a"}, model="fake-chat") == ["chatcmpl-1"]
    assert await ids(after="chatcmpl-1") == ["chatcmpl-2", "chatcmpl-3"]
    assert await ids(after="chatcmpl-3", order="desc") == ["chatcmpl-2", "chatcmpl-1"]
    with pytest.raises(CursorNotFound):
        await ids(after="chatcmpl-bob")  # Bob's id is no cursor of Alice's list
    first = await store.list_completions(ALICE, model=None, metadata={}, order="asc",
                                         after=None, limit=2)
    assert first is not None
    assert first.has_more is True
    assert first.items[0]["metadata"] == {"team": "a"}


async def test_a_completion_updated_deleted_and_scoped(store: SqliteStateStore,
                                                       clock: Clock) -> None:
    await store.put_completion(_completion("chatcmpl-u", metadata={"team": "a"},
                                           created_at=clock.now))
    assert await store.get_completion(BOB, "chatcmpl-u") is None
    assert await store.update_completion(BOB, "chatcmpl-u", {"team": "bob"}) is None
    assert await store.delete_completion(BOB, "chatcmpl-u") is False
    assert await store.completion_messages(BOB, "chatcmpl-u", order="asc", after=None,
                                           limit=5) is None
    updated = await store.update_completion(ALICE, "chatcmpl-u", {"team": "z"})
    assert updated is not None
    assert updated.metadata == {"team": "z"}
    assert updated.messages[0]["content"] == "Hello"
    page = await store.list_completions(ALICE, model=None, metadata={"team": "z"},
                                        order="asc", after=None, limit=5)
    assert page is not None
    assert [item["id"] for item in page.items] == ["chatcmpl-u"]
    old = await store.list_completions(ALICE, model=None, metadata={"team": "a"},
                                       order="asc", after=None, limit=5)
    assert old is not None
    assert old.items == ()
    messages = await store.completion_messages(ALICE, "chatcmpl-u", order="asc", after=None,
                                               limit=5)
    assert messages is not None
    assert [m["id"] for m in messages.items] == ["chatcmpl-u-0"]
    assert await store.delete_completion(ALICE, "chatcmpl-u") is True
    assert await store.get_completion(ALICE, "chatcmpl-u") is None


# -- retention ----------------------------------------------------------------------------


def _rows(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        (count,) = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    finally:
        conn.close()
    return int(count)


async def test_expired_state_is_invisible_then_swept(store: SqliteStateStore,
                                                     clock: Clock) -> None:
    await store.put_response(_response("resp_old", created_at=clock.now, inputs=2))
    await store.put_completion(_completion("chatcmpl-old", created_at=clock.now))
    conv = await store.create_conversation(ALICE, {}, [_message("msg_1")])
    clock.now += 30 * DAY + 1
    assert await store.get_response(ALICE, "resp_old") is None
    assert await store.chain(ALICE, "resp_old", max_turns=3) is None
    assert await store.get_completion(ALICE, "chatcmpl-old") is None
    assert await store.get_conversation(ALICE, conv.id) is None
    assert await store.append_items(ALICE, conv.id, [_message("msg_2")]) is False
    assert _rows(store.path, "response_input_items") == 2  # invisible, not yet deleted
    assert store.sweep() == 3
    for table in ("responses", "response_input_items", "conversations", "conversation_items",
                  "completions", "completion_metadata", "completion_messages"):
        assert _rows(store.path, table) == 0, table


async def test_a_conversation_in_use_outlives_its_creation(store: SqliteStateStore,
                                                          clock: Clock) -> None:
    conv = await store.create_conversation(ALICE, {}, [])
    clock.now += 20 * DAY
    assert await store.append_items(ALICE, conv.id, [_message("msg_1")]) is True
    clock.now += 20 * DAY  # 40 days after creation, 20 after its last write
    assert await store.get_conversation(ALICE, conv.id) is not None
    assert store.sweep() == 0


async def test_the_sweep_works_in_batches(tmp_path: Path, clock: Clock) -> None:
    store = SqliteStateStore(tmp_path / "state.sqlite", retention_s=DAY, wall_clock=clock,
                             sweep_interval_s=None, sweep_batch_size=2)
    try:
        for n in range(5):
            await store.put_completion(_completion(f"chatcmpl-{n}", created_at=clock.now))
        clock.now += 2 * DAY
        assert store.sweep() == 5
    finally:
        store.close()


async def test_the_sweeper_thread_sweeps_at_start(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state.sqlite"
    with SqliteStateStore(path, retention_s=DAY, wall_clock=clock,
                          sweep_interval_s=None) as first:
        await first.put_completion(_completion("chatcmpl-gone", created_at=clock.now - 2 * DAY))
    assert _rows(path, "completions") == 1
    with SqliteStateStore(path, retention_s=DAY, wall_clock=clock, sweep_interval_s=3600):
        deadline = time.monotonic() + 30
        while _rows(path, "completions") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert _rows(path, "completions") == 0


# -- durability ---------------------------------------------------------------------------


async def test_a_write_is_committed_when_it_returns(store: SqliteStateStore,
                                                    clock: Clock) -> None:
    await store.put_response(_response("resp_now", created_at=clock.now))
    # Another connection, as another process would: the row is on disk, not in a buffer.
    assert _rows(store.path, "responses") == 1


async def test_state_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state.sqlite"
    with SqliteStateStore(path, retention_s=DAY, wall_clock=clock,
                          sweep_interval_s=None) as first:
        ids = await _chain_of(first, clock, 3)
        conv = await first.create_conversation(ALICE, {"a": "b"}, [_message("msg_1")])
        await first.put_completion(_completion("chatcmpl-kept", created_at=clock.now))
    with SqliteStateStore(path, retention_s=DAY, wall_clock=clock,
                          sweep_interval_s=None) as second:
        chain = await second.chain(ALICE, ids[-1], max_turns=3)
        assert chain is not None
        assert [r.id for r in chain] == ids
        assert await second.get_conversation(ALICE, conv.id) == conv
        assert await second.all_items(ALICE, conv.id, 5) == [_message("msg_1")]
        assert await second.get_completion(ALICE, "chatcmpl-kept") is not None


async def test_a_write_outlives_its_cancelled_request(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state.sqlite"
    with SqliteStateStore(path, retention_s=DAY, wall_clock=clock,
                          sweep_interval_s=None) as store:
        task = asyncio.ensure_future(store.put_response(_response("resp_c", created_at=clock.now)))
        await asyncio.sleep(0)  # the write is handed to the writer thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    with SqliteStateStore(path, retention_s=DAY, wall_clock=clock,
                          sweep_interval_s=None) as reopened:
        assert await reopened.get_response(ALICE, "resp_c") is not None


def test_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention"):
        SqliteStateStore(tmp_path / "s.sqlite", retention_s=0)


# -- configuration ------------------------------------------------------------------------


def _config(tmp_path: Path, server: str) -> Path:
    (tmp_path / "pipeline").mkdir()
    path = tmp_path / "models.toml"
    path.write_text(f'[server]\n{server}\n\n[[models]]\nid = "sd"\nkind = "image"\n'
                    'path = "pipeline"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize(("line", "days"), [("", 30.0), ("response_retention_days = 7", 7.0),
                                            ("response_retention_days = 0.5", 0.5)])
def test_retention_is_a_server_key_in_days(tmp_path: Path, line: str, days: float) -> None:
    assert load_config(_config(tmp_path, line), env={}).server.response_retention_days == days


@pytest.mark.parametrize("line", ["response_retention_days = 0", "response_retention_days = -1",
                                  "response_retention_days = inf",
                                  'response_retention_days = "30d"'])
def test_bad_retention_is_a_config_error_naming_the_key(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError, match="response_retention_days"):
        load_config(_config(tmp_path, line), env={})


# -- what one owner keeps -------------------------------------------------------------------

# Each table's counted text columns and how a row finds its owner: the recount below reads
# every row in Python, independently of the triggers that keep the sums.
_COUNTED_ROWS = {
    "responses": ("owner", ("body",)),
    "conversations": ("owner", ("metadata",)),
    "completions": ("owner", ("metadata", "body")),
    "response_input_items": (
        "(SELECT owner FROM responses WHERE seq = response_seq)", ("item",)),
    "conversation_items": (
        "(SELECT owner FROM conversations WHERE seq = conversation_seq)", ("item",)),
    "completion_messages": (
        "(SELECT owner FROM completions WHERE seq = completion_seq)", ("item",)),
    "completion_metadata": (
        "(SELECT owner FROM completions WHERE seq = completion_seq)", ("key", "value")),
}


def _recount(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(every owner's bytes counted row by row, the sums the store keeps), zeros left out."""
    conn = sqlite3.connect(path)
    try:
        counted: dict[str, int] = {}
        for table, (owner, columns) in _COUNTED_ROWS.items():
            for row in conn.execute(f"SELECT {owner}, {', '.join(columns)} FROM {table}"):
                size = ROW_BYTES + sum(len(text.encode()) for text in row[1:])
                counted[row[0] or ""] = counted.get(row[0] or "", 0) + size
        kept = dict(conn.execute("SELECT owner, stored_bytes FROM owner_usage"
                                 " WHERE stored_bytes != 0").fetchall())
    finally:
        conn.close()
    return counted, kept


async def _assert_sums_hold(store: SqliteStateStore) -> None:
    counted, kept = _recount(store.path)
    assert kept == counted
    for owner in (ALICE, BOB, None):
        assert await store.stored_bytes(owner) == counted.get(owner or "", 0)


async def test_the_owners_sums_follow_every_kind_of_write(store: SqliteStateStore,
                                                           clock: Clock) -> None:
    conv = await store.create_conversation(ALICE, {"k": "v"}, [_message("msg_1", "é" * 50)])
    await _assert_sums_hold(store)
    await store.append_items(ALICE, conv.id, [_message("msg_2"), _message("msg_3", "x" * 999)])
    await store.delete_item(ALICE, conv.id, "msg_2")
    await store.update_conversation(ALICE, conv.id, {"k": "a longer value than before"})
    await store.update_conversation(ALICE, conv.id, {})
    await _assert_sums_hold(store)
    first = _response("resp_1", owner=None, created_at=clock.now, inputs=2)
    await store.put_response(first)
    await store.put_response(StoredResponse(**{**first.__dict__, "input_items": (
        _message("msg_only", "y" * 300),), "body": {**first.body, "output": ["z" * 500]}}))
    await store.put_response(_response("resp_bob", owner=BOB, created_at=clock.now))
    await store.put_completion(_completion("chatcmpl-1", metadata={"a": "b", "c": "d"},
                                           created_at=clock.now))
    await store.update_completion(ALICE, "chatcmpl-1", {"only": "one pair, longer"})
    await _assert_sums_hold(store)
    # What is refused keeps nothing, so it counts nothing.
    with pytest.raises(DuplicateItemId):
        await store.append_items(ALICE, conv.id, [_message("msg_9"), _message("msg_9")])
    await _assert_sums_hold(store)
    assert await store.delete_completion(ALICE, "chatcmpl-1") is True
    assert await store.delete_response(None, "resp_1") is True
    await _assert_sums_hold(store)
    assert await store.delete_conversation(ALICE, conv.id) is True
    assert await store.stored_bytes(ALICE) == 0
    await _assert_sums_hold(store)
    # The sweep gives back what it deletes, through the same triggers.
    await store.create_conversation(BOB, {}, [_message("msg_b")])
    clock.now += 31 * DAY
    assert store.sweep() == 2
    assert await store.stored_bytes(BOB) == 0
    await _assert_sums_hold(store)


async def test_stored_size_is_what_the_store_counts(store: SqliteStateStore) -> None:
    conv = await store.create_conversation(ALICE, {}, [])
    before = await store.stored_bytes(ALICE)
    items = [_message("msg_1", "plain"), _message("msg_2", "\u00e9\ud800 not UTF-8 alone")]
    await store.append_items(ALICE, conv.id, items)
    assert await store.stored_bytes(ALICE) - before == stored_size(items)


async def test_rows_of_almost_nothing_still_count(store: SqliteStateStore) -> None:
    # Empty conversations are 2 bytes of JSON each; without a per-row charge a key could
    # make millions of them under any quota.
    for _ in range(10):
        await store.create_conversation(ALICE, {}, [])
    assert await store.stored_bytes(ALICE) == 10 * (ROW_BYTES + len("{}"))


@pytest.fixture
async def small(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteStateStore]:
    """A store that keeps 4 KiB per owner and 3 items per conversation."""
    opened = SqliteStateStore(tmp_path / "small.sqlite", retention_s=30 * DAY,
                              wall_clock=clock, sweep_interval_s=None,
                              bounds=StoreBounds(max_owner_bytes=4096,
                                                 max_conversation_items=3))
    try:
        yield opened
    finally:
        opened.close()


async def test_a_write_past_the_quota_keeps_nothing(small: SqliteStateStore,
                                                    clock: Clock) -> None:
    conv = await small.create_conversation(ALICE, {}, [_message("msg_1", "a" * 2000)])
    used = await small.stored_bytes(ALICE)
    with pytest.raises(StorageQuotaExceeded, match="at most 4,096 bytes per key") as refused:
        await small.append_items(ALICE, conv.id, [_message("msg_2", "b" * 2500)])
    assert refused.value.status == 429
    assert refused.value.code == "storage_quota_exceeded"
    assert refused.value.error_type == "insufficient_quota"
    assert await small.all_items(ALICE, conv.id, 10) == [_message("msg_1", "a" * 2000)]
    assert await small.stored_bytes(ALICE) == used
    big_completion = StoredCompletion(**{
        **_completion("chatcmpl-big", created_at=clock.now).__dict__, "body": {"t": "c" * 2500}})
    big_response = StoredResponse(**{
        **_response("resp_big", created_at=clock.now).__dict__, "body": {"t": "r" * 2500}})
    for refused_write in (small.create_conversation(ALICE, {"k": "v" * 2500}, []),
                          small.update_conversation(ALICE, conv.id, {"k": "v" * 2500}),
                          small.put_completion(big_completion),
                          small.put_response(big_response)):
        with pytest.raises(StorageQuotaExceeded):
            await refused_write
    assert (await small.get_conversation(ALICE, conv.id) or conv).metadata == {}
    assert await small.get_completion(ALICE, "chatcmpl-big") is None
    assert await small.get_response(ALICE, "resp_big") is None
    assert await small.stored_bytes(ALICE) == used
    # The quota is per owner: Bob has all of his.
    await small.create_conversation(BOB, {}, [_message("msg_b", "b" * 2500)])
    # A delete gives the bytes back.
    assert await small.delete_conversation(ALICE, conv.id) is True
    await small.create_conversation(ALICE, {}, [_message("msg_2", "b" * 2500)])
    await _assert_sums_hold(small)


async def test_a_write_that_does_not_grow_is_never_refused(tmp_path: Path,
                                                           clock: Clock) -> None:
    path = tmp_path / "lowered.sqlite"
    with SqliteStateStore(path, retention_s=DAY, wall_clock=clock,
                          sweep_interval_s=None) as roomy:
        conv = await roomy.create_conversation(ALICE, {"k": "v" * 400},
                                               [_message("msg_1", "a" * 3000)])
        await roomy.put_completion(_completion("chatcmpl-1", metadata={"k": "v" * 400},
                                               created_at=clock.now))
    # The bound lowered under what Alice keeps: she may still shrink and delete.
    with SqliteStateStore(path, retention_s=DAY, wall_clock=clock, sweep_interval_s=None,
                          bounds=StoreBounds(max_owner_bytes=1024)) as lowered:
        assert await lowered.update_conversation(ALICE, conv.id, {"k": "v"}) is not None
        assert await lowered.update_completion(ALICE, "chatcmpl-1", {}) is not None
        assert await lowered.delete_item(ALICE, conv.id, "msg_1") is True
        assert await lowered.delete_completion(ALICE, "chatcmpl-1") is True


async def test_a_stored_response_rewritten_is_not_refused(small: SqliteStateStore,
                                                          clock: Clock) -> None:
    # A background response is stored queued (checked), then rewritten as it finishes: the
    # rewrite is let through, or the response would stay queued for good.
    queued = _response("resp_bg", created_at=clock.now)
    await small.put_response(queued)
    finished = StoredResponse(**{**queued.__dict__, "body": {"output": "o" * 5000}})
    await small.put_response(finished)
    got = await small.get_response(ALICE, "resp_bg")
    assert got is not None
    assert got.body == {"output": "o" * 5000}
    assert await small.stored_bytes(ALICE) > 4096


async def test_a_conversation_keeps_at_most_its_bound_of_items(small: SqliteStateStore) -> None:
    with pytest.raises(ConversationFull, match="would have 4 items"):
        await small.create_conversation(ALICE, {}, [_message(f"msg_{n}") for n in range(4)])
    assert _rows(small.path, "conversations") == 0
    conv = await small.create_conversation(ALICE, {}, [_message("msg_1"), _message("msg_2")])
    await small.append_items(ALICE, conv.id, [_message("msg_3")])
    with pytest.raises(ConversationFull, match="at most 3 in one conversation") as refused:
        await small.append_items(ALICE, conv.id, [_message("msg_4")])
    assert refused.value.status == 400
    assert len(await small.all_items(ALICE, conv.id, 10) or []) == 3
    assert await small.delete_item(ALICE, conv.id, "msg_1") is True
    await small.append_items(ALICE, conv.id, [_message("msg_4")])
    assert [item["id"] for item in await small.all_items(ALICE, conv.id, 10) or []] == [
        "msg_2", "msg_3", "msg_4"]


async def test_room_is_asked_before_any_work(small: SqliteStateStore) -> None:
    conv = await small.create_conversation(ALICE, {}, [_message("msg_1"), _message("msg_2")])
    await small.room(ALICE, more_bytes=1000, conversation_id=conv.id, more_items=1)
    with pytest.raises(StorageQuotaExceeded):
        await small.room(ALICE, more_bytes=4096)
    with pytest.raises(ConversationFull):
        await small.room(ALICE, conversation_id=conv.id, more_items=2)
    # Another owner's conversation and an unknown one are the write's to refuse (a 404).
    await small.room(BOB, conversation_id=conv.id, more_items=50)
    await small.room(ALICE, conversation_id="conv_nowhere", more_items=50)
    assert _rows(small.path, "conversation_items") == 2


def test_m004_counts_what_was_stored_before_it(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = Database(sqlite3.connect(path))
    earlier = Migrations(MIGRATION_SET)
    for step in (m001_responses, m002_conversations, m003_completions):
        earlier(name=step.__name__)(step)
    earlier.apply(db)
    db.execute("INSERT INTO conversations VALUES (1, 'conv_old', ?, 0, 1e12, '{\"k\":\"v\"}')",
               [ALICE])
    db.execute("INSERT INTO conversation_items VALUES (1, 1, 'msg_1', '{\"id\":\"msg_1\"}')")
    db.execute("INSERT INTO conversation_items VALUES (1, 2, 'msg_2', '{\"id\":\"msg_2\"}')")
    db.execute("INSERT INTO completions VALUES (1, 'chatcmpl-old', NULL, 0, 1e12, 'm', '{}',"
               " '{\"id\":\"chatcmpl-old\"}')")
    db.execute("INSERT INTO completion_metadata VALUES (1, '\"a\"', '\"b\"')")
    db.conn.commit()
    db.conn.close()
    with SqliteStateStore(path, retention_s=DAY, sweep_interval_s=None) as upgraded:
        counted, kept = _recount(path)
        assert kept == counted
        assert set(kept) == {ALICE, ""}
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT item_count FROM conversations").fetchone() == (2,)
        finally:
            conn.close()
        assert upgraded.bounds == StoreBounds()


def test_store_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        StoreBounds(max_owner_bytes=0)
    with pytest.raises(ValueError, match="at least 1"):
        StoreBounds(max_conversation_items=0)


@pytest.mark.parametrize(("line", "megabytes", "items"), [
    ("", 256, 10_000),
    ("max_stored_mb_per_key = 1\nmax_conversation_items = 50", 1, 50)])
def test_the_store_bounds_are_server_keys(tmp_path: Path, line: str, megabytes: int,
                                          items: int) -> None:
    server = load_config(_config(tmp_path, line), env={}).server
    assert (server.max_stored_mb_per_key, server.max_conversation_items) == (megabytes, items)


@pytest.mark.parametrize("line", ["max_stored_mb_per_key = 0", "max_stored_mb_per_key = 1.5",
                                  "max_conversation_items = -1",
                                  'max_conversation_items = "many"'])
def test_bad_store_bounds_are_config_errors_naming_the_key(tmp_path: Path, line: str) -> None:
    with pytest.raises(ConfigError, match=line.split(" ")[0]):
        load_config(_config(tmp_path, line), env={})
