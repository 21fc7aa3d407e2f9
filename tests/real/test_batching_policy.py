"""The scheduler's batching policy on the real SmolLM2, observed step by step in-process.

While a long prompt is read, every running stream gets its token in every step (the step
reports say so, not a timer), the prompt is read in chunks the step budget sizes, and a short
prompt that arrives meanwhile is read first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from appliance.config import ChatModelConfig
from appliance.engines.base import (
    CancelToken,
    ChatEvent,
    ChatMessage,
    ChatParams,
    Finish,
    Sampling,
    TextDelta,
)
from appliance.engines.llm.engine import BATCH_SIZE, LlamaChatEngine
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.scheduler import StepReport
from appliance.engines.llm.step_budget import DECODE_WINDOW, MIN_CHUNK
from devtools.server_harness import SMOLLM2

pytestmark = pytest.mark.real
RUNNING = 3  # streams generating while the long prompt is read


def _end_tokens() -> frozenset[int]:
    model = LoadedModel(SMOLLM2, 0)
    try:
        return model.single_tokens(("<|im_end|>", "<|endoftext|>"))
    finally:
        model.close()


def test_a_long_prompt_never_stalls_running_streams_and_short_prompts_go_first() -> None:
    steps: list[StepReport] = []
    # A tight budget: a step reading the document reads about what its decoding costs.
    config = ChatModelConfig(id="smol", path=SMOLLM2, context_length=4096, parallel=5,
                             max_step_ms=1)
    # The stories never end by themselves: they run until the test has seen enough.
    endless = Sampling(temperature=0, logit_bias=tuple((t, -100.0) for t in _end_tokens()))
    history: list[StepReport] = []  # every step from the warm-up on, for a failure to show

    def seen(step: StepReport) -> None:
        steps.append(step)
        history.append(step)

    engine = LlamaChatEngine.load(config, on_step=seen)
    try:
        engine.warm_up()
        stories = [ChatParams(messages=(ChatMessage("user", f"Tell a long story about fox {i}."),),
                              max_tokens=3000, sampling=endless) for i in range(RUNNING)]
        document = replace(stories[0], max_tokens=2, sampling=Sampling(temperature=0),
                           messages=(ChatMessage("user", " ".join(
                               f"Fact {i}: foxes are clever." for i in range(80))),))
        question = replace(document, messages=(ChatMessage("user", "Name a colour."),))

        async def run() -> list[str]:
            cancels = [CancelToken() for _ in stories]
            streams = [engine.chat(story, cancel) for story, cancel in
                       zip(stories, cancels, strict=True)]
            for stream in streams:  # every story is generating before the document comes
                await _first_text(stream)
            # The read is budgeted with d(n) as the decode-only steps before it left it (none
            # come during the read). A full window of them at this width, so that a moment
            # of a busy machine during loading or warm-up (a full suite run measured 3 s
            # steps there) does not set the share of every step of the read.
            keep_going = [asyncio.ensure_future(_drain(stream)) for stream in streams]
            while sum(1 for step in history if step.generating == RUNNING
                      and step.prefill_tokens == 0) < DECODE_WINDOW:
                assert not any(task.done() for task in keep_going), trace_of(history)
                await asyncio.sleep(0.01)
            steps.clear()
            order: list[str] = []
            reading = asyncio.ensure_future(_answer(engine.chat(document, CancelToken()),
                                                    "document", order))
            while not any(step.prefill_tokens > 1 for step in steps):
                await asyncio.sleep(0.01)  # the document is being read from now on
            asked = asyncio.ensure_future(_answer(engine.chat(question, CancelToken()),
                                                  "question", order))
            await asyncio.gather(reading, asked)
            for cancel, task in zip(cancels, keep_going, strict=True):
                cancel.cancel()  # the client leaves: the slot frees, the stream sends no more
                task.cancel()
            await asyncio.gather(*keep_going, return_exceptions=True)
            for stream in streams:
                await stream.aclose()
            return order

        order = asyncio.run(run())
    finally:
        engine.close()
    trace = trace_of(history)
    assert order == ["question", "document"], trace  # the short prompt was read first
    reading = [s for s in steps if s.prefill_tokens > 1]
    assert len(reading) >= 10, trace  # ~650 prompt tokens read in chunks, not at once
    # Every stream got its token in every step that read the prompt.
    assert all(s.generating >= RUNNING for s in reading), [s.generating for s in reading]
    # The chunks are the budget's, not the batch's: never over what the step was offered.
    assert all(s.prefill_tokens <= s.prefill_share for s in reading)
    assert all(MIN_CHUNK <= s.prefill_share <= BATCH_SIZE // 8 for s in reading), trace


def trace_of(history: list[StepReport]) -> list[tuple[int, int, int, int]]:
    """What the budget saw: (generating, prompt tokens read, share offered, ms) of each step."""
    return [(s.generating, s.prefill_tokens, s.prefill_share, round(s.seconds * 1000))
            for s in history]


async def _first_text(events: AsyncIterator[ChatEvent]) -> None:
    async for event in events:
        if isinstance(event, TextDelta) and event.text:
            return


async def _answer(events: AsyncIterator[ChatEvent], name: str, order: list[str]) -> None:
    async for event in events:  # the first token, or the end if it had no text
        if isinstance(event, (TextDelta, Finish)) and name not in order:
            order.append(name)


async def _drain(events: AsyncIterator[ChatEvent]) -> None:
    async for _ in events:
        pass
