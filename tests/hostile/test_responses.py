"""Hostile Responses API bodies against the real server: the largest, longest, most repeated
and most tangled values each field takes (tools, namespaces, input items, call ids, include,
metadata), wrong item sequences, and floods of background work. Each is refused (400, 413 for
bytes, 429 for background work past its bound) naming the parameter, quickly, while /health
keeps answering under a second. Chains that loop are the store's to stop (a bound on the
turns it follows): tests/fast/test_responses_state.py plants one.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from tests.hostile.harness import Bounds, HostileServer
from tests.hostile.test_schemas import ledger_kib

FUNCTION = {"type": "function", "name": "f", "parameters": {"type": "object",
                                                           "properties": {}}}


def _post(hostile: HostileServer, body: dict[str, Any] | bytes, path: str = "/v1/responses",
          timeout: float = 60.0) -> tuple[httpx2.Response, float]:
    return hostile.timed_post(path, body, timeout)


def _refused(answer: httpx2.Response, param: str | None, bound: str, status: int = 400) -> None:
    assert answer.status_code == status, answer.text[:2000]
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert bound in error["message"], error


def _call(call_id: str) -> dict[str, str]:
    return {"type": "function_call", "call_id": call_id, "name": "f", "arguments": "{}"}


def test_forty_thousand_tools_and_namespaced_functions_are_refused(
        hostile: HostileServer) -> None:
    flat = [{**FUNCTION, "name": f"tool_{i}"} for i in range(40_000)]
    namespaced = [{"type": "namespace", "name": "ns", "description": "d",
                   "tools": [{**FUNCTION, "name": f"tool_{i}"} for i in range(40_000)]}]
    bodies = [json.dumps({"model": hostile.chat_model, "input": "hi", "tools": tools,
                          "tool_choice": "required"}).encode() for tools in (flat, namespaced)]
    assert all(len(body) > 2_000_000 for body in bodies)
    with hostile.attack("responses: 40,000 tools, flat and in a namespace",
                        Bounds(peak_rss_mib=60, log_kib=8, ledger_kib=ledger_kib(4))):
        for body in bodies * 2:
            answer, took = _post(hostile, body)
            _refused(answer, "tools", "at most 128")
            assert took < 1.0, took


def test_a_hundred_thousand_input_items_are_refused(hostile: HostileServer) -> None:
    body = {"model": hostile.chat_model, "input": [{"role": "user", "content": "a"}] * 100_000}
    with hostile.attack("responses: 100,000 tiny input items",
                        Bounds(peak_rss_mib=60, log_kib=8, ledger_kib=ledger_kib(3))):
        for _ in range(3):
            answer, took = _post(hostile, body)
            _refused(answer, "input", "at most 2048")
            assert took < 1.0, took


BIG_MEMBER = {**FUNCTION, "name": "big", "description": "d" * 70_000}
CASES: list[tuple[str, dict[str, Any], str | None, str, int]] = [
    ("background 'yes'", {"background": "yes"}, "background", "expected a boolean", 400),
    ("input 5", {"input": 5}, "input", "expected a string or an array", 400),
    ("one item of 1,000,001 chars", {"input": [{"role": "user", "content": "a" * 1_000_001}]},
     "input[0]", "at most 1000000", 400),
    ("instructions of 1,000,001 chars", {"instructions": "a" * 1_000_001}, "instructions",
     "at most 1000000", 400),
    ("100,000 content parts", {"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "a"}] * 100_000}]}, "input[0].content",
     "more than 8192", 400),
    ("a call id of 1 MB", {"input": [_call("c" * 1_000_000)]}, "input[0].call_id",
     "at most 256", 400),
    ("100,000 include values", {"include": ["reasoning.encrypted_content"] * 100_000},
     "include", "at most 16", 400),
    ("100,000 metadata pairs", {"metadata": {f"k{i}": "v" for i in range(100_000)}},
     "metadata", "at most 16", 400),
    ("a previous_response_id of 1 MB", {"previous_response_id": "r" * 1_000_000},
     "previous_response_id", "at most 256", 400),
    ("a conversation id of 1 MB", {"conversation": {"id": "c" * 1_000_000}}, "conversation",
     "at most 256", 400),
    ("a namespace member of 70 KB", {"tools": [{"type": "namespace", "name": "ns",
                                                "description": "d", "tools": [BIG_MEMBER]}]},
     "tools[0].tools[0]", "at most 65536", 413),
    ("allowed_tools of 100,000 entries", {"tools": [FUNCTION], "tool_choice": {
        "type": "allowed_tools", "mode": "auto",
        "tools": [{"type": "function", "name": "f"}] * 100_000}}, "tool_choice.tools",
     "at most 128", 400),
    ("a text.format schema of 70 KB", {"text": {"format": {
        "type": "json_schema", "name": "s", "schema": {"type": "object",
                                                       "description": "d" * 70_000}}}},
     "text.format.schema", "at most 65536", 413),
    ("2,000 calls with one id", {"input": [_call("same")] * 2_000}, "input[1].call_id",
     "two open function calls", 400),
    ("2,000 outputs of no call", {"input": [{"type": "function_call_output",
                                             "call_id": "none", "output": "x"}] * 2_000},
     "input[0].call_id", "No tool call found", 400),
    ("a call never answered", {"input": [_call("c1"), {"role": "user", "content": "go"}]},
     "input[0]", "No tool output found", 400),
    ("built-in tool items", {"input": [{"type": "computer_call", "id": "cu_1"}] * 1_000},
     "input[0].type", "runs no built-in tools", 400),
    ("forcing a built-in tool", {"tools": [{"type": "web_search"}],
                                 "tool_choice": {"type": "web_search_preview"}},
     "tool_choice", "does not run", 400),
]


@pytest.mark.parametrize(("name", "extra", "param", "bound", "status"), CASES,
                         ids=[case[0] for case in CASES])
def test_responses_neighbours_are_refused_by_name(hostile: HostileServer, name: str,
                                                  extra: dict[str, Any], param: str | None,
                                                  bound: str, status: int) -> None:
    body = {"model": hostile.chat_model, "input": "hi", "max_output_tokens": 16,
            "stream": True, **extra}
    with hostile.attack(f"responses: {name}", Bounds(peak_rss_mib=60, log_kib=8,
                                                     ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, body)
    _refused(answer, param, bound, status)
    assert took < 1.0, took


def test_input_nested_a_hundred_thousand_deep_is_a_400(hostile: HostileServer) -> None:
    deep = b'{"model": "m", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with hostile.attack("responses: input nested 100,000 deep",
                        Bounds(peak_rss_mib=40, log_kib=8, ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, deep)
    assert answer.status_code == 400, answer.text
    assert took < 1.0, took


def test_input_tokens_refuses_what_create_refuses(hostile: HostileServer) -> None:
    body = {"model": hostile.chat_model, "input": [{"role": "user", "content": "a"}] * 100_000}
    with hostile.attack("responses/input_tokens: 100,000 items",
                        Bounds(peak_rss_mib=60, log_kib=8, ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, body, "/v1/responses/input_tokens")
    _refused(answer, "input", "at most 2048")
    assert took < 1.0, took


def test_a_flood_of_background_work_is_bounded(hostile: HostileServer) -> None:
    body = {"model": hostile.chat_model, "input": "Count to one hundred.", "background": True,
            "max_output_tokens": 64, "temperature": 0}
    with hostile.attack("responses: 40 background requests at once",
                        Bounds(peak_rss_mib=80, log_kib=48, ledger_kib=ledger_kib(40))):
        answers = [_post(hostile, body)[0] for _ in range(40)]
        accepted = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code == 429]
        assert len(accepted) + len(refused) == len(answers), [a.text for a in answers]
        assert refused and all("background responses at once" in a.json()["error"]["message"]
                               for a in refused)
        assert all(a.json()["status"] == "queued" for a in accepted)
        with hostile.http() as http:
            for answer in accepted:  # stop what is still running: the next test starts clean
                http.post(f"/v1/responses/{answer.json()['id']}/cancel")


def test_streaming_a_response_that_is_not_background_is_refused(
        hostile: HostileServer) -> None:
    with hostile.http() as http:
        made = http.post("/v1/responses", json={"model": hostile.chat_model, "input": "hi",
                                                "max_output_tokens": 16, "temperature": 0})
        assert made.status_code == 200, made.text
        response_id = made.json()["id"]
        with hostile.attack("responses: GET with hostile query values",
                            Bounds(peak_rss_mib=40, log_kib=8, ledger_kib=ledger_kib(3))):
            for params, param in (({"stream": "true"}, "stream"),
                                  ({"starting_after": "9" * 5000}, None),
                                  ({"include": ["x"] * 1000}, None)):
                answer = http.get(f"/v1/responses/{response_id}", params=params)
                assert answer.status_code == 400, answer.text
                if param is not None:
                    assert answer.json()["error"]["param"] == param
