"""The chat API over a fake engine, driven by the official AsyncOpenAI client in-process."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import API_KEY, FastStack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
USER = [{"role": "user", "content": "Say hello"}]


async def test_non_streaming_completion_matches_openai_shape(stack: FastStack) -> None:
    raw = await stack.client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=USER)
    body = json.loads(raw.content)
    validate(body, "CreateChatCompletionResponse")
    completion = raw.parse()
    assert completion.choices[0].message.content == stack.engine.reply
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(stack.engine.reply.split())
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens)
    assert raw.headers["x-request-id"].startswith("req_")


async def test_alias_resolves_to_canonical_model(stack: FastStack) -> None:
    completion = await stack.client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert completion.model == "fake-chat"
    assert stack.ledger.rows[-1].model == "fake-chat"


async def test_streaming_sends_role_then_content_then_one_finish(stack: FastStack) -> None:
    stream = await stack.client.chat.completions.create(model="fake-chat", messages=USER,
                                                        stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == stack.engine.reply
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1


async def test_stream_frames_validate_and_end_with_done(stack: FastStack) -> None:
    response = await stack.http.post(
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {API_KEY}"},
        json={"model": "fake-chat", "messages": USER, "stream": True,
              "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = [line[len("data: "):] for line in response.text.split("\n\n") if line]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == len(stack.engine.reply.split())
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_max_tokens_stops_with_length(stack: FastStack) -> None:
    completion = await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, max_completion_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


async def test_parameters_reach_the_engine(stack: FastStack) -> None:
    await stack.client.chat.completions.create(
        model="fake-chat",
        messages=[{"role": "developer", "content": "Be terse."},
                  {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                               {"type": "text", "text": " there"}]}],
        temperature=0.0, top_p=0.5, seed=7, stop=["x", "y"], max_tokens=9, user="u1",
        presence_penalty=0.5, frequency_penalty=0.25)
    params = stack.engine.calls[-1]
    assert [(m.role, m.content) for m in params.messages] == [
        ("system", "Be terse."), ("user", "Hi there")]
    assert params.sampling.temperature == 0.0
    assert params.sampling.top_p == 0.5
    assert params.sampling.seed == 7
    assert params.sampling.presence_penalty == 0.5
    assert params.sampling.frequency_penalty == 0.25
    assert params.stop == ("x", "y")
    assert params.max_tokens == 9


async def test_unknown_fields_are_accepted(stack: FastStack) -> None:
    completion = await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, extra_body={"some_future_field": {"a": 1}})
    assert completion.choices[0].message.content


async def test_stop_string_is_not_in_output(stack: FastStack) -> None:
    completion = await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, stop="canned")
    assert completion.choices[0].message.content == "Hello there, this is a "
    assert completion.choices[0].finish_reason == "stop"


async def test_engine_failure_mid_stream_sends_error_frame_then_done(stack: FastStack) -> None:
    stack.engine.fail_after = 2
    response = await stack.http.post(
        "/v1/chat/completions", headers={"authorization": f"Bearer {API_KEY}"},
        json={"model": "fake-chat", "messages": USER, "stream": True})
    frames = [line[len("data: "):] for line in response.text.split("\n\n") if line]
    assert frames[-1] == "[DONE]"
    error = json.loads(frames[-2])
    validate(error, "ErrorResponse")
    assert error["error"]["type"] == "server_error"
    assert stack.ledger.rows[-1].status == "error"
    assert stack.ledger.rows[-1].price == 0.0


async def test_engine_failure_before_stream_is_500_envelope(stack: FastStack) -> None:
    stack.engine.fail_after = 0
    with pytest.raises(openai.InternalServerError) as caught:
        await stack.client.chat.completions.create(model="fake-chat", messages=USER)
    assert caught.value.status_code == 500


async def test_n_choices_each_complete_and_usage_adds_up(stack: FastStack) -> None:
    raw = await stack.client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=USER, n=3)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert all(c.message.content == stack.engine.reply for c in completion.choices)
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3 * len(stack.engine.reply.split())


async def test_n_choices_stream_with_indexes(stack: FastStack) -> None:
    stream = await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, n=2, stream=True,
        stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    finishes: list[int] = []
    usage = None
    async for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.index)
        usage = chunk.usage or usage
    assert texts == {0: stack.engine.reply, 1: stack.engine.reply}
    assert sorted(finishes) == [0, 1]
    assert usage is not None and usage.completion_tokens == 2 * len(stack.engine.reply.split())


async def test_sampling_extensions_and_logit_bias_reach_the_engine(stack: FastStack) -> None:
    await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, logit_bias={"42": -100, "7": 2.5},
        extra_body={"top_k": 20, "min_p": 0.05, "repeat_penalty": 1.1})
    sampling = stack.engine.calls[-1].sampling
    assert sampling.logit_bias == ((7, 2.5), (42, -100.0))
    assert (sampling.top_k, sampling.min_p, sampling.repeat_penalty) == (20, 0.05, 1.1)


async def test_response_formats_reach_the_engine(stack: FastStack) -> None:
    await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, response_format={"type": "json_object"})
    assert stack.engine.calls[-1].output is not None
    assert stack.engine.calls[-1].output.kind == "json_object"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    await stack.client.chat.completions.create(
        model="fake-chat", messages=USER,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "thing", "schema": schema, "strict": True}})
    output = stack.engine.calls[-1].output
    assert output is not None and output.kind == "json_schema"
    assert output.strict is True and output.schema == schema
    await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, response_format={"type": "text"})
    assert stack.engine.calls[-1].output is None


async def test_logprobs_in_openai_shape_stream_and_not(stack: FastStack) -> None:
    raw = await stack.client.chat.completions.with_raw_response.create(
        model="fake-chat", messages=USER, logprobs=True, top_logprobs=2)
    validate(raw.http_response.json(), "CreateChatCompletionResponse")
    choice = raw.parse().choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    assert all(len(t.top_logprobs) == 2 and bytes(t.bytes or []) == t.token.encode()
               for t in tokens)
    stream = await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, logprobs=True, stream=True)
    streamed = [t async for chunk in stream for c in chunk.choices
                if c.logprobs and c.logprobs.content for t in c.logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in tokens]
    plain = await stack.client.chat.completions.create(model="fake-chat", messages=USER)
    assert plain.choices[0].logprobs is None


async def test_full_queue_is_503_with_retry_after(stack: FastStack) -> None:
    stack.engine.overloaded = True
    with pytest.raises(openai.InternalServerError) as caught:
        await stack.client.chat.completions.create(model="fake-chat", messages=USER)
    response = caught.value.response
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"  # whole seconds, rounded up
    assert response.json()["error"]["code"] == "overloaded"


async def test_requests_carry_their_key_for_fair_slots(stack: FastStack) -> None:
    await stack.client.chat.completions.create(model="fake-chat", messages=USER)
    await stack.client.completions.create(model="fake-chat", prompt="x")
    owners = {params.owner for params in stack.engine.calls[-2:]}
    assert len(owners) == 1 and None not in owners
