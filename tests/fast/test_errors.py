"""Every failure reaches the client as OpenAI's envelope with the status the SDKs expect."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from tests.conftest import API_KEY, FastStack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
USER = [{"role": "user", "content": "Say hello"}]
AUTH = {"authorization": f"Bearer {API_KEY}"}


def envelope(body: Any) -> dict[str, Any]:
    validate(body, "ErrorResponse")
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_missing_key_is_401(stack: FastStack) -> None:
    response = await stack.http.get("/v1/models")
    assert response.status_code == 401
    assert envelope(response.json())["type"] == "invalid_request_error"
    assert response.headers["x-request-id"]
    assert stack.ledger.rows[-1].http_status == 401
    assert stack.ledger.rows[-1].status == "error"


async def test_wrong_key_raises_authentication_error(stack: FastStack) -> None:
    client = stack.client.with_options(api_key="sk-app-wrong-wrong-wrong")
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.models.list()
    assert caught.value.code == "invalid_api_key"
    assert "wrong-wrong-wrong" not in caught.value.message


async def test_unknown_model_is_404_naming_model(stack: FastStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await stack.client.chat.completions.create(model="no-such-model", messages=USER)
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"
    assert stack.engine.calls == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, "model"),
        ({"model": "fake-chat"}, "messages"),
        ({"model": "fake-chat", "messages": []}, "messages"),
        ({"model": "fake-chat", "messages": USER, "temperature": "hot"}, "temperature"),
        ({"model": "fake-chat", "messages": USER, "temperature": 3}, "temperature"),
        ({"model": "fake-chat", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "fake-chat", "messages": [{"role": "wizard", "content": "x"}]},
         "messages[0].role"),
        ({"model": "fake-chat", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "fake-chat", "messages": USER, "n": 17}, "n"),
        ({"model": "fake-chat", "messages": USER, "logit_bias": {"hello": 5}}, "logit_bias"),
        ({"model": "fake-chat", "messages": USER, "logit_bias": {"5": 500}}, "logit_bias.5"),
        ({"model": "fake-chat", "messages": USER, "top_k": -1}, "top_k"),
        ({"model": "fake-chat", "messages": USER,
          "tools": [{"type": "function", "function": {"name": "f"}}], "audio": {}}, "audio"),
        ({"model": "fake-chat", "messages": USER, "response_format": {"type": "yaml"}},
         "response_format.type"),
        ({"model": "fake-chat", "messages": USER,
          "response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
         "response_format.json_schema.name"),
        ({"model": "fake-chat", "messages": USER, "top_logprobs": 2}, "top_logprobs"),
        ({"model": "fake-chat", "messages": USER, "logprobs": True, "top_logprobs": 21},
         "top_logprobs"),
        ({"model": "fake-chat", "messages": USER, "stream_options": {"include_usage": True}},
         "stream_options"),
        ({"model": "fake-chat", "messages": [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-1"}}]}]},
         "messages[0].content[0].type"),
        # fake-chat has no projector: a picture for it is refused, naming the part.
        ({"model": "fake-chat", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
         "messages[0].content[0]"),
        ({"model": "fake-chat", "messages": [{"role": "tool", "content": "x",
                                              "tool_call_id": "c1"}]},
         "messages[0].tool_call_id"),
    ],
)
async def test_invalid_requests_are_400_naming_the_param(
    stack: FastStack, body: dict[str, Any], param: str
) -> None:
    response = await stack.http.post("/v1/chat/completions", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    error = envelope(response.json())
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert stack.engine.calls == []


async def test_sdk_raises_bad_request_for_unsupported_parameter(stack: FastStack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await stack.client.chat.completions.create(model="fake-chat", messages=USER,
                                                   reasoning_effort="high")
    assert caught.value.param == "reasoning_effort"


async def test_malformed_json_is_400(stack: FastStack) -> None:
    response = await stack.http.post(
        "/v1/chat/completions", headers={**AUTH, "content-type": "application/json"},
        content=b'{"model": "fake-chat", "messages": [')
    assert response.status_code == 400
    assert "parse the JSON" in envelope(response.json())["message"]


async def test_deeply_nested_json_is_400_not_500(stack: FastStack) -> None:
    response = await stack.http.post(
        "/v1/chat/completions", headers={**AUTH, "content-type": "application/json"},
        content=b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code in (400, 413)
    envelope(response.json())


async def test_wrong_content_type_is_400(stack: FastStack) -> None:
    response = await stack.http.post(
        "/v1/chat/completions", headers={**AUTH, "content-type": "text/plain"},
        content=b"hello")
    assert response.status_code == 400
    envelope(response.json())


async def test_body_over_limit_is_413(stack: FastStack) -> None:
    big = [{"role": "user", "content": "x" * (70 * 1024)}]
    response = await stack.http.post("/v1/chat/completions", headers=AUTH,
                                     json={"model": "fake-chat", "messages": big})
    assert response.status_code == 413
    envelope(response.json())


async def test_unknown_route_is_404_envelope(stack: FastStack) -> None:
    response = await stack.http.get("/v1/nothing-here", headers=AUTH)
    assert response.status_code == 404
    envelope(response.json())


async def test_wrong_method_is_405_envelope(stack: FastStack) -> None:
    # Not GET /v1/chat/completions: that lists stored completions (a 404 without a store).
    response = await stack.http.get("/v1/embeddings", headers=AUTH)
    assert response.status_code == 405
    envelope(response.json())


async def test_prompt_over_context_is_context_length_exceeded(stack: FastStack) -> None:
    long = [{"role": "user", "content": "word " * 200}]
    with pytest.raises(openai.BadRequestError) as caught:
        await stack.client.chat.completions.create(model="fake-chat", messages=long)
    assert caught.value.code == "context_length_exceeded"
    assert stack.ledger.rows[-1].status == "error"
    assert stack.ledger.rows[-1].error_code == "context_length_exceeded"


async def test_every_response_carries_a_request_id(stack: FastStack) -> None:
    for response in [
        await stack.http.get("/health"),
        await stack.http.get("/v1/models", headers=AUTH),
        await stack.http.get("/v1/models"),
        await stack.http.post("/v1/chat/completions", headers=AUTH, json={}),
    ]:
        assert response.headers["x-request-id"].startswith("req_")
