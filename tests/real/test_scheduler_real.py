"""The batching scheduler on the real SmolLM2: concurrency never changes an answer."""

from __future__ import annotations

import asyncio
import time

import openai
import pytest

from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
SMOL = "smollm2-135m-instruct"
TOPICS = ["cats", "the sea", "bread", "trains", "winter", "music", "a garden", "the moon",
          "rivers", "clocks", "bees", "mountains", "paper", "rain", "bicycles", "owls"]


def prompt(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write two sentences about {topic}."}]


async def _answer(sdk: openai.AsyncOpenAI, topic: str, stream: bool) -> str:
    if stream:
        chunks = await sdk.chat.completions.create(model=SMOL, messages=prompt(topic),
                                                   temperature=0, max_tokens=40, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    completion = await sdk.chat.completions.create(model=SMOL, messages=prompt(topic),
                                                   temperature=0, max_tokens=40)
    return completion.choices[0].message.content or ""


def test_sixteen_concurrent_greedy_requests_equal_their_solo_answers(
    real_server: RealServer,
) -> None:
    async def run() -> tuple[list[str], list[str]]:
        async with openai.AsyncOpenAI(base_url=real_server.base_url, api_key=real_server.key,
                                      max_retries=0) as sdk:
            alone = [await _answer(sdk, topic, stream=False) for topic in TOPICS]
            together = await asyncio.gather(
                *(_answer(sdk, topic, stream=i % 2 == 0) for i, topic in enumerate(TOPICS)))
            return alone, list(together)

    alone, together = asyncio.run(run())
    assert len(set(alone)) == len(TOPICS)  # distinct answers, so a mix-up would show
    for topic, solo, batched in zip(TOPICS, alone, together, strict=True):
        assert batched == solo, f"answer about {topic} changed under concurrency"


def test_shared_prefix_is_reused_and_reported(real_server: RealServer) -> None:
    sdk = real_server.sdk
    system = {"role": "system", "content": "You are a careful assistant. " * 60}
    first = sdk.chat.completions.create(
        model=SMOL, max_tokens=4, temperature=0,
        messages=[system, {"role": "user", "content": "Name a colour."}])
    second = sdk.chat.completions.create(
        model=SMOL, max_tokens=4, temperature=0,
        messages=[system, {"role": "user", "content": "Name a fruit."}])
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= 300
    assert details.cached_tokens < second.usage.prompt_tokens


def test_queued_requests_beyond_the_slots_all_complete_in_order(real_server: RealServer) -> None:
    async def run() -> list[tuple[str, float]]:
        async with openai.AsyncOpenAI(base_url=real_server.base_url, api_key=real_server.key,
                                      max_retries=0) as sdk:
            async def one(i: int) -> tuple[str, float]:
                completion = await sdk.chat.completions.create(
                    model=SMOL, messages=prompt(TOPICS[i]), temperature=0, max_tokens=8)
                return completion.choices[0].finish_reason, time.monotonic()
            return await asyncio.gather(*(one(i) for i in range(12)))

    results = asyncio.run(run())
    assert all(reason in ("stop", "length") for reason, _ in results)


def test_n_choices_share_the_prompt_and_sample_independently(real_server: RealServer) -> None:
    sdk = real_server.sdk
    story = [{"role": "user", "content": "Invent a name for a pet dragon."}]
    sampled = sdk.chat.completions.create(model=SMOL, messages=story, n=3, temperature=1.0,
                                          seed=11, max_tokens=16)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert len({c.message.content for c in sampled.choices}) > 1
    assert sampled.usage is not None
    again = sdk.chat.completions.create(model=SMOL, messages=story, n=3, temperature=1.0,
                                        seed=11, max_tokens=16)
    assert [c.message.content for c in again.choices] == [
        c.message.content for c in sampled.choices]
    assert again.usage is not None
    assert again.usage.completion_tokens == sampled.usage.completion_tokens
    single = sdk.chat.completions.create(model=SMOL, messages=story, max_tokens=1)
    assert single.usage is not None
    assert sampled.usage.prompt_tokens == single.usage.prompt_tokens  # the prompt counts once
    greedy = sdk.chat.completions.create(model=SMOL, messages=story, n=2, temperature=0,
                                         max_tokens=12)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content


def test_logit_bias_bans_a_token(real_server: RealServer) -> None:
    import llama_cpp

    from devtools.server_harness import SMOLLM2

    vocab = llama_cpp.Llama(str(SMOLLM2), vocab_only=True, verbose=False)
    # Ban the first token of "Paris" and " Paris": the model cannot begin the word.
    paris = {vocab.tokenize(text, add_bos=False, special=False)[0]
             for text in (b"Paris", b" Paris")}
    vocab.close()
    sdk = real_server.sdk
    question = [{"role": "user", "content": "What is the capital of France? One word."}]
    plain = sdk.chat.completions.create(model=SMOL, messages=question, temperature=0,
                                        max_tokens=12)
    assert "Paris" in (plain.choices[0].message.content or "")
    banned = sdk.chat.completions.create(model=SMOL, messages=question, temperature=0,
                                         max_tokens=12,
                                         logit_bias={str(t): -100 for t in paris})
    assert "Paris" not in (banned.choices[0].message.content or "")
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model=SMOL, messages=question,
                                    logit_bias={"99999999": 1})
    assert caught.value.param == "logit_bias"


def test_prompts_beyond_the_slots_come_back_from_host_memory(real_server: RealServer) -> None:
    """Eight conversations through four slots: the first is evicted from every slot, yet
    its long prompt is restored from the host-memory cache, not decoded again."""
    sdk = real_server.sdk

    def ask(i: int) -> openai.types.chat.ChatCompletion:
        system = {"role": "system",
                  "content": f"Conversation {i}. " + f"Remember the number {i}. " * 40}
        return sdk.chat.completions.create(
            model=SMOL, max_tokens=2, temperature=0,
            messages=[system, {"role": "user", "content": "Which number?"}])

    first = ask(0)
    for i in range(1, 8):
        ask(i)
    again = ask(0)
    assert first.usage is not None and again.usage is not None
    details = again.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= first.usage.prompt_tokens - 2
    assert again.choices[0].message.content == first.choices[0].message.content


def test_logprobs_describe_the_generated_tokens(real_server: RealServer) -> None:
    completion = real_server.sdk.chat.completions.create(
        model=SMOL, messages=prompt("owls"), temperature=0, max_tokens=12, logprobs=True,
        top_logprobs=3)
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert len(entries) == completion.usage.completion_tokens  # type: ignore[union-attr]
    assert b"".join(bytes(e.bytes or []) for e in entries).decode() == choice.message.content
    for entry in entries:
        assert entry.logprob <= 0.0
        assert len(entry.top_logprobs) == 3
        # Greedy picks the likeliest token: it heads its own alternatives.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
