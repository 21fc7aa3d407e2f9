"""The scheduler's batching policy on the real SmolLM2, observed step by step in-process.

A long prompt is read in chunks while an ongoing stream keeps getting a token every step, so
it never waits for the whole prompt.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from appliance.config import ChatModelConfig
from appliance.engines.base import CancelToken, ChatMessage, ChatParams, Sampling, TextDelta
from appliance.engines.llm.engine import BATCH_SIZE, LlamaChatEngine
from appliance.engines.llm.scheduler import StepReport
from devtools.server_harness import SMOLLM2

pytestmark = pytest.mark.real


def test_long_prompt_is_chunked_and_never_stalls_a_running_stream() -> None:
    steps: list[StepReport] = []
    config = ChatModelConfig(id="smol", path=SMOLLM2, context_length=4096, parallel=2)
    engine = LlamaChatEngine.load(config, on_step=steps.append)
    try:
        engine.warm_up()
        running = ChatParams(messages=(ChatMessage("user", "Tell a long story about a fox."),),
                             max_tokens=120, sampling=Sampling(temperature=0))
        long_prompt = replace(running, max_tokens=4, messages=(
            ChatMessage("user", " ".join(f"Fact {i}: foxes are clever." for i in range(300))),))

        async def run() -> tuple[int, int]:
            stream = engine.chat(running, CancelToken())
            produced = 0
            async for event in stream:
                if isinstance(event, TextDelta):
                    produced += 1
                    if produced == 3:
                        break
            steps.clear()
            second = asyncio.ensure_future(_drain(engine.chat(long_prompt, CancelToken())))
            async for event in stream:
                if isinstance(event, TextDelta):
                    produced += 1
            return produced, await second

        produced, _ = asyncio.run(run())
    finally:
        engine.close()
    assert produced > 3
    prefill_steps = [s for s in steps if s.prefill_tokens > 1]
    assert len(prefill_steps) >= 3  # ~2,400 prompt tokens read in chunks, not at once
    assert all(s.prefill_tokens + s.generating <= BATCH_SIZE for s in steps)
    assert all(s.generating >= 1 for s in prefill_steps)  # the story got a token every step


async def _drain(events: object) -> int:
    count = 0
    async for _ in events:  # type: ignore[attr-defined]
        count += 1
    return count
