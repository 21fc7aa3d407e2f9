"""Seating on the real SmolLM2, in-process: free slots go round-robin across API keys, and a
full queue refuses at once with a retry hint instead of growing without bound."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from appliance.config import ChatModelConfig
from appliance.engines.base import (
    CancelToken,
    ChatMessage,
    ChatParams,
    Finish,
    Sampling,
    TextDelta,
)
from appliance.engines.llm.engine import LlamaChatEngine
from appliance.errors import Overloaded
from devtools.server_harness import SMOLLM2

pytestmark = pytest.mark.real
ASK = ChatParams(messages=(ChatMessage("user", "Count to three."),), max_tokens=6,
                 sampling=Sampling(temperature=0))


def one_slot_engine(queue_limit: int = 64, queue_timeout_s: float = 120.0,
                    generation_timeout_s: float | None = None) -> LlamaChatEngine:
    config = ChatModelConfig(id="smol", path=SMOLLM2, context_length=2048, parallel=1,
                             queue_limit=queue_limit, queue_timeout_s=queue_timeout_s,
                             generation_timeout_s=generation_timeout_s)
    engine = LlamaChatEngine.load(config)
    engine.warm_up()
    return engine


async def finish(engine: LlamaChatEngine, params: ChatParams, name: str,
                 done: list[str]) -> None:
    async for _ in engine.chat(params, CancelToken()):
        pass
    done.append(name)


def test_a_burst_from_one_key_does_not_starve_another() -> None:
    engine = one_slot_engine()
    done: list[str] = []
    try:
        async def run() -> None:
            burst = [finish(engine, replace(ASK, owner="key_a"), f"a{i}", done)
                     for i in range(4)]
            late = finish(engine, replace(ASK, owner="key_b"), "b", done)
            await asyncio.gather(*burst, late)

        asyncio.run(run())
    finally:
        engine.close()
    # One of key_a's took the only slot; of the others, key_b's one request went next.
    assert done[0].startswith("a") and done[1] == "b", done
    assert sorted(done) == ["a0", "a1", "a2", "a3", "b"]


def test_a_full_queue_refuses_with_a_retry_hint() -> None:
    engine = one_slot_engine(queue_limit=1)
    long = replace(ASK, max_tokens=200,
                   messages=(ChatMessage("user", "Write a long story about a fox."),))
    try:
        async def run() -> None:
            done: list[str] = []
            first = engine.chat(long, CancelToken())
            async for event in first:
                if isinstance(event, TextDelta):
                    break  # the only slot is busy now
            queued = asyncio.ensure_future(finish(engine, ASK, "queued", done))
            while engine.waiting() < 1:
                await asyncio.sleep(0.01)
            with pytest.raises(Overloaded) as refused:
                await anext(engine.chat(ASK, CancelToken()))
            assert refused.value.status == 503 and refused.value.retry_after > 0
            await first.aclose()
            await queued
            assert done == ["queued"]

        asyncio.run(run())
    finally:
        engine.close()


def test_a_burst_arriving_at_once_cannot_overfill_the_queue() -> None:
    engine = one_slot_engine(queue_limit=2)
    try:
        async def run() -> list[BaseException | None]:
            async def one() -> None:
                async for _ in engine.chat(ASK, CancelToken()):
                    pass

            return await asyncio.gather(*(one() for _ in range(10)), return_exceptions=True)

        outcomes = asyncio.run(run())
    finally:
        engine.close()
    refused = [o for o in outcomes if isinstance(o, Overloaded)]
    assert all(o is None or isinstance(o, Overloaded) for o in outcomes), outcomes
    # All ten check the queue before any is tokenized: only the first two may be taken (the
    # limit), never all ten.
    assert len(refused) == 8, outcomes


def test_waiting_past_the_queue_timeout_is_refused_before_any_work() -> None:
    engine = one_slot_engine(queue_timeout_s=0.3)
    long = replace(ASK, max_tokens=400,
                   messages=(ChatMessage("user", "Write a long story about a fox."),))
    try:
        async def run() -> list[object]:
            first = engine.chat(long, CancelToken())
            async for event in first:
                if isinstance(event, TextDelta):
                    break  # the only slot is busy for a while
            late = [event async for event in _events_until_error(engine, ASK)]
            await first.aclose()
            return late

        events = asyncio.run(run())
    finally:
        engine.close()
    assert isinstance(events[-1], Overloaded)
    assert not any(isinstance(event, TextDelta) for event in events)  # no work was done


async def _events_until_error(engine: LlamaChatEngine,
                              params: ChatParams) -> AsyncIterator[object]:
    try:
        async for event in engine.chat(params, CancelToken()):
            yield event
    except Overloaded as refused:
        yield refused


def test_generating_past_the_deadline_ends_as_length() -> None:
    engine = one_slot_engine(generation_timeout_s=1.0)
    endless = replace(ASK, max_tokens=1900, sampling=Sampling(temperature=1.0, seed=1),
                      messages=(ChatMessage("user", "Write a very long story about a fox."),))
    try:
        async def run() -> list[Finish]:
            return [event async for event in engine.chat(endless, CancelToken())
                    if isinstance(event, Finish)]

        finishes = asyncio.run(run())
    finally:
        engine.close()
    assert [f.reason for f in finishes] == ["length"]
    # 1900 tokens take this CPU well over a second; on a loaded machine the deadline may even
    # pass during the prompt, so no lower bound.
    assert finishes[0].usage.completion_tokens < 1900


def test_a_full_queue_refuses_the_key_with_the_most_waiting() -> None:
    engine = one_slot_engine(queue_limit=2)
    # Holds the only slot to the end of the test: SmolLM2's end tokens are banned, so it
    # cannot finish early and let a queued request in (the queue must stay full).
    long = replace(ASK, max_tokens=2000, owner="key_a",
                   sampling=Sampling(temperature=0, logit_bias=((0, -100.0), (1, -100.0),
                                                                (2, -100.0))),
                   messages=(ChatMessage("user", "Write a long story about a fox."),))
    try:
        async def run() -> tuple[list[str], list[object]]:
            done: list[str] = []
            first = engine.chat(long, CancelToken())
            async for event in first:
                if isinstance(event, TextDelta):
                    break  # the only slot is key_a's now
            older = asyncio.ensure_future(finish(engine, replace(ASK, owner="key_a"), "a1",
                                                 done))
            newer = asyncio.ensure_future(
                _collect(_events_until_error(engine, replace(ASK, owner="key_a"))))
            while engine.waiting() < 2:  # key_a's two fill the queue
                await asyncio.sleep(0.01)
            # key_b has none waiting: key_a's newest gives its place up, before any work.
            other = asyncio.ensure_future(finish(engine, replace(ASK, owner="key_b"), "b",
                                                 done))
            pushed = await newer
            await first.aclose()
            await asyncio.gather(older, other)
            return done, pushed

        done, pushed = asyncio.run(run())
        assert engine.waiting() == 0
    finally:
        engine.close()
    assert isinstance(pushed[-1], Overloaded) and pushed[-1].retry_after > 0, pushed
    assert not any(isinstance(event, TextDelta) for event in pushed)  # no work was done
    assert sorted(done) == ["a1", "b"]


async def _collect(events: AsyncIterator[object]) -> list[object]:
    return [event async for event in events]
