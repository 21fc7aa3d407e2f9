"""Hostile JSON schemas against the real server: response formats and tool parameters whose
grammar would crash llama.cpp's parser (100,000 nested groups), loop ($ref cycles) or cost
minutes per token (nested quantifiers); each is a 400 naming the keyword, and the server
stays up. A schema just inside every bound still constrains the real model.

The crash points behind the bounds (see appliance/engines/llm/schema_bounds.py) were found
with a child process per depth, so a crash killed only it: a grammar of ``d`` nested groups
compiled by ``llama_sampler_init_grammar`` in a thread died (SIGSEGV) from about d = 19,000
with the default 8 MiB stack, 4,700 with 2 MiB and 2,200 with 1 MiB.

Ledger bounds count the WAL: each row adds about 28 KB of pages there (see
test_http_edges.py); the bound is ``ledger_kib(requests)``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import pytest

from tests.hostile.harness import Bounds, HostileServer

WHERE = "response_format.json_schema.schema"
CRASHING: list[tuple[dict[str, Any], str]] = [
    ({"type": "string", "maxLength": 100_000}, "maxLength"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 100_000}, "maxItems"),
    ({"type": "string", "pattern": "^a{0,100000}$"}, "pattern"),
]


# An attack that generates runs for seconds, and /health is asked every 0.1 s: its access
# lines (about 100 bytes each) are most of the log growth.
LOG_KIB = 48


def ledger_kib(requests: int) -> float:
    """The WAL growth of ``requests`` rows and the harness's normal chat: about 52 KiB each,
    and a page run more when the writer's batch and SQLite's checkpoint fall unluckily (one
    refused request and the normal chat were once 144.5 KiB instead of 104.6)."""
    return 56.0 * (requests + 1) + 64.0


def _chat(hostile: HostileServer, timeout: float = 120.0, **extra: Any) -> Any:
    body = {"model": hostile.chat_model, "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "user", "content": "Describe a cat as JSON."}], **extra}
    with hostile.http(timeout) as http:
        return http.post("/v1/chat/completions", json=body)


def _schema_format(schema: dict[str, Any], strict: bool | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "answer", "schema": schema}
    if strict is not None:
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def _refused(answer: Any, param: str, bound: str, status: int = 400) -> None:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["param"] == param, error
    assert bound in error["message"], error


@pytest.mark.parametrize("strict", [None, False, True])
def test_schemas_that_crashed_the_server_are_400s(hostile: HostileServer,
                                                  strict: bool | None) -> None:
    with hostile.attack(f"crashing response schemas, strict={strict}",
                        Bounds(peak_rss_mib=20, log_kib=8, ledger_kib=ledger_kib(3))):
        for schema, keyword in CRASHING:
            answer = _chat(hostile, response_format=_schema_format(schema, strict))
            _refused(answer, f"{WHERE}.{keyword}", "at most 1000")


def test_crashing_tool_parameters_are_400s(hostile: HostileServer) -> None:
    tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}} for i in range(3)]
    with hostile.attack("crashing tool parameters",
                        Bounds(peak_rss_mib=20, log_kib=8, ledger_kib=ledger_kib(6))):
        for schema, keyword in CRASHING:
            bad = {"type": "function", "function": {"name": "bad", "parameters": {
                "type": "object", "properties": {"x": schema}, "required": ["x"]}}}
            for choice in ("required", {"type": "function", "function": {"name": "bad"}}):
                answer = _chat(hostile, tools=[*tools, bad], tool_choice=choice)
                _refused(answer, f"tools[3].function.parameters.properties.x.{keyword}",
                         "at most 1000")


@pytest.mark.parametrize(("schema", "param", "bound"), [
    # $ref cycles: left recursion, which llama.cpp cannot compile (it silently constrained
    # nothing), through a $ref alone and through anyOf.
    ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, f"{WHERE}.$ref",
     "refers back to itself"),
    ({"$defs": {"a": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/b"}]},
                "b": {"$ref": "#/$defs/a"}}, "type": "object",
      "properties": {"x": {"$ref": "#/$defs/a"}}}, f"{WHERE}.$defs.a.anyOf[1].$ref",
     "refers back to itself"),
    # 40 levels of arrays.
    (json.loads('{"type": "array", "items": ' * 40 + '{"type": "string"}' + "}" * 40),
     WHERE + ".items" * 32, "more than 32 levels"),
    # Nested quantifiers: ((a{0,10}){0,10}){0,10} took 33 s per token on this build.
    ({"type": "string", "pattern": "^((a{0,10}){0,10}){0,10}$"}, f"{WHERE}.pattern",
     "at most 128"),
    ({"type": "string", "pattern": "^(a{0,30}){0,30}$"}, f"{WHERE}.pattern", "at most 128"),
    # Neighbours: many enum values, wide anyOf, optional properties (quadratic in the
    # converter), lengths adding up, and a schema too large to read at all.
    ({"enum": [f"v{i}" for i in range(1001)]}, f"{WHERE}.enum", "more than 1000"),
    ({"anyOf": [{"type": "integer"}] * 257}, f"{WHERE}.anyOf", "at most 256"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(65)}},
     f"{WHERE}.properties", "at most 64"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000}
                                       for i in range(11)}},
     f"{WHERE}.properties.p10.maxLength", "more than 10000"),
    ({"type": "object", "description": "x" * 70_000}, WHERE, "at most 65536"),
])
def test_hostile_schemas_are_400s_naming_the_keyword(hostile: HostileServer,
                                                      schema: dict[str, Any], param: str,
                                                      bound: str) -> None:
    status = 413 if "65536" in bound else 400
    with hostile.attack(f"schema refused at {param[len(WHERE):][:30] or 'root'}",
                        Bounds(peak_rss_mib=20, log_kib=8, ledger_kib=ledger_kib(2))):
        for strict in (False, True):
            started = time.monotonic()
            answer = _chat(hostile, response_format=_schema_format(schema, strict))
            assert time.monotonic() - started < 2.0
            if strict and answer.json()["error"]["code"] == "unsupported_schema":
                continue  # strict refused a keyword first (e.g. additionalProperties)
            _refused(answer, param, bound, status)


def test_a_recursive_schema_constrains_the_model(hostile: HostileServer) -> None:
    """What pydantic writes for a recursive model (a root $ref into $defs): a finite grammar
    for an unbounded language; max_tokens bounds the output."""
    schema = {"$defs": {"Node": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 20},
        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 2}},
        "required": ["name", "children"], "additionalProperties": False}},
        "$ref": "#/$defs/Node"}
    with hostile.attack("recursive schema", Bounds(peak_rss_mib=40, log_kib=LOG_KIB,
                                                   ledger_kib=ledger_kib(1))):
        answer = _chat(hostile, max_tokens=300, response_format=_schema_format(schema, True))
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        jsonschema.validate(json.loads(choice["message"]["content"]), schema)


# With name and tags, their lengths and counts add up to 9,049 of the 10,000.
INSIDE_STRINGS = {f"s{i}": {"type": "string", "maxLength": 1000} for i in range(7)}
JUST_INSIDE: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 1000},
        "kind": {"enum": [f"kind-{i}" for i in range(999)]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10},
                 "maxItems": 1000},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-((\\d{1,3}\\.){3}){0,2}$"},
        "deep": json.loads('{"type": "array", "maxItems": 1, "items": ' * 29
                           + '{"type": "integer"}' + "}" * 29),
        **INSIDE_STRINGS},
    "required": ["name", "kind"],
}


@pytest.mark.parametrize("where", ["response_format", "tool"])
def test_a_schema_just_inside_every_bound_still_works(hostile: HostileServer,
                                                      where: str) -> None:
    extra: dict[str, Any]
    schema = JUST_INSIDE
    if where == "response_format":
        extra = {"response_format": _schema_format(schema, True)}
    else:
        # A tool's schema is also written into the prompt: 999 enum values are more tokens
        # than this model's context holds.
        schema = {**JUST_INSIDE, "properties": {**JUST_INSIDE["properties"],
                                               "kind": {"enum": ["cat", "dog"]}}}
        extra = {"tools": [{"type": "function", "function": {
            "name": "describe", "parameters": schema}}], "tool_choice": "required"}
    with hostile.attack(f"a schema just inside the bounds ({where})",
                        Bounds(peak_rss_mib=40, log_kib=LOG_KIB, ledger_kib=ledger_kib(1))):
        started = time.monotonic()
        answer = _chat(hostile, max_tokens=400, **extra)
        took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "tool_calls"), (choice, took)
    if where == "response_format":
        output = choice["message"]["content"]
    else:
        output = choice["message"]["tool_calls"][0]["function"]["arguments"]
    jsonschema.validate(json.loads(output), schema)


def test_schemas_holding_a_nul_are_answered_and_the_process_lives(
        hostile: HostileServer) -> None:
    """Each of these aborted the whole process inside llama.cpp (the red team's finding): a
    NUL in a const, an enum of a required tool call, a Responses text format; the pattern
    form is refused, the others are answered with JSON holding the escape."""
    nul_tool = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"enum": ["x\u0000"]}}, "required": ["a"]}}}]
    nul_object = {"type": "object", "properties": {"k": {"const": "\u0000"}},
                  "required": ["k"], "additionalProperties": False}
    with hostile.attack("schemas holding a NUL", Bounds(peak_rss_mib=60, log_kib=16,
                                                        ledger_kib=ledger_kib(4))):
        answer = _chat(hostile, response_format=_schema_format({"const": "a\u0000b"}, True))
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.json()["choices"][0]["message"]["content"]) == "a\u0000b"
        answer = _chat(hostile, tools=nul_tool, tool_choice="required")
        assert answer.status_code == 200, answer.text
        call = answer.json()["choices"][0]["message"]["tool_calls"][0]["function"]
        assert json.loads(call["arguments"]) == {"a": "x\u0000"}
        answer = _chat(hostile, response_format=_schema_format(
            {"type": "string", "pattern": "^\\x00$"}, True))
        _refused(answer, f"{WHERE}.pattern", "a JSON string must escape")
        with hostile.http(120.0) as http:
            answer = http.post("/v1/responses", json={
                "model": hostile.chat_model, "max_output_tokens": 40, "temperature": 0,
                "input": "hi", "text": {"format": {"type": "json_schema", "name": "x",
                                                   "strict": True, "schema": nul_object}}})
        assert answer.status_code == 200, answer.text
        texts = [part["text"] for item in answer.json()["output"] if item["type"] == "message"
                 for part in item["content"]]
        assert json.loads(texts[0]) == {"k": "\u0000"}
