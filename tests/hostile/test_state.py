"""Hostile stored-state requests against the real server: metadata and item counts far past
their bounds, a conversation of 10,000 items paged every way (and refused its 10,001st),
pagination values nobody sends, another key's ids, ids shaped like SQL, text SQLite cannot
hold, and one key trying to fill the disk (on a server of its own with a 1 MiB quota). Each is
refused naming the field, or answered as an unknown id; the state store and /health keep
answering.

Ledger bounds count the WAL (see test_schemas.py's ``ledger_kib``): every request here is one
ledger row, refused or not.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from devtools.server_harness import SMOLLM2, create_key, free_port, start_server, write_config
from tests.hostile.conftest import GROWTH_FILE_KEY
from tests.hostile.harness import MIB, Bounds, HostileServer
from tests.hostile.test_schemas import ledger_kib

MESSAGE = {"type": "message", "role": "user", "content": "hi"}
SQLISH = ["conv_x' OR '1'='1", "conv_%", "%", "_", "*", "conv_x\"; DROP TABLE conversations;--",
          "1 OR 1=1", "conv_x\x00", "..", "conv_x\\"]


@pytest.fixture(scope="module")
def conversation(hostile: HostileServer) -> str:
    with hostile.http() as http:
        answer = http.post("/v1/conversations", json={"metadata": {"owner": "tier"},
                                                      "items": [MESSAGE]})
    assert answer.status_code == 200, answer.text
    conv_id: str = answer.json()["id"]
    return conv_id


def _refused(answer: httpx2.Response, param: str, bound: str) -> None:
    assert answer.status_code == 400, answer.text[:2000]
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert bound in error["message"], error


BODY_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("100,000 metadata pairs", {"metadata": {f"k{i}": "v" for i in range(100_000)}},
     "metadata", "at most 16"),
    ("a metadata value of 1 MB", {"metadata": {"k": "v" * 1_000_000}}, "metadata.k",
     "at most 512"),
    ("a metadata key of 100 KB", {"metadata": {"k" * 100_000: "v"}}, "metadata", "at most 64"),
    ("10,000 items in one create", {"items": [MESSAGE] * 10_000}, "items", "at most 20"),
    ("an item of 2,000,000 characters", {"items": [{**MESSAGE, "content": "a" * 2_000_000}]},
     "items[0]", "at most 1000000"),
    ("an item with 100,000 content parts",
     {"items": [{**MESSAGE, "content": [{"type": "input_text", "text": "a"}] * 100_000}]},
     "items[0].content", "more than 8192"),
    ("an item id of 100 KB", {"items": [{**MESSAGE, "id": "m" * 100_000}]}, "items[0].id",
     "at most 256"),
]


@pytest.mark.parametrize(("name", "body", "param", "bound"), BODY_CASES,
                         ids=[case[0] for case in BODY_CASES])
def test_oversized_conversation_bodies_are_refused_by_name(
        hostile: HostileServer, name: str, body: dict[str, Any], param: str,
        bound: str) -> None:
    with hostile.attack(f"conversations: {name}", Bounds(peak_rss_mib=80, log_kib=8,
                                                         ledger_kib=ledger_kib(1))), \
            hostile.http() as http:
        answer = http.post("/v1/conversations", content=json.dumps(body).encode(),
                           headers={"content-type": "application/json"})
    _refused(answer, param, bound)


def test_ten_thousand_items_page_every_way(hostile: HostileServer) -> None:
    writes = 500  # 20 items each, OpenAI's most per request
    requests = writes + 100 + 6  # the writes, 100 pages of 100, and the rest
    # The log: one access line (about 190 bytes) per request.
    with hostile.attack("a conversation of 10,000 items, paged",
                        Bounds(peak_rss_mib=80, log_kib=requests * 0.25 + 16,
                               ledger_kib=ledger_kib(requests))), hostile.http() as http:
        conv_id = http.post("/v1/conversations", json={}).json()["id"]
        for write in range(writes):
            items = [{**MESSAGE, "content": f"item {write * 20 + n}"} for n in range(20)]
            answer = http.post(f"/v1/conversations/{conv_id}/items", json={"items": items})
            assert answer.status_code == 200, answer.text
        seen: list[str] = []
        after: str | None = None
        while True:  # the whole list, 100 at a time, oldest first
            query: dict[str, str | int] = {"order": "asc", "limit": 100}
            if after:
                query["after"] = after
            page = http.get(f"/v1/conversations/{conv_id}/items", params=query).json()
            seen += [item["content"][0]["text"] for item in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == [f"item {n}" for n in range(10_000)]
        newest = http.get(f"/v1/conversations/{conv_id}/items", params={"limit": 1}).json()
        assert newest["data"][0]["content"][0]["text"] == "item 9999"
        # 10,000 is max_conversation_items: the 10,001st is refused and nothing is added.
        answer = http.post(f"/v1/conversations/{conv_id}/items", json={"items": [MESSAGE]})
        _refused(answer, "items", "at most 10,000 in one conversation")
        newest = http.get(f"/v1/conversations/{conv_id}/items", params={"limit": 1}).json()
        assert newest["data"][0]["content"][0]["text"] == "item 9999"
        # Deleting it takes its 10,000 items with it, in one request.
        assert http.delete(f"/v1/conversations/{conv_id}").status_code == 200
        assert http.get(f"/v1/conversations/{conv_id}/items").status_code == 404


PAGING_CASES: list[tuple[str, str, str]] = [
    ("limit=0", "limit=0", "limit"),
    ("limit=101", "limit=101", "limit"),
    ("limit=-1", "limit=-1", "limit"),
    ("a 4,000-digit limit", "limit=" + "9" * 4000, "limit"),
    ("limit=1e2", "limit=1e2", "limit"),
    ("a full-width digit", "limit=%EF%BC%92", "limit"),  # str.isdigit() says yes to it
    ("order=DROP", "order=DROP%20TABLE%20conversation_items", "order"),
    ("an unknown after", "after=msg_nowhere", "after"),
    ("an after of 1,000 characters", "after=" + "m" * 1000, "after"),
    ("an unknown include", "include=../../etc/passwd", "include"),
    ("1,000 includes", "&".join(["include=reasoning.encrypted_content"] * 1000), "include"),
]


@pytest.mark.parametrize(("name", "query", "param"), PAGING_CASES,
                         ids=[case[0] for case in PAGING_CASES])
def test_pagination_abuse_is_refused_by_name(hostile: HostileServer, conversation: str,
                                             name: str, query: str, param: str) -> None:
    with hostile.attack(f"paging: {name}", Bounds(peak_rss_mib=40, log_kib=8,
                                                  ledger_kib=ledger_kib(1))), \
            hostile.http() as http:
        answer = http.get(f"/v1/conversations/{conversation}/items?{query}")
    if len(query) > 8000:  # past the URL bound: refused before routing, naming the URL
        _refused(answer, "url", "8192")
    else:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == param


def test_another_keys_ids_are_unknown(hostile: HostileServer, conversation: str) -> None:
    other = create_key(hostile.server.config, "hostile-state-other")
    with hostile.http() as http:
        completion = http.post("/v1/chat/completions", json={
            "model": hostile.chat_model, "store": True, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hi"}]}).json()["id"]
        item = http.get(f"/v1/conversations/{conversation}/items").json()["data"][0]["id"]
    attempts: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/v1/conversations/{conversation}", None),
        ("POST", f"/v1/conversations/{conversation}", {"metadata": {"x": "y"}}),
        ("DELETE", f"/v1/conversations/{conversation}", None),
        ("GET", f"/v1/conversations/{conversation}/items", None),
        ("POST", f"/v1/conversations/{conversation}/items", {"items": [MESSAGE]}),
        ("GET", f"/v1/conversations/{conversation}/items/{item}", None),
        ("DELETE", f"/v1/conversations/{conversation}/items/{item}", None),
        ("GET", f"/v1/chat/completions/{completion}", None),
        ("POST", f"/v1/chat/completions/{completion}", {"metadata": {}}),
        ("GET", f"/v1/chat/completions/{completion}/messages", None),
        ("DELETE", f"/v1/chat/completions/{completion}", None),
    ]
    with hostile.attack("another key's ids", Bounds(peak_rss_mib=40, log_kib=8,
                                                    ledger_kib=ledger_kib(len(attempts) + 4))
                        ), httpx2.Client(base_url=hostile.base_url, timeout=60, headers={
                            "Authorization": f"Bearer {other}"}) as stranger:
        for method, path, body in attempts:
            answer = stranger.request(method, path, json=body)
            assert answer.status_code == 404, (method, path, answer.text)
        assert stranger.get("/v1/chat/completions").json()["data"] == []
    with hostile.http() as http:  # the owner's state is untouched
        assert http.get(f"/v1/conversations/{conversation}/items/{item}").status_code == 200
        assert http.get(f"/v1/chat/completions/{completion}").status_code == 200


def test_sql_shaped_ids_are_unknown_ids(hostile: HostileServer, conversation: str) -> None:
    with hostile.attack("SQL-shaped ids and filters", Bounds(
            peak_rss_mib=40, log_kib=8, ledger_kib=ledger_kib(4 * len(SQLISH) + 2))), \
            hostile.http() as http:
        for text in SQLISH:
            quoted = "/v1/conversations/" + urllib.parse.quote(text, safe="")
            for path in (quoted, quoted + "/items"):
                answer = http.get(path)
                assert answer.status_code in (400, 404), (path, answer.text)
            answer = http.get(f"/v1/conversations/{conversation}/items",
                              params={"after": text})
            assert answer.status_code == 400, answer.text
            answer = http.get("/v1/chat/completions", params={f"metadata[{text}]": text})
            assert answer.status_code == 200, answer.text
            assert answer.json()["data"] == []
        listed = http.get(f"/v1/conversations/{conversation}/items").json()["data"]
        assert [item["content"][0]["text"] for item in listed] == ["hi"]


def test_text_sqlite_cannot_encode_is_refused_naming_it(hostile: HostileServer) -> None:
    # JSON may carry a lone surrogate; it is no Unicode text: a 400 naming the field, before
    # anything is stored (it used to be stored escaped and echoed back).
    raw = (b'{"metadata": {"k": "v\\udfff"}, "items": [{"type": "message", '
           b'"role": "user", "content": "a\\udc00b"}]}')
    with hostile.attack("lone surrogates in metadata and items",
                        Bounds(peak_rss_mib=40, log_kib=8, ledger_kib=ledger_kib(3))), \
            hostile.http() as http:
        answer = http.post("/v1/conversations", content=raw,
                           headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] in ("metadata.k", "items[0].content")


# -- one key filling the disk ---------------------------------------------------------------

QUOTA_MIB = 1


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    """A server of its own (chat only) whose keys may keep 1 MiB each: filling 256 MiB, the
    default, would take the tier minutes and the disk a quarter of a gigabyte."""
    folder: Path = tmp_path_factory.mktemp("hostile-quota")
    port = free_port()
    config = write_config(folder, port, f'[[models]]\nid = "chat"\npath = "{SMOLLM2}"\n'
                          'context_length = 2048\nparallel = 1\nthreads = 1\n',
                          server_extra=f"max_stored_mb_per_key = {QUOTA_MIB}")
    key = create_key(config, "hostile-quota")
    server = start_server(config, port)
    growth = request.config.stash.get(GROWTH_FILE_KEY, folder / "growth.jsonl")
    served = HostileServer(server, key, "chat", growth)
    try:
        yield served
    finally:
        served.close()


def _state_bytes(server: HostileServer) -> int:
    """The state file and its WAL, as the disk holds them."""
    folder = server.server.config.parent / "data"
    return sum(p.stat().st_size for p in folder.glob("state.sqlite*"))


def _quota_refused(answer: httpx2.Response, param: str) -> None:
    assert answer.status_code == 429, answer.text[:2000]
    assert answer.headers["x-should-retry"] == "false"
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("storage_quota_exceeded", param), error


def _item_count(http: httpx2.Client, conv_id: str) -> int:
    count, after = 0, None
    while True:
        query: dict[str, str | int] = {"limit": 100, **({"after": after} if after else {})}
        page = http.get(f"/v1/conversations/{conv_id}/items", params=query).json()
        count += len(page["data"])
        if not page["has_more"]:
            return count
        after = page["last_id"]


def test_one_key_cannot_fill_the_disk(quota_server: HostileServer) -> None:
    big = [{**MESSAGE, "content": "b" * 40_000} for _ in range(20)]  # 800 KB a request
    small = [{**MESSAGE, "content": "s" * 1_000} for _ in range(20)]  # 20 KB a request
    floods = 200
    requests = 2 + floods + 9
    other = create_key(quota_server.server.config, "hostile-quota-other")
    before = _state_bytes(quota_server)
    with quota_server.attack("one key filling its 1 MiB storage quota", Bounds(
            peak_rss_mib=80, log_kib=requests * 0.25 + 16, ledger_kib=ledger_kib(requests))
                             ), quota_server.http() as http:
        first = http.post("/v1/conversations", json={"items": big})
        assert first.status_code == 200, first.text[:2000]
        conv_id = first.json()["id"]
        _quota_refused(http.post("/v1/conversations", json={"items": big}), "items")
        answers = [http.post(f"/v1/conversations/{conv_id}/items", json={"items": small})
                   for _ in range(floods)]
        kept = sum(answer.status_code == 200 for answer in answers)
        for answer in answers[kept:]:  # once full, every later write is refused
            _quota_refused(answer, "items")
        assert 0 < kept < floods
        # store: true with messages that cannot fit: refused before the model runs.
        _quota_refused(http.post("/v1/chat/completions", json={
            "model": "chat", "store": True, "max_tokens": 4,
            "messages": [{"role": "user", "content": "x" * 300_000}]}), "store")
        # Nothing of a refused write was kept.
        assert _item_count(http, conv_id) == 20 + 20 * kept
        # What one key keeps is its quota and no more, on disk too (with the WAL's pages).
        assert _state_bytes(quota_server) - before < (QUOTA_MIB + 8) * MIB
        # Another key has a quota of its own; the full key gets room back by deleting.
        answer = http.post("/v1/conversations", json={"items": big},
                           headers={"Authorization": f"Bearer {other}"})
        assert answer.status_code == 200, answer.text[:2000]
        assert http.delete(f"/v1/conversations/{conv_id}").status_code == 200
        again = http.post("/v1/conversations", json={"items": big})
        assert again.status_code == 200, again.text[:2000]
