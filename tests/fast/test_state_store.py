"""The SQLite state store (appliance/store): owner scoping, retention and its sweep, restart
durability, chains with a bound, pagination, and the schema its migrations produce."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.api.stored_state import StateStore
from appliance.config import load_config
from appliance.errors import ConfigError
from appliance.store import (
    Conversation,
    CursorNotFound,
    DuplicateItemId,
    SqliteStateStore,
    StateTooLarge,
    StoredCompletion,
    StoredResponse,
)

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
                      "previous_response_id", "conversation_id", "body"],
        "response_input_items": ["response_seq", *children],
        "conversations": ["seq", "id", "owner", "created_at", "expires_at", "metadata"],
        "conversation_items": ["conversation_seq", *children],
        "completions": ["seq", "id", "owner", "created_at", "expires_at", "model", "metadata",
                        "body"],
        "completion_metadata": ["completion_seq", "key", "value"],
        "completion_messages": ["completion_seq", *children],
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
