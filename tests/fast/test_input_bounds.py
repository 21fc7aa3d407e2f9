"""Bounds on chat and completions inputs, on schemas and grammars, and strict wire types.

Over fakes (the grammar tests call the converter directly): every bound is a 400 (413 for
bytes) naming the parameter and the bound, checked before any work.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from appliance.api.app import create_app
from appliance.api.bounds import RequestBounds
from appliance.api.services import Services
from appliance.api.wire.tools import tool_use
from appliance.engines.base import CHAT as CHAT_KIND
from appliance.engines.base import EMBEDDING, IMAGE, Listing, OutputFormat, ToolSpec, ToolUse
from appliance.engines.catalog import Catalog
from appliance.engines.llm.grammar import grammar_for
from appliance.engines.llm.regex_gbnf import gbnf_pattern
from appliance.engines.llm.schema_bounds import SCHEMA_BOUNDS, SchemaBudget, check_grammar
from appliance.engines.llm.tool_dialects import detect
from appliance.engines.llm.tool_grammar import tool_call_grammar
from appliance.errors import InvalidRequest
from appliance.ledger import KeyStore
from tests.fakes import FakeChatEngine, FakeEmbeddingEngine, FakeImageEngine, ListLedger

USER = [{"role": "user", "content": "Hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": USER}
SMALL = RequestBounds(max_body_bytes=1024 * 1024,
                      max_messages=8, max_message_chars=100, max_total_chars=250,
                      max_message_parts=10, max_tools=4, max_tool_schema_bytes=400,
                      max_response_schema_bytes=400, max_stop_chars=8, max_prompts=3,
                      max_prompt_token_ids=20, max_choice_tokens=100, max_logit_bias=3,
                      max_metadata_pairs=2, max_metadata_key_chars=4,
                      max_metadata_value_chars=6, max_name_chars=12)
WHERE = "response_format.json_schema.schema"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx2.AsyncClient]:
    """An app with small bounds (so each is cheap to pass) and a real key store, whose admin
    key rides along in a header of the client's own (the app ignores it)."""
    with KeyStore(tmp_path / "keys.sqlite") as keys:
        services = Services(
            catalog=Catalog([
                Listing(CHAT_KIND, FakeChatEngine(), ("gpt-4o-mini",)),
                Listing(EMBEDDING, FakeEmbeddingEngine(),
                        ("text-embedding-3-small", "embed-small")),
                Listing(IMAGE, FakeImageEngine(), ("dall-e-2",))]),
            ledger=ListLedger(), keys=keys, key_admin=keys,
            bounds=SMALL)
        user, admin = keys.create("tester")[1], keys.create("ops", admin=True)[1]
        client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(services)),
                                    base_url="http://appliance.test",
                                    headers={"Authorization": f"Bearer {user}",
                                             "X-Test-Admin-Key": admin})
        try:
            yield client
        finally:
            await client.aclose()


def _error(response: httpx2.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


# -- strict types ---------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
    ("/v1/chat/completions", {**CHAT, "temperature": "1"}, "temperature"),
    ("/v1/chat/completions", {**CHAT, "n": 1.0}, "n"),
    ("/v1/chat/completions", {**CHAT, "seed": True}, "seed"),
    ("/v1/chat/completions", {**CHAT, "model": 5}, "model"),
    ("/v1/chat/completions", {**CHAT, "stop": 5}, "stop"),
    ("/v1/chat/completions", {**CHAT, "logprobs": 1}, "logprobs"),
    ("/v1/chat/completions", {"model": "gpt-4o-mini",
                              "messages": [{"role": "user", "content": 5}]},
     "messages[0].content"),
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "x", "max_tokens": "4"},
     "max_tokens"),
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "x", "echo": "true"}, "echo"),
    ("/v1/embeddings", {"model": "embed-small", "input": "x", "dimensions": "8"},
     "dimensions"),
    ("/v1/images/generations", {"prompt": "a cat", "n": "1"}, "n"),
])
async def test_wrong_json_types_are_400_naming_the_field(
        http: httpx2.AsyncClient, path: str, body: dict[str, Any], param: str) -> None:
    error = _error(await http.post(path, json=body))
    assert (error["param"], error["code"]) == (param, "invalid_type"), error
    assert error["message"].startswith(f"Invalid type for '{param}': expected ")


@pytest.mark.anyio
async def test_admin_key_fields_are_strict(http: httpx2.AsyncClient) -> None:
    admin = {"Authorization": f"Bearer {http.headers['X-Test-Admin-Key']}"}
    answer = await http.post("/v1/organization/api_keys", headers=admin,
                             json={"name": "bob", "rpm": "5"})
    error = _error(answer)
    assert (error["param"], error["code"]) == ("rpm", "invalid_type")
    ok = await http.post("/v1/organization/api_keys", headers=admin,
                         json={"name": "bob", "rpm": 5, "monthly_budget": 2})
    assert ok.status_code == 201, ok.text


@pytest.mark.anyio
async def test_an_integer_is_still_a_number(http: httpx2.AsyncClient) -> None:
    answer = await http.post("/v1/chat/completions", json={**CHAT, "temperature": 1,
                                                          "top_p": 1, "stream": False})
    assert answer.status_code == 200, answer.text


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [b'{"model": "m", "temperature": NaN}',
                                 b'{"model": "m", "seed": ' + b"1" * 5000 + b"}"])
async def test_nan_and_endless_integers_are_not_json(http: httpx2.AsyncClient,
                                                      raw: bytes) -> None:
    answer = await http.post("/v1/chat/completions", content=raw,
                             headers={"Content-Type": "application/json"})
    assert "could not parse the JSON body" in _error(answer)["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "raw", "param"), [
    ("/v1/chat/completions",
     rb'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi \ud800"}]}',
     "messages[0].content"),
    ("/v1/chat/completions",
     rb'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": '
     rb'[{"type": "text", "text": "\uDFFF\ud83d"}]}]}', "messages[0].content[0].text"),
    ("/v1/chat/completions", rb'{"model": "gpt-4o-mini", "messages": [{"role": "user", '
     rb'"content": "hi"}], "logit_bias": {"\ud800": 1}}', "logit_bias"),
    ("/v1/completions", rb'{"model": "gpt-4o-mini", "prompt": ["ok", "\udc00"]}', "prompt[1]"),
    ("/v1/embeddings", rb'{"model": "text-embedding-3-small", "input": "\ud800"}', "input"),
    ("/v1/chat/completions", rb'{"\ud800": 1, "model": "gpt-4o-mini"}', None),
])
async def test_a_lone_surrogate_escape_is_a_400_naming_where_it_is(
        http: httpx2.AsyncClient, path: str, raw: bytes, param: str | None) -> None:
    """JSON can escape half a UTF-16 pair; that is no Unicode text, and failed as an engine
    error in the tokenizer (counted against the model's readiness)."""
    error = _error(await http.post(path, content=raw,
                                   headers={"Content-Type": "application/json"}))
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert "lone UTF-16 surrogate" in error["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(("raw", "param"), [
    (b'{"model": "gpt-4o-mini", "messages": [], "temperature": 1e400}', "temperature"),
    (b'{"model": "gpt-4o-mini", "messages": [], "logit_bias": {"1": -1' + b"0" * 400 + b'.0}}',
     "logit_bias.1"),
    # 1e309 written with a 211-digit mantissa and a two-digit exponent.
    (b'{"model": "gpt-4o-mini", "messages": [], "top_p": 1' + b"0" * 210 + b'e99}', "top_p"),
])
async def test_a_number_past_a_double_is_a_400_naming_it(http: httpx2.AsyncClient, raw: bytes,
                                                        param: str) -> None:
    """json reads 1e400 as infinity, which passed every bound written as a comparison."""
    error = _error(await http.post("/v1/chat/completions", content=raw,
                                   headers={"Content-Type": "application/json"}))
    assert error["param"] == param and "beyond a double's range" in error["message"]


@pytest.mark.anyio
@pytest.mark.parametrize("raw", [
    # json.loads(bytes) read surrogates' own UTF-8 bytes, and UTF-16, where no escape shows.
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',
    '{"model": "gpt-4o-mini", "messages": []}'.encode("utf-16"),
])
async def test_a_body_that_is_not_utf8_is_a_400(http: httpx2.AsyncClient, raw: bytes) -> None:
    error = _error(await http.post("/v1/chat/completions", content=raw,
                                   headers={"Content-Type": "application/json"}))
    assert "not UTF-8" in error["message"]


@pytest.mark.anyio
async def test_a_byte_order_mark_is_allowed(http: httpx2.AsyncClient) -> None:
    raw = b"\xef\xbb\xbf" + json.dumps(CHAT).encode()
    answer = await http.post("/v1/chat/completions", content=raw,
                             headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text


@pytest.mark.anyio
async def test_surrogate_pairs_and_escaped_backslashes_are_text(
        http: httpx2.AsyncClient) -> None:
    for text in [r"\ud83d\ude00 grin", r"a \\ud800 written out"]:
        raw = ('{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
               + text + '"}]}').encode()
        answer = await http.post("/v1/chat/completions", content=raw,
                                 headers={"Content-Type": "application/json"})
        assert answer.status_code == 200, answer.text


@pytest.mark.anyio
async def test_too_many_fields_and_a_short_log_line(http: httpx2.AsyncClient,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    many = {f"x{i}": 1 for i in range(300)}
    assert "at most 256" in _error(await http.post("/v1/chat/completions",
                                                   json={**CHAT, **many}))["message"]
    caplog.set_level(logging.INFO, "appliance.api")
    some = {("y" * 1000) + str(i): 1 for i in range(50)}
    assert (await http.post("/v1/chat/completions", json={**CHAT, **some})).status_code == 200
    line = next(r.getMessage() for r in caplog.records if "unknown request fields" in
                r.getMessage())
    assert len(line) < 1000 and line.endswith("and 42 more")


# -- chat bounds ----------------------------------------------------------------------------

def _text_parts(count: int) -> list[dict[str, str]]:
    return [{"type": "text", "text": "a"} for _ in range(count)]


FUNCTION = {"type": "function", "function": {"name": "f"}}


@pytest.mark.anyio
@pytest.mark.parametrize(("extra", "param", "bound"), [
    ({"messages": USER * 9}, "messages", "at most 8"),
    ({"messages": [{"role": "user", "content": "a" * 101}]}, "messages[0].content",
     "at most 100"),
    ({"messages": [{"role": "user", "content": "a" * 90}] * 3}, "messages[2].content",
     "more than 250"),
    ({"messages": [{"role": "user", "content": _text_parts(11)}]}, "messages[0].content",
     "more than 10"),
    ({"messages": [{"role": "user", "content": [
        *_text_parts(2), {"type": "text", "text": "a" * 99}]}]}, "messages[0].content",
     "at most 100"),
    ({"messages": [{"role": "user", "content": "hi", "name": "n" * 13}]}, "messages[0].name",
     "at most 12"),
    ({"messages": [USER[0], {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "x" * 101}}]}]},
     "messages[1].content", "at most 100"),
    ({"tools": [FUNCTION] * 5}, "tools", "at most 4"),
    ({"functions": [{"name": "f"}] * 5}, "functions", "at most 4"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({"stop": "a" * 9}, "stop", "at most 8"),
    ({"stop": ["a", "b" * 9]}, "stop[1]", "at most 8"),
    ({"logit_bias": {"1": 1, "2": 1, "3": 1, "4": 1}}, "logit_bias", "at most 3"),
    # Logits are divided by it in float32: 1e-300 overflowed them and the output was noise.
    ({"repeat_penalty": 1e-300}, "repeat_penalty", "greater than or equal to 0.01"),
    # str.isdigit() takes these, int() refuses the first and reads the second as token 12.
    ({"logit_bias": {"\u00b2": 1}}, "logit_bias", "not a token id"),
    ({"logit_bias": {"\uff11\uff12": 1}}, "logit_bias", "not a token id"),
    ({"logit_bias": {"1" * 5000: 1}}, "logit_bias", "not a token id"),
    ({"metadata": {"a": "1", "b": "2", "c": "3"}}, "metadata", "at most 2"),
    ({"metadata": {"abcde": "1"}}, "metadata", "at most 4"),
    ({"metadata": {"a": "1234567"}}, "metadata.a", "at most 6"),
    ({"model": "m" * 13}, "model", "at most 12"),
    ({"user": "u" * 13}, "user", "at most 12"),
    ({"modalities": ["text"] * 9}, "modalities", "at most 8"),
    ({"n": 3, "max_tokens": 34}, "n", "at most 100"),
    ({"n": 2}, "n", "at most 100"),  # the fake's context (64) stands in for max_tokens
])
async def test_chat_bounds_are_400s_naming_the_param(
        http: httpx2.AsyncClient, extra: dict[str, Any], param: str, bound: str) -> None:
    error = _error(await http.post("/v1/chat/completions", json={**CHAT, **extra}))
    assert error["param"] == param, error
    assert bound in error["message"], error


@pytest.mark.anyio
async def test_schema_and_tool_sizes_are_413s(http: httpx2.AsyncClient) -> None:
    big = {"type": "object", "description": "d" * 400}
    tool = {"type": "function", "function": {"name": "f", "parameters": big}}
    error = _error(await http.post("/v1/chat/completions", json={**CHAT, "tools": [tool]}), 413)
    assert error["param"] == "tools[0]" and "at most 400" in error["message"]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": big}}
    error = _error(await http.post("/v1/chat/completions",
                                   json={**CHAT, "response_format": fmt}), 413)
    assert error["param"] == WHERE and "at most 400" in error["message"]


@pytest.mark.anyio
async def test_just_inside_the_chat_bounds_is_served(http: httpx2.AsyncClient) -> None:
    body = {**CHAT, "messages": [{"role": "user", "content": "a" * 100}, *USER * 7],
            "tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(4)],
            "stop": ["a" * 8, "b", "c", "d"], "logit_bias": {"1": 1, "2": 1, "3": 1},
            "metadata": {"abcd": "123456", "b": "c"}, "n": 2, "max_tokens": 50,
            "user": "u" * 12}
    answer = await http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text


# -- labels on every route that takes them ----------------------------------------------------

EMBED = {"model": "embed-small", "input": "x"}  # within the small bound of 12
RESPONSE = {"model": "gpt-4o-mini", "input": "Hi"}


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/embeddings", {**EMBED, "user": "u" * 100_000}, "user"),
    ("/v1/embeddings", {**EMBED, "model": "m" * 300_000}, "model"),
    ("/v1/embeddings", {**EMBED, "model": "m" * 13}, "model"),
    ("/v1/images/generations", {"prompt": "a cat", "model": "m" * 300_000}, "model"),
    ("/v1/images/generations", {"prompt": "a cat", "user": "u" * 13}, "user"),
    ("/v1/images/generations", {"prompt": "a cat", "safety_identifier": "s" * 13},
     "safety_identifier"),
    ("/v1/responses", {**RESPONSE, "model": "m" * 300_000}, "model"),
    ("/v1/responses/input_tokens", {**RESPONSE, "model": "m" * 300_000}, "model"),
    ("/v1/completions", {"model": "m" * 300_000, "prompt": "x"}, "model"),
    ("/v1/chat/completions", {**CHAT, "model": "m" * 300_000}, "model"),
])
async def test_labels_past_their_bound_are_400s_that_do_not_quote_them(
        http: httpx2.AsyncClient, path: str, body: dict[str, Any], param: str) -> None:
    answer = await http.post(path, json=body)
    error = _error(answer)
    assert (error["param"], error["code"]) == (param, "string_above_max_length"), error
    assert "at most 12" in error["message"], error
    assert len(answer.content) < 1024  # never the name back (a 404 quoted 300 KB of it)


@pytest.mark.anyio
async def test_labels_within_their_bound_still_reach_the_model(
        http: httpx2.AsyncClient) -> None:
    ok = await http.post("/v1/embeddings", json={**EMBED, "user": "u" * 12})
    assert ok.status_code == 200, ok.text
    unknown = _error(await http.post("/v1/embeddings", json={**EMBED, "model": "m" * 12}), 404)
    assert unknown["code"] == "model_not_found"


@pytest.mark.anyio
async def test_a_model_name_in_a_path_or_a_key_is_bounded_too(
        http: httpx2.AsyncClient) -> None:
    long = "m" * 8000  # inside the URL bound
    answer = await http.get(f"/v1/models/{long}")
    error = _error(answer)
    assert error["param"] == "model" and "at most 12" in error["message"], error
    assert len(answer.content) < 1024
    admin = {"Authorization": f"Bearer {http.headers['X-Test-Admin-Key']}"}
    answer = await http.post("/v1/organization/api_keys", headers=admin,
                             json={"name": "bob", "models": ["gpt-4o-mini", "m" * 300_000]})
    error = _error(answer)
    assert error["param"] == "models[1]" and "at most 12" in error["message"], error
    assert len(answer.content) < 1024


# -- legacy completions ---------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize(("prompt", "extra", "param", "bound"), [
    (["a", "b", "c", "d"], {}, "prompt", "at most 3"),
    ("a" * 101, {}, "prompt", "at most 100"),
    (["a" * 90, "b" * 90, "c" * 90], {}, "prompt[2]", "more than 250"),
    (list(range(21)), {}, "prompt", "at most 20"),
    ([[1, 2], list(range(21))], {}, "prompt[1]", "at most 20"),
    (["a", "b", "c"], {"n": 2, "max_tokens": 17}, "prompt", "at most 100"),
    ("a", {"n": 7}, "n", "at most 100"),  # 7 x the default 16 tokens
])
async def test_completion_bounds_are_400s_naming_the_param(
        http: httpx2.AsyncClient, prompt: Any, extra: dict[str, Any], param: str,
        bound: str) -> None:
    body = {"model": "gpt-4o-mini", "prompt": prompt, **extra}
    error = _error(await http.post("/v1/completions", json=body))
    assert error["param"] == param, error
    assert bound in error["message"], error


@pytest.mark.anyio
async def test_just_inside_the_completion_bounds_is_served(http: httpx2.AsyncClient) -> None:
    for prompt in (["a" * 100, "b", "c"], list(range(20)), [[1], [2], list(range(20))]):
        answer = await http.post("/v1/completions", json={
            "model": "gpt-4o-mini", "prompt": prompt, "max_tokens": 16, "n": 2})
        assert answer.status_code == 200, answer.text


# -- tools ----------------------------------------------------------------------------------

def test_duplicate_tool_names_are_found_in_one_pass() -> None:
    tools: list[dict[str, Any]] = [{"type": "function", "function": {"name": f"f{i}"}}
                                   for i in range(50_000)]
    started = time.monotonic()
    assert tool_use(tools, None, None, None, None) is not None
    with pytest.raises(InvalidRequest, match="used twice"):
        tool_use([*tools, tools[-1]], None, None, None, None)
    assert time.monotonic() - started < 2.0  # the quadratic check took minutes here


# -- schemas --------------------------------------------------------------------------------

def _refused(schema: dict[str, Any], strict: bool = False) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        grammar_for(OutputFormat("json_schema", schema, strict))
    return caught.value


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels - 1):
        schema = {"type": "array", "items": schema}
    return schema


NESTED_PATTERN = "^((a{0,10}){0,10}){0,10}$"


@pytest.mark.parametrize(("schema", "param", "bound"), [
    ({"type": "string", "maxLength": 100_000}, f"{WHERE}.maxLength", "at most 1000"),
    ({"type": "string", "minLength": 1001}, f"{WHERE}.minLength", "at most 1000"),
    ({"type": "array", "items": {"type": "integer"}, "maxItems": 100_000},
     f"{WHERE}.maxItems", "at most 1000"),
    ({"type": "object", "properties": {"x": {"type": "string", "maxLength": 1001}}},
     f"{WHERE}.properties.x.maxLength", "at most 1000"),
    ({"type": "string", "pattern": "^a{0,100000}$"}, f"{WHERE}.pattern", "at most 1000"),
    ({"type": "string", "pattern": NESTED_PATTERN}, f"{WHERE}.pattern", "at most 128"),
    ({"type": "string", "pattern": "^((a{0,10}){0,10})*$"}, f"{WHERE}.pattern",
     "at most 128"),
    ({"type": "string", "pattern": "^" + "a" * 1001 + "$"}, f"{WHERE}.pattern",
     "at most 1000"),
    ({"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000}
                                       for i in range(11)},
      "required": [f"p{i}" for i in range(11)]}, f"{WHERE}.properties.p10.maxLength",
     "more than 10000"),
    ({"enum": list(range(1001))}, f"{WHERE}.enum", "more than 1000"),
    ({"anyOf": [{"type": "integer"}] * 257}, f"{WHERE}.anyOf", "at most 256"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(257)},
      "required": [f"p{i}" for i in range(257)]}, f"{WHERE}.properties", "at most 256"),
    ({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(65)}},
     f"{WHERE}.properties", "at most 64"),
    (_nested(33), f"{WHERE}" + ".items" * 32, "more than 32 levels"),
    ({"type": "object", "properties": {"x": {"const": json.loads("[" * 40 + "]" * 40)}}},
     f"{WHERE}.properties.x.const" + "[0]" * 30, "more than 32 levels"),
    ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, f"{WHERE}.$ref",
     "refers back to itself"),
    ({"$defs": {"a": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/b"}]},
                "b": {"oneOf": [{"$ref": "#/$defs/a"}]}},
      "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}},
     f"{WHERE}.$defs.a.anyOf[1].$ref", "refers back to itself"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, f"{WHERE}.minLength", "greater"),
    ({"type": "string", "maxLength": "5"}, f"{WHERE}.maxLength", "non-negative integer"),
])
@pytest.mark.parametrize("strict", [False, True])
def test_schema_bounds_name_the_keyword(schema: dict[str, Any], param: str, bound: str,
                                        strict: bool) -> None:
    if strict and param.endswith("properties") and "at most 64" in bound:
        return  # strict has nothing to say about optional properties: the bound does
    refused = _refused(schema, strict)
    assert refused.param == param, refused
    assert bound in refused.message, refused


def test_all_the_schemas_of_a_request_share_one_budget() -> None:
    parameters = {"type": "object", "properties": {"s": {"type": "string", "maxLength": 900}},
                  "required": ["s"]}
    tools = tuple(ToolSpec(f"f{i}", None, parameters, False) for i in range(12))
    dialect = detect("{{ messages }}").dialect
    with pytest.raises(InvalidRequest) as caught:
        tool_call_grammar(ToolUse(tools, "required"), dialect)
    assert caught.value.param == "tools[11].function.parameters.properties.s.maxLength"
    assert "more than 10000" in caught.value.message
    assert tool_call_grammar(ToolUse(tools[:11], "required"), dialect)


def test_the_node_count_is_bounded() -> None:
    budget = SchemaBudget()
    schema = {"anyOf": [{"type": "integer"}] * 250}  # 251 objects
    for i in range(39):
        budget.check(schema, f"tools[{i}].function.parameters")
    with pytest.raises(InvalidRequest, match="more than 10000 objects") as caught:
        for i in range(39, 41):
            budget.check(schema, f"tools[{i}].function.parameters")
    assert caught.value.param is not None
    assert caught.value.param.startswith("tools[39].function.parameters.anyOf[")


def test_just_inside_the_schema_bounds_converts() -> None:
    strings = {f"s{i}": {"type": "string", "maxLength": 1000} for i in range(9)}
    schema = {"type": "object", "additionalProperties": False,
              "properties": {**strings,
                             "items": {"type": "array", "items": {"type": "integer"},
                                       "minItems": 1, "maxItems": 900},
                             "ip": {"type": "string", "pattern": "^(\\d{1,3}\\.){3}\\d{1,3}$"},
                             "code": {"type": "string", "pattern": "^((a{0,3}){0,3}){0,3}$"},
                             "kind": {"enum": [f"k{i}" for i in range(900)]},
                             "deep": _nested(30)},
              "required": [*strings, "items", "ip", "code", "kind", "deep"]}
    grammar = grammar_for(OutputFormat("json_schema", schema, strict=True))
    check_grammar(grammar, "response_format")  # also done inside; here for its own sake
    assert "root ::=" in grammar


def test_a_self_recursive_schema_through_properties_converts() -> None:
    # What pydantic writes for a recursive model: a root $ref into $defs.
    schema = {"$defs": {"Node": {"type": "object", "properties": {
        "value": {"type": "integer"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}, "maxItems": 3}},
        "required": ["value", "children"], "additionalProperties": False}},
        "$ref": "#/$defs/Node"}
    grammar = grammar_for(OutputFormat("json_schema", schema, strict=True))
    assert "root ::= Node" in grammar


def test_converter_errors_do_not_quote_the_schema_back() -> None:
    schema = {"$ref": "#/$defs/missing", "$defs": {"other": {"description": "d" * 5000}}}
    refused = _refused(schema)
    assert refused.param == WHERE and len(refused.message) < 400


def test_the_grammar_itself_is_bounded() -> None:
    deep = "root ::= " + "(" * (SCHEMA_BOUNDS.max_grammar_nesting + 1) + '"a"' + \
        ")" * (SCHEMA_BOUNDS.max_grammar_nesting + 1)
    with pytest.raises(InvalidRequest, match="nest more than 1024 groups"):
        check_grammar(deep, "tools")
    # Parentheses inside literals and character classes are text, not groups.
    check_grammar('root ::= "' + "(" * 5000 + '" [(]', "tools")
    with pytest.raises(InvalidRequest, match="repeats a part 1001 times"):
        check_grammar("root ::= [a-z]{0,1001}", "tools")
    with pytest.raises(InvalidRequest, match="bytes"):
        check_grammar('root ::= "' + "a" * SCHEMA_BOUNDS.max_grammar_bytes + '"', "tools")


# Unicode spaces ECMA-262 and Python's re both count (\s writes them, \S none of them).
_SPACES = "\\xA0\\u1680\\u2000-\\u200A\\u2028-\\u2029\\u202F\\u205F\\u3000"


@pytest.mark.parametrize(("pattern", "rewritten"), [
    ("^\\d{3}-\\d{4}$", "^[0-9]{3}-[0-9]{4}$"),
    ("^(\\d{1,3}\\.){3}$", "^([0-9]{1,3}[\\x2E]){3}$"),
    ("^[\\w.-]+$", "^[\\x2D-\\x2E0-9A-Z\\x5Fa-z]+$"),
    # \S and a negated class never write what JSON escapes; \s writes no tab or line end.
    ("^\\S\\s[\\-\\]]$", "^[^\\x00-\\x20\\x22\\x5C\\x7F\\x85" + _SPACES
     + "\\uD800-\\uDFFF\\uFEFF][\\x20" + _SPACES + "][\\x2D\\x5D]$"),
    ("^\\x41\\u00e9\\u4e2d$", "^[A][\\xE9][\\u4E2D]$"),
    # Printable ASCII loses the quote and the backslash; '.' excludes them too.
    ("^[ -~]{2}.$",
     "^[\\x20-\\x21\\x23-\\x5B\\x5D-\\x7E]{2}[^\\x00-\\x1F\\x22\\x5C\\x7F\\u2028-\\u2029\\uD800-\\uDFFF]$"),
    # The converter gave the string's quotes to one branch each of a top-level choice.
    ("^a|b$", "^(a|b)$"),
    # Not quantifiers in ECMA-262: literal braces (the converter read them as counts).
    ("^a{ 3 }$", "^a[\\x7B] 3 [\\x7D]$"),
    # \D and a negated class holding \d or \w keep to ASCII: Python's \d and \w are Unicode.
    ("^\\D[^\\w]$", "^[\\x20-\\x21\\x23-\\x2F\\x3A-\\x5B\\x5D-\\x7E]"
     "[\\x20-\\x21\\x23-\\x2F\\x3A-\\x40\\x5B\\x5D-\\x5E\\x60\\x7B-\\x7E]$"),
    # A UTF-16 pair is one character; a group that captures nothing is a group.
    ("^\\uD83D\\uDE00(?:ab)+$", "^[\\U0001F600](ab)+$"),
])
def test_pattern_escapes_become_what_gbnf_parses(pattern: str, rewritten: str) -> None:
    # llama.cpp cannot parse "\\d" or "\\." in a grammar: it printed the whole grammar to
    # stderr and constrained nothing.
    grammar = grammar_for(OutputFormat("json_schema", {"type": "string", "pattern": pattern}))
    assert "\\d" not in grammar and "\\." not in grammar and "\\S" not in grammar
    assert gbnf_pattern(pattern, "p") == rewritten


@pytest.mark.parametrize(("pattern", "rewritten"), [
    # The idiom for "letters and digits" (and letters alone): what both dialects agree on.
    ("^[^\\W_]+$", "^[0-9A-Za-z]+$"), ("^[^\\W\\d_]$", "^[A-Za-z]$"),
    ("^[^\\D]$", "^[0-9]$"), ("^[^\\S]$", "^[\\x20" + _SPACES + "]$"),
    # In a positive class, what both put in \\D or \\W: ASCII, as outside a class.
    ("^[\\Da]$", "^[\\x20-\\x21\\x23-\\x2F\\x3A-\\x5B\\x5D-\\x7E]$"),
])
def test_negated_escapes_inside_a_class_write_what_both_dialects_match(
        pattern: str, rewritten: str) -> None:
    assert gbnf_pattern(pattern, "p") == rewritten


@pytest.mark.parametrize("pattern", ["[^\\W_]", "[\\W_]", "[\\Da]", "[^\\S\\d]", "[\\S]",
                                     "[^\\Wa]", "[\\s\\S]"])
def test_every_character_a_class_with_negated_escapes_writes_matches_it(pattern: str) -> None:
    # Python's re stands for the validator; the class's GBNF form reads as a Python class.
    written = re.compile(gbnf_pattern(f"^{pattern}$", "p")[1:-1])
    points = [*range(0xD800), *range(0xE000, 0x10000), *range(0x10000, 0x110000, 97)]
    wrong = [hex(p) for p in points if written.fullmatch(chr(p))
             and not re.fullmatch(pattern, chr(p))]
    assert not wrong, wrong[:10]


@pytest.mark.parametrize("pattern", [
    "^(\\+\\d{1,2}\\s?)?\\(?\\d{3}\\)?[\\s.-]?\\d{3}[\\s.-]?\\d{4}$",
    "^((25[0-5]|2[0-4]\\d|[01]?\\d?\\d)\\.){3}(25[0-5]|2[0-4]\\d|[01]?\\d?\\d)$",
    "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?(Z|[+-]\\d{2}:\\d{2})?$",
    "^[^\\s@]+@[^\\s@]+\\.[^\\s@]+$", "^([A-Z][a-z]*\\s?)+$", "^[a-z]{0,50}[0-9]{0,50}$",
    "^(" + "|".join(["a"] * 16) + ")+$", "^([a-z]*|[0-9]*|[A-Z]*)+$", "^" + "[a-z]?" * 16 + "$",
])
def test_common_patterns_stay_within_the_cost_bound(pattern: str) -> None:
    """Phone, IPv4, ISO date-time, e-mail, words: each measured at 0.01 s a constrained step;
    the bound's edges (16 alternatives repeated, 16 optional parts) at 0.04 and 0.1 s."""
    assert gbnf_pattern(pattern, "p")


def test_literals_reach_the_grammar_as_the_json_text_they_are() -> None:
    """The converter escaped no backslash: the const's JSON text "a\\u0000b" became the code
    point 0 in GBNF, which no token writes (llama.cpp then aborted the process)."""
    grammar = grammar_for(OutputFormat("json_schema", {"enum": ["a\u0000b", 'q"', "b\\s"]},
                                       strict=True))
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root == ('root ::= "\\"a\\\\u0000b\\"" | "\\"q\\\\\\"\\"" | '
                    '"\\"b\\\\\\\\s\\""')


@pytest.mark.parametrize(("required", "why"), [
    (["a"], "'required' names 'a'"), ("ab", "must be an array")])
def test_a_required_name_properties_do_not_define_is_refused_when_strict(
        required: object, why: str) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"const": 1}},
              "required": required}
    if isinstance(required, list):
        del schema["properties"]["a"]  # type: ignore[attr-defined]
    with pytest.raises(InvalidRequest, match=why) as refused:
        grammar_for(OutputFormat("json_schema", schema, strict=True))
    assert refused.value.param == f"{WHERE}.required"


@pytest.mark.parametrize("pattern", [
    "^\\bword$", "^(a)\\1$", "^\\p{L}$", "^a\\",
    # A negated class that leaves no character at all.
    "^[^\\w\\W]$",
    # What only a JSON escape can write: the grammar writes a pattern's characters raw. A
    # NUL (as \x00, \u0000 or \0) left no token to match and llama.cpp aborted the process.
    "^\\x00$", "^\\u0000$", "^a\\0$", "^\\t$", "^[\\n\\r]$", '^a"$', "^\\\\$",
    # Anchors inside (written as literal characters) and patterns not anchored at all.
    "^a$|^b$", "^a^b$", "abc", "^[]$",
    # Read differently by the two dialects: no output matches both.
    "^a{,5}$",
    # Only surrogates, which UTF-8 cannot hold (the answer came back as U+FFFD).
    "^[\\uD800-\\uDFFF]$",
    # Parts of variable length that overlap, and alternatives under a repetition: measured at
    # 0.4 s to 87 s for each constrained token (regex_gbnf.MAX_VARIABLE_WEIGHT).
    "^([a-z]*|[a-z]*|[a-z]*|[a-z]*|[a-z]*)+$", "^(" + "|".join(["a"] * 17) + ")+$",
    "^(([a-z]*|[a-z]*)+|([0-9]*|[0-9]*)+)+$", "^" + "[a-z]?" * 40 + "$", "^([a-z]?){1,50}$",
    "^(([a-z]?[a-z]?)+[a-z]?[a-z]?)+$",
    "^(?=a)b$", "^(a$", "^a)$",
])
def test_pattern_escapes_without_a_grammar_form_are_refused(pattern: str) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": pattern}}}
    refused = _refused(schema)
    assert refused.param == f"{WHERE}.properties.x.pattern"
    assert refused.code == "unsupported_schema"
