"""Legacy /v1/completions over a fake engine, through the official SDK."""

from __future__ import annotations

import json

import pytest

from tests.conftest import API_KEY, FastStack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
AUTH = {"authorization": f"Bearer {API_KEY}"}


async def test_text_completion_shape_default_max_tokens_and_echo(stack: FastStack) -> None:
    raw = await stack.client.completions.with_raw_response.create(
        model="gpt-4o-mini", prompt="Once upon a time", echo=True, max_tokens=3)
    validate(raw.http_response.json(), "CreateCompletionResponse")
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.model == "fake-chat"
    assert completion.choices[0].text == "Once upon a timeHello there, this "
    assert completion.choices[0].finish_reason == "length"
    assert stack.engine.calls[-1].prompt == "Once upon a time"
    assert stack.engine.calls[-1].messages == ()
    await stack.client.completions.create(model="fake-chat", prompt="x")
    assert stack.engine.calls[-1].max_tokens == 16  # OpenAI's default for completions


async def test_several_prompts_and_n_number_choices_prompt_by_prompt(stack: FastStack) -> None:
    completion = await stack.client.completions.create(
        model="fake-chat", prompt=["a b", "c d e"], n=2, max_tokens=2)
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 8
    token_prompt = await stack.client.completions.create(model="fake-chat", prompt=[1, 2, 3])
    assert token_prompt.choices[0].text
    assert stack.engine.calls[-1].prompt == (1, 2, 3)


async def test_stream_chunks_validate_and_carry_usage(stack: FastStack) -> None:
    response = await stack.http.post("/v1/completions", headers=AUTH, json={
        "model": "fake-chat", "prompt": ["one", "two"], "stream": True, "max_tokens": 3,
        "stream_options": {"include_usage": True}})
    frames = [line[len("data: "):] for line in response.text.split("\n\n") if line]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    for chunk in chunks[:-1]:
        # The spec has one schema for the object and its stream chunks; OpenAI streams
        # finish_reason null until the end, which that schema's enum leaves out.
        if chunk["choices"][0]["finish_reason"] is not None:
            validate(chunk, "CreateCompletionResponse")
        assert set(chunk) == {"id", "object", "created", "model", "system_fingerprint",
                              "choices"}
    texts = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == {0: "Hello there, this ", 1: "Hello there, this "}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-chat"}, "prompt"),
        ({"model": "fake-chat", "prompt": []}, "prompt"),
        ({"model": "fake-chat", "prompt": "x", "suffix": "end"}, "suffix"),
        ({"model": "fake-chat", "prompt": "x", "logprobs": 2, "echo": True}, "logprobs"),
        ({"model": "fake-chat", "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": "fake-chat", "prompt": "x", "best_of": 3}, "best_of"),
        ({"model": "fake-chat", "prompt": [1, 2], "echo": True}, "echo"),
        ({"model": "fake-embed", "prompt": "x"}, "model"),
    ],
)
async def test_bad_completion_requests_are_400(stack: FastStack, body: dict[str, object],
                                               param: str) -> None:
    response = await stack.http.post("/v1/completions", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_completion_logprobs_in_the_legacy_shape(stack: FastStack) -> None:
    completion = await stack.client.completions.create(model="fake-chat", prompt="x", logprobs=2,
                                                    max_tokens=3)
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["Hello ", "there, ", "this "]
    assert logprobs.token_logprobs == [-0.5, -0.5, -0.5]
    assert logprobs.top_logprobs is not None and len(logprobs.top_logprobs[0]) == 2
    assert logprobs.text_offset == [0, 6, 13]
    assert "".join(logprobs.tokens) == completion.choices[0].text


async def test_streamed_completion_logprobs_carry_running_offsets(stack: FastStack) -> None:
    offsets: list[int] = []
    async for chunk in await stack.client.completions.create(
            model="fake-chat", prompt="x", logprobs=1, max_tokens=3, stream=True):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            offsets.extend(chunk.choices[0].logprobs.text_offset or [])
    assert offsets == [0, 6, 13]
