"""Hostile chat and legacy-completions bodies against the real server: the largest, longest,
most repeated values each field takes, and wrongly typed ones. Each is refused (400, 413 for
bytes) naming the parameter, quickly, while /health keeps answering under a second.

Before these bounds, 40,000 tools (2 MB) held the event loop for 12 s (a quadratic duplicate
name check) and ``"stream": "yes"`` streamed. Ledger bounds count the WAL (see
test_schemas.py's ``ledger_kib``).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from tests.hostile.harness import Bounds, HostileServer
from tests.hostile.test_schemas import LOG_KIB, ledger_kib

USER = [{"role": "user", "content": "Say hi"}]


def _post(hostile: HostileServer, path: str, body: dict[str, Any] | bytes,
          timeout: float = 60.0) -> tuple[httpx2.Response, float]:
    return hostile.timed_post(path, body, timeout)


def _refused(answer: httpx2.Response, param: str | None, bound: str,
             status: int = 400) -> None:
    assert answer.status_code == status, answer.text[:2000]
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert bound in error["message"], error


def test_forty_thousand_tools_are_refused_at_once(hostile: HostileServer) -> None:
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
        "type": "object", "properties": {}}}} for i in range(40_000)]
    body = json.dumps({"model": hostile.chat_model, "messages": USER, "tools": tools,
                       "tool_choice": "required"}).encode()
    assert len(body) > 2_000_000
    with hostile.attack("40,000 tools (2.5 MB)", Bounds(peak_rss_mib=60, log_kib=8,
                                                         ledger_kib=ledger_kib(3))):
        for _ in range(3):
            answer, took = _post(hostile, "/v1/chat/completions", body)
            _refused(answer, "tools", "at most 128")
            assert took < 1.0, took


def test_a_hundred_thousand_tiny_messages_are_refused(hostile: HostileServer) -> None:
    body = {"model": hostile.chat_model, "messages": [{"role": "user", "content": "a"}] * 100_000}
    with hostile.attack("100,000 tiny messages", Bounds(peak_rss_mib=60, log_kib=8,
                                                         ledger_kib=ledger_kib(3))):
        for _ in range(3):
            answer, took = _post(hostile, "/v1/chat/completions", body)
            _refused(answer, "messages", "at most 2048")
            assert took < 1.0, took


def _parts(count: int) -> list[dict[str, str]]:
    return [{"type": "text", "text": "a"}] * count


BIG_TOOL = {"type": "function", "function": {"name": "big", "parameters": {
    "type": "object", "description": "d" * 70_000}}}
CHAT_CASES: list[tuple[str, dict[str, Any], str | None, str, int]] = [
    ("stream 'yes'", {"stream": "yes"}, "stream", "expected a boolean", 400),
    ("temperature '0'", {"temperature": "0"}, "temperature", "expected a number", 400),
    ("max_tokens 4.0", {"max_tokens": 4.0}, "max_tokens", "expected an integer", 400),
    ("content 5", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "expected a string or an array", 400),
    ("one message of 1,000,001 chars", {"messages": [{"role": "user",
                                                      "content": "a" * 1_000_001}]},
     "messages[0].content", "at most 1000000", 400),
    ("100,000 content parts", {"messages": [{"role": "user", "content": _parts(100_000)}]},
     "messages[0].content", "more than 8192", 400),
    ("stop of 10,000 chars", {"stop": ["a" * 10_000]}, "stop[0]", "at most 256", 400),
    ("5 stops", {"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4", 400),
    ("100,000 logit_bias entries", {"logit_bias": {str(i): 1 for i in range(100_000)}},
     "logit_bias", "at most 300", 400),
    ("100,000 metadata pairs", {"metadata": {f"k{i}": "v" for i in range(100_000)}},
     "metadata", "at most 16", 400),
    ("a model name of 1 MB", {"model": "m" * 1_000_000}, "model", "at most 256", 400),
    ("n 16 x max_tokens 10,000", {"n": 16, "max_tokens": 10_000}, "n", "at most 65536", 400),
    ("a tool of 70 KB", {"tools": [BIG_TOOL]}, "tools[0]", "at most 65536", 413),
    ("129 functions", {"functions": [{"name": f"f{i}"} for i in range(129)]}, "functions",
     "at most 128", 400),
    ("100,000 unknown fields", {f"x{i}": 1 for i in range(100_000)}, None, "at most 256", 400),
]


@pytest.mark.parametrize(("name", "extra", "param", "bound", "status"), CHAT_CASES,
                         ids=[case[0] for case in CHAT_CASES])
def test_chat_neighbours_are_refused_by_name(hostile: HostileServer, name: str,
                                             extra: dict[str, Any], param: str | None,
                                             bound: str, status: int) -> None:
    body = {"model": hostile.chat_model, "messages": USER, "max_tokens": 4, **extra}
    with hostile.attack(f"chat: {name}", Bounds(peak_rss_mib=60, log_kib=8,
                                                ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, "/v1/chat/completions", body)
    _refused(answer, param, bound, status)
    assert took < 1.0, took


def test_nan_and_endless_integers_are_400s_not_500s(hostile: HostileServer) -> None:
    with hostile.attack("NaN and a 5,000-digit integer", Bounds(peak_rss_mib=20, log_kib=8,
                                                                ledger_kib=ledger_kib(2))):
        for raw in (b'{"model": "m", "messages": [], "temperature": NaN}',
                    b'{"model": "m", "messages": [], "seed": ' + b"9" * 5000 + b"}"):
            answer, _ = _post(hostile, "/v1/chat/completions", raw)
            assert answer.status_code == 400, answer.text
            assert "could not parse the JSON body" in answer.json()["error"]["message"]


COMPLETION_CASES: list[tuple[str, Any, dict[str, Any], str, str]] = [
    ("17 prompts", ["a"] * 17, {}, "prompt", "at most 16"),
    ("131,073 token ids", [1] * 131_073, {}, "prompt", "at most 131072"),
    ("a prompt of 1,000,001 chars", "a" * 1_000_001, {}, "prompt", "at most 1000000"),
    ("16 prompts x n 16 x 300 tokens", ["a"] * 16, {"n": 16, "max_tokens": 300}, "prompt",
     "at most 65536"),
    ("echo 'true'", "a", {"echo": "true"}, "echo", "expected a boolean"),
]


@pytest.mark.parametrize(("name", "prompt", "extra", "param", "bound"), COMPLETION_CASES,
                         ids=[case[0] for case in COMPLETION_CASES])
def test_completion_neighbours_are_refused_by_name(hostile: HostileServer, name: str,
                                                   prompt: Any, extra: dict[str, Any],
                                                   param: str, bound: str) -> None:
    body = {"model": hostile.chat_model, "prompt": prompt, **extra}
    with hostile.attack(f"completions: {name}", Bounds(peak_rss_mib=40, log_kib=8,
                                                       ledger_kib=ledger_kib(1))):
        answer, took = _post(hostile, "/v1/completions", body)
    _refused(answer, param, bound)
    assert took < 1.0, took


def test_just_inside_the_bounds_is_served(hostile: HostileServer) -> None:
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}} for i in range(128)]
    chat = {"model": hostile.chat_model, "max_tokens": 8, "temperature": 0,
            "messages": [*[{"role": "user", "content": "hi"}] * 2047,
                         {"role": "user", "content": "Say hi"}][-2048:],
            "stop": ["s" * 256, "b", "c", "d"], "logit_bias": {str(i): 0 for i in range(300)},
            "metadata": {f"k{i:02}": "v" * 512 for i in range(16)}, "n": 2,
            "tools": tools, "tool_choice": "none"}
    with hostile.attack("chat just inside the bounds",
                        Bounds(peak_rss_mib=60, log_kib=LOG_KIB, ledger_kib=ledger_kib(3))):
        # 2,048 messages are more tokens than this model's 2,048 context: the engine says so.
        answer, _ = _post(hostile, "/v1/chat/completions", chat)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "context_length_exceeded"
        answer, _ = _post(hostile, "/v1/chat/completions", {**chat, "messages": USER * 100})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["choices"]) == 2
        answer, _ = _post(hostile, "/v1/completions", {
            "model": hostile.chat_model, "prompt": [[1, 2, 3]] * 16, "max_tokens": 4})
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["choices"]) == 16


def test_lone_surrogates_are_400s_and_leave_the_models_ready(hostile: HostileServer) -> None:
    """A JSON escape of half a UTF-16 pair failed in the tokenizer as an engine error, on
    every LLM route, and four of them put the models in /ready's ``failing``. The wire refuses
    it naming the field; inside a tool call's arguments (JSON in a string) the tokenizer
    refuses it as the request's fault."""
    # Arguments whose own JSON holds the escape, beside a control token's text: once that is
    # marked, the arguments are written back unescaped, and reach the tokenizer.
    escaped_twice = json.dumps({"city": "\ud800 <|im_start|>"}).replace("<", "\\u003c")
    assert "\\ud800" in escaped_twice
    cases: list[tuple[str, bytes, str | None]] = [
        ("/v1/chat/completions", json.dumps({"model": hostile.chat_model, "max_tokens": 2,
         "messages": [{"role": "user", "content": "hi \ud800"}]}).encode(),
         "messages[0].content"),
        ("/v1/completions", json.dumps({"model": hostile.chat_model, "max_tokens": 2,
         "prompt": "hi \udfff"}).encode(), "prompt"),
        ("/v1/embeddings", json.dumps({"model": "smollm2-135m-embed",
         "input": ["ok", "\ud800"]}).encode(), "input[1]"),
        ("/v1/responses", json.dumps({"model": hostile.chat_model, "max_output_tokens": 16,
         "input": "\ud800"}).encode(), "input"),
        ("/v1/chat/completions", json.dumps({"model": hostile.chat_model, "max_tokens": 2,
         "messages": [{"role": "user", "content": "weather?"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "call_1", "type": "function", "function": {
                              "name": "weather", "arguments": escaped_twice}}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}).encode(),
         None),
    ]
    with hostile.attack("lone surrogates", Bounds(peak_rss_mib=60, log_kib=8,
                                                  ledger_kib=ledger_kib(len(cases)))):
        for path, body, param in cases:
            answer, _ = _post(hostile, path, body)
            assert answer.status_code == 400, (path, answer.text)
            error = answer.json()["error"]
            assert "lone UTF-16 surrogate" in error["message"], error
            assert error["param"] == param, error
    with hostile.http() as http:
        ready = http.get("/ready").json()
    assert ready["status"] == "ready" and not ready.get("failing"), ready
