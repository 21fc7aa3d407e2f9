"""Hostile stored-state requests against the real server: metadata and item counts far past
their bounds, a conversation of 10,000 items paged every way, pagination values nobody sends,
another key's ids, ids shaped like SQL, text SQLite cannot hold. Each is refused naming the
field, or answered as an unknown id; the state store and /health keep answering.

Ledger bounds count the WAL (see test_schemas.py's ``ledger_kib``): every request here is one
ledger row, refused or not.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import httpx2
import pytest

from devtools.server_harness import create_key
from tests.hostile.harness import Bounds, HostileServer
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
    requests = writes + 100 + 4  # the writes, 100 pages of 100, and the rest
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


def test_text_sqlite_cannot_encode_is_kept_and_echoed(hostile: HostileServer) -> None:
    # JSON may carry a lone surrogate; it is not UTF-8, so it must be escaped, not fail.
    raw = (b'{"metadata": {"k\\ud800": "v\\udfff"}, "items": [{"type": "message", '
           b'"role": "user", "content": "a\\udc00b"}]}')
    with hostile.attack("lone surrogates in metadata and items",
                        Bounds(peak_rss_mib=40, log_kib=8, ledger_kib=ledger_kib(3))), \
            hostile.http() as http:
        answer = http.post("/v1/conversations", content=raw,
                           headers={"content-type": "application/json"})
        assert answer.status_code == 200, answer.text
        conv = json.loads(answer.content)
        assert conv["metadata"] == {"k\ud800": "v\udfff"}
        items = json.loads(http.get(f"/v1/conversations/{conv['id']}/items").content)
        assert items["data"][0]["content"][0]["text"] == "a\udc00b"
