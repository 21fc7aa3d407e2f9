"""Legacy /v1/completions over a fake engine, through the official SDK."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, replace

import httpx2
import pytest

from appliance.api.app import create_app
from appliance.api.services import Services
from appliance.engines.base import CHAT, CancelToken, ChatEvent, ChatParams, Listing, ModelInfo
from appliance.engines.catalog import Catalog
from appliance.errors import Overloaded
from tests.conftest import API_KEY, FastStack
from tests.fakes import FakeChatEngine, FakeKeys, ListLedger
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


# -- admission: a request's prompts go to the engine's queue together ------------------------

@dataclass
class QueuedChatEngine(FakeChatEngine):
    """Admits as LlamaChatEngine.chat does: refused (503 ``overloaded``) when the choices
    queued plus the prompts being prepared reach ``queue_limit``; a prompt is prepared off the
    loop (an await), then all ``n`` of its choices queue at once, and they stay queued until
    their events are read (the worst case: a decode thread that seats nobody meanwhile)."""

    queue_limit: int = 64
    queued: int = 0
    preparing: int = 0

    @property
    def info(self) -> ModelInfo:
        return replace(super().info, queue_limit=self.queue_limit)

    async def chat(self, params: ChatParams,
                   cancel: CancelToken) -> AsyncGenerator[ChatEvent, None]:
        if self.queued + self.preparing >= self.queue_limit:
            raise Overloaded(f"The model `{self.model_id}` has {self.queue_limit} requests "
                             "waiting; try again shortly.", retry_after=1.0)
        inner = super().chat(params, cancel)
        self.preparing += 1
        try:
            await asyncio.sleep(0)  # the prompt threads
            started = await anext(inner)  # the context check, as preparing makes it
        finally:
            self.preparing -= 1
        self.queued += params.n
        seated = False
        try:
            yield started
            self.queued -= params.n
            seated = True
            async for event in inner:
                yield event
        finally:
            if not seated:
                self.queued -= params.n
            await inner.aclose()


@pytest.fixture
async def queued() -> AsyncIterator[tuple[QueuedChatEngine, httpx2.AsyncClient]]:
    engine = QueuedChatEngine()
    keys = FakeKeys()
    keys.add(API_KEY)
    services = Services(catalog=Catalog([Listing(CHAT, engine, ())]), ledger=ListLedger(),
                        keys=keys)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(services)),
                                  base_url="http://appliance.test", headers=AUTH) as http:
        yield engine, http


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("n", [5, 16])
async def test_prompts_times_n_past_the_queue_limit_are_served_on_an_idle_server(
        queued: tuple[QueuedChatEngine, httpx2.AsyncClient], n: int, stream: bool) -> None:
    # 16 prompts (the bound) x n choices of 1 token: inside every bound, and more choices than
    # queue_limit (64). Each prompt counts once on arrival, as a separate request would; one
    # after another, the 14th found 65 choices queued: a 503 to retry forever.
    engine, http = queued
    answer = await http.post("/v1/completions", json={
        "model": "fake-chat", "prompt": ["a"] * 16, "n": n, "max_tokens": 1,
        "stream": stream})
    assert answer.status_code == 200, answer.text
    if stream:
        frames = [json.loads(line[6:]) for line in answer.text.split("\n\n")
                  if line.startswith("data: {")]
        indices = {c["index"] for f in frames for c in f["choices"] if c["finish_reason"]}
    else:
        indices = {c["index"] for c in answer.json()["choices"]}
    assert indices == set(range(16 * n))
    assert (engine.queued, engine.preparing) == (0, 0)


async def test_a_queue_full_of_other_work_is_still_a_503_with_a_retry_hint(
        queued: tuple[QueuedChatEngine, httpx2.AsyncClient]) -> None:
    engine, http = queued
    engine.queued = 60  # other requests' choices; this request's fourth prompt finds it full
    answer = await http.post("/v1/completions", json={
        "model": "fake-chat", "prompt": ["a"] * 8, "max_tokens": 1})
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "overloaded"
    assert answer.headers["retry-after"]
    # The prompts admitted were stopped and gave their places up.
    assert (engine.queued, engine.preparing) == (60, 0)


@pytest.mark.parametrize("stream", [False, True])
async def test_more_prompts_than_the_queue_holds_are_a_400_not_a_503_to_retry(
        queued: tuple[QueuedChatEngine, httpx2.AsyncClient], stream: bool) -> None:
    # queue_limit 4: a request of 5 prompts could never be admitted, even on an idle server;
    # a 503 would have the SDK retry it for ever. 4 prompts are served.
    engine, http = queued
    engine.queue_limit = 4
    answer = await http.post("/v1/completions", json={
        "model": "fake-chat", "prompt": ["a"] * 5, "max_tokens": 1, "stream": stream})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == "prompt"
    assert "queues at most 4 requests" in error["message"]
    assert engine.calls == []
    served = await http.post("/v1/completions", json={
        "model": "fake-chat", "prompt": ["a"] * 4, "n": 3, "max_tokens": 1, "stream": stream})
    assert served.status_code == 200, served.text
    assert (engine.queued, engine.preparing) == (0, 0)


async def test_one_prompt_refused_stops_the_others_and_names_the_prompt(
        queued: tuple[QueuedChatEngine, httpx2.AsyncClient]) -> None:
    engine, http = queued
    answer = await http.post("/v1/completions", json={
        "model": "fake-chat", "prompt": ["a", "word " * 70, "b"], "n": 3, "max_tokens": 1})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "context_length_exceeded"
    assert (engine.queued, engine.preparing) == (0, 0)
