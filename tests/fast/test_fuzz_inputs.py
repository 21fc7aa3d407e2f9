"""Hostile input never crashes the server: arbitrary JSON (and non-JSON) bodies on every
route answer a 4xx in OpenAI's envelope or a 2xx, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.openapi_cases import envelope_problem
from tests.conftest import API_KEY, FastStack

pytestmark = pytest.mark.anyio
AUTH = {"authorization": f"Bearer {API_KEY}"}
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
          "/v1/images/generations")
MODELS = {"/v1/chat/completions": "fake-chat", "/v1/completions": "fake-chat",
          "/v1/embeddings": "fake-embed", "/v1/images/generations": None}

scalars = st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) \
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
FIELDS = ["model", "messages", "prompt", "input", "max_tokens", "n", "stop", "temperature",
          "tools", "tool_choice", "response_format", "logit_bias", "logprobs", "top_logprobs",
          "stream", "stream_options", "size", "response_format", "encoding_format",
          "dimensions", "functions", "function_call", "seed", "echo", "suffix"]
MESSAGES = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer", "x"])},
    optional={"content": values, "tool_calls": values, "tool_call_id": values,
              "name": values}), max_size=3)
bodies = st.fixed_dictionaries(
    {}, optional={**{field: values for field in FIELDS}, "messages": MESSAGES | values})


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), body=bodies, keep_model=st.booleans())
async def test_arbitrary_json_bodies_never_500(stack: FastStack, route: str,
                                               body: dict[str, Any], keep_model: bool) -> None:
    if keep_model and MODELS[route] is not None:
        body = {**body, "model": MODELS[route]}
    try:
        raw = json.dumps(body, allow_nan=True)
    except (TypeError, ValueError):
        return
    response = await stack.http.post(route, headers={**AUTH, "content-type":
                                                     "application/json"}, content=raw)
    assert response.status_code < 500, (route, raw, response.text)
    assert envelope_problem(response.status_code, response.content) is None


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=200))
async def test_arbitrary_bytes_never_500(stack: FastStack, route: str, raw: bytes) -> None:
    response = await stack.http.post(route, headers={**AUTH, "content-type":
                                                     "application/json"}, content=raw)
    assert response.status_code < 500, (route, raw, response.text)
    assert envelope_problem(response.status_code, response.content) is None


async def test_deeply_nested_json_is_a_400(stack: FastStack) -> None:
    raw = "[" * 100_000 + "]" * 100_000
    response = await stack.http.post("/v1/chat/completions", headers={
        **AUTH, "content-type": "application/json"}, content=raw)
    assert response.status_code in (400, 413), response.text
    assert envelope_problem(response.status_code, response.content) is None


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(
    st.sampled_from(["model", "language", "prompt", "response_format", "temperature",
                     "timestamp_granularities[]", "timestamp_granularities", "stream",
                     "include[]", "x"]), st.text(max_size=20), max_size=6),
       audio=st.binary(max_size=300), route=st.sampled_from(
           ["/v1/audio/transcriptions", "/v1/audio/translations"]))
async def test_arbitrary_audio_forms_never_500(stack: FastStack, fields: dict[str, str],
                                               audio: bytes, route: str) -> None:
    response = await stack.http.post(route, headers=AUTH, data=fields,
                                     files={"file": ("a.wav", audio)})
    assert response.status_code < 500, (fields, response.text)
    assert envelope_problem(response.status_code, response.content) is None
