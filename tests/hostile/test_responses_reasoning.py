"""Hostile reasoning items against the real server: ``encrypted_content`` that is huge, not
base64, base64 of nothing this server sealed, of the wrong type, or repeated on thousands of
items; reasoning items in bulk (as many as the input takes, their text as large as the whole
input may be, summaries of more parts than a request may hold). Each is refused naming the
field (400) quickly, or served, while /health keeps answering under a second.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx2
import pytest

from tests.hostile.harness import Bounds, HostileServer
from tests.hostile.test_schemas import ledger_kib


def _post(hostile: HostileServer, body: dict[str, Any]) -> tuple[httpx2.Response, float]:
    # ASCII-escaped JSON: lone surrogates travel as \ud800, as a hostile client sends them.
    raw = json.dumps({"model": hostile.chat_model, "max_output_tokens": 16, "temperature": 0,
                      "store": False, **body}).encode()
    return hostile.timed_post("/v1/responses", raw, 120.0)


def _sealed(token: Any) -> dict[str, Any]:
    return {"type": "reasoning", "summary": [], "encrypted_content": token}


def _turn(*reasoning: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Hi"}, *reasoning,
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]


# Shaped like a token (base64url, the version byte, a nonce, a tag) but sealed by nobody.
FORGED = base64.urlsafe_b64encode(b"\x01" + b"\x00" * 12 + b"forged reasoning" + b"\x00" * 16
                                  ).decode()
CASES: list[tuple[str, Any, str, str]] = [
    ("a token of 1,000,001 chars", "A" * 1_000_001, "input[1]", "at most 1000000"),
    ("a token of 998,668 chars that opens to nothing",
     base64.urlsafe_b64encode(b"\x01" + b"\x07" * 749_000).decode(),
     "input[1].encrypted_content", "does not open"),
    ("a forged token", FORGED, "input[1].encrypted_content", "does not open"),
    ("a token of another format version", "Ag" + FORGED[2:], "input[1].encrypted_content",
     "not an encrypted_content this server made"),
    ("a token that is not base64", "%%%" * 1000, "input[1].encrypted_content",
     "not an encrypted_content this server made"),
    # Refused at the wire, before the token is read: no lone surrogate is text.
    ("a token of lone surrogates and NULs", "\ud800\u0000" * 500, "input[1].encrypted_content",
     "lone UTF-16 surrogate"),
    ("an empty token", "", "input[1].encrypted_content",
     "not an encrypted_content this server made"),
    ("a token that is a number", 12345, "input[1].encrypted_content", "expected a string"),
    ("a token that is an object", {"text": "x"}, "input[1].encrypted_content",
     "expected a string"),
]


@pytest.mark.parametrize(("name", "token", "param", "bound"), CASES,
                         ids=[case[0] for case in CASES])
def test_a_bad_encrypted_content_is_refused_by_name(hostile: HostileServer, name: str,
                                                    token: Any, param: str, bound: str) -> None:
    with hostile.attack(f"responses reasoning: {name}",
                        Bounds(peak_rss_mib=60, log_kib=8, ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, {"input": _turn(_sealed(token))})
    assert answer.status_code == 400, answer.text[:2000]
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert bound in error["message"], error
    assert took < 1.0, took


def test_two_thousand_forged_tokens_stop_at_the_first(hostile: HostileServer) -> None:
    # 2,000 items of 1,900 characters: within the input's count and size, each one a forgery.
    token = base64.urlsafe_b64encode(b"\x01" + b"\x09" * 1_424).decode()
    with hostile.attack("responses reasoning: 2,000 forged tokens",
                        Bounds(peak_rss_mib=80, log_kib=8, ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, {"input": _turn(*[_sealed(token)] * 2_000)})
    assert answer.status_code == 400, answer.text[:2000]
    assert answer.json()["error"]["param"] == "input[1].encrypted_content"
    assert took < 1.0, took


def test_reasoning_items_past_the_item_bound_are_refused(hostile: HostileServer) -> None:
    thought = {"type": "reasoning", "summary": [], "content": [
        {"type": "reasoning_text", "text": "x"}]}
    with hostile.attack("responses reasoning: 20,000 reasoning items",
                        Bounds(peak_rss_mib=80, log_kib=8, ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, {"input": _turn(*[thought] * 20_000)})
    assert answer.status_code == 400, answer.text[:2000]
    assert answer.json()["error"]["param"] == "input"
    assert "at most 2048" in answer.json()["error"]["message"]
    assert took < 1.0, took


def test_a_summary_of_a_hundred_thousand_parts_is_refused(hostile: HostileServer) -> None:
    item = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}] * 100_000}
    with hostile.attack("responses reasoning: a summary of 100,000 parts",
                        Bounds(peak_rss_mib=80, log_kib=8, ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, {"input": _turn(item)})
    assert answer.status_code == 400, answer.text[:2000]
    assert answer.json()["error"]["param"] == "input[1].summary"
    assert took < 1.0, took


def test_reasoning_text_in_bulk_answering_nothing_is_served(hostile: HostileServer) -> None:
    # 2,000 reasoning items no assistant turn follows: they answer nothing and never reach
    # the model, so the question is served as if they were not there.
    thought = {"type": "reasoning", "summary": [], "content": [
        {"type": "reasoning_text", "text": "x" * 1_900}]}
    body = {"input": [{"role": "assistant", "content": "Hello."}, *[thought] * 2_000,
                      {"role": "user", "content": "Say hi"}]}
    with hostile.attack("responses reasoning: 2,000 reasoning items of 1,900 chars",
                        Bounds(peak_rss_mib=120, log_kib=8, ledger_kib=ledger_kib(1))):
        answer, _ = _post(hostile, body)
    assert answer.status_code == 200, answer.text[:2000]
    assert answer.json()["status"] in ("completed", "incomplete")
    assert [i["type"] for i in answer.json()["output"]] == ["message"]


def test_reasoning_text_in_bulk_before_an_answer_is_bounded(hostile: HostileServer) -> None:
    # The same 3.8 million characters as the reasoning of one assistant turn: served if the
    # model's template leaves old reasoning out, else refused as too long for its context.
    thought = {"type": "reasoning", "summary": [], "content": [
        {"type": "reasoning_text", "text": "x" * 1_900}]}
    with hostile.attack("responses reasoning: 3.8 M chars of reasoning on one turn",
                        Bounds(peak_rss_mib=200, log_kib=8, ledger_kib=ledger_kib(1))):
        answer, _ = _post(hostile, {"input": _turn(*[thought] * 2_000)})
    if answer.status_code == 400:
        assert answer.json()["error"]["code"] == "context_length_exceeded", answer.text[:2000]
        assert answer.json()["error"]["param"] == "input"
    else:
        assert answer.status_code == 200, answer.text[:2000]
        assert answer.json()["output"][-1]["type"] == "message"
