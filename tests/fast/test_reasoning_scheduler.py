"""The scheduler running a reasoning plan on the real SmolLM2 GGUF, in-process: the reader
splits each choice in the decode thread, the engine closes the thinking at the budget by
feeding its close through the batch as a chunk (the step report shows it), the answer's
grammar is armed only after thinking, stop strings end the answer only, an end of generation
while an answer is owed closes the block, and a plain request is untouched."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from appliance.engines.base import (
    CancelToken,
    ChatEvent,
    Finish,
    OutputFormat,
    ReasoningDelta,
    Sampling,
    TextDelta,
)
from appliance.engines.llm.grammar import grammar_for
from appliance.engines.llm.model import LoadedModel, grammar_allows
from appliance.engines.llm.reasoning import THINK, Phase, ReasoningPlan, ReasoningProfile
from appliance.engines.llm.sampling import SamplerChain
from appliance.engines.llm.scheduler import GenerationRequest, Scheduler, StepReport
from devtools.server_harness import SMOLLM2

PROFILE = ReasoningProfile(THINK, opens_in_prompt=True)
PROMPT = ("<|im_start|>user\nInvent a pet as JSON.<|im_end|>\n"
          "<|im_start|>assistant\n<think>\n")
CLOSE = "\n</think>\n\n"
GREEDY = Sampling(temperature=0.0)
# logprobs=0: each answer token reports its logprob (reasoning tokens and the close do not)
PET = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
       "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}}}
JSON_OBJECT = Sampling(temperature=0.0, logprobs=0,
                       grammar=grammar_for(OutputFormat("json_schema", PET, strict=True)))


@dataclass
class Seen:
    events: list[ChatEvent | BaseException] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: ChatEvent | BaseException) -> None:
        self.events.append(event)
        if isinstance(event, (Finish, BaseException)):
            self.done.set()

    @property
    def reasoning(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, ReasoningDelta))

    @property
    def content(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))

    @property
    def finish(self) -> Finish:
        last = self.events[-1]
        assert isinstance(last, Finish), self.events[-1:]
        return last

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events
                if not isinstance(e, TextDelta) or e.text]


@pytest.fixture(scope="module")
def model() -> Iterator[LoadedModel]:
    loaded = LoadedModel(SMOLLM2, 0)
    yield loaded
    loaded.close()


@pytest.fixture
def steps() -> list[StepReport]:
    return []


def scheduler_for(model: LoadedModel, steps: list[StepReport], batch_size: int = 64
                  ) -> Scheduler:
    return Scheduler(model, model_id="smol-think", slots=2, context_length=512, threads=1,
                     batch_size=batch_size, stop_tokens=frozenset(), on_step=steps.append)


@pytest.fixture
def scheduler(model: LoadedModel, steps: list[StepReport]) -> Iterator[Scheduler]:
    running = scheduler_for(model, steps)
    yield running
    running.close()


def run(scheduler: Scheduler, model: LoadedModel, plan: ReasoningPlan | None,
        sampling: Sampling = GREEDY, max_tokens: int = 160,
        stop: tuple[str, ...] = ()) -> Seen:
    seen = Seen()
    scheduler.submit(GenerationRequest(
        tokens=model.tokenize(PROMPT, add_bos=False), max_tokens=max_tokens, stop=stop,
        sampling=sampling, cancel=CancelToken(), emit=seen.emit, reasoning=plan))
    assert seen.done.wait(120)
    return seen


def close_tokens(model: LoadedModel) -> int:
    return len(model.tokenize(CLOSE, add_bos=False))


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_the_budget_closes_the_block_in_one_chunk_and_the_grammar_holds_the_answer(
        scheduler: Scheduler, model: LoadedModel, steps: list[StepReport]) -> None:
    plan = ReasoningPlan(PROFILE, Phase.THINKING, budget=6, must_answer=True,
                         answer_sampling=JSON_OBJECT)
    seen = run(scheduler, model, plan, sampling=Sampling(temperature=0.0, logprobs=0))
    usage = seen.finish.usage
    assert seen.finish.reason == "stop", seen.content
    assert usage.reasoning_tokens == 6
    assert seen.reasoning.strip() and not is_json(seen.reasoning)
    assert isinstance(json.loads(seen.content), dict)
    kinds = seen.kinds()
    assert kinds.index("TextDelta") > max(i for i, k in enumerate(kinds) if k == "ReasoningDelta")
    # One step after the prompt's fed the close: the sampled token and the close's tokens,
    # the close counted like prompt tokens (they were not sampled).
    closing = [s for s in steps if s.generating == 1 and s.prefill_tokens > 0]
    assert [s.prefill_tokens for s in closing] == [close_tokens(model)]
    # completion = reasoning + the engine's close + the answer's sampled tokens
    answer = sum(len(e.logprobs) for e in seen.events if isinstance(e, TextDelta))
    assert answer > 0
    assert usage.completion_tokens == 6 + close_tokens(model) + answer


def test_a_close_longer_than_the_batch_room_goes_over_several_steps(
        model: LoadedModel, steps: list[StepReport]) -> None:
    small = scheduler_for(model, steps, batch_size=2)
    try:
        plan = ReasoningPlan(PROFILE, Phase.THINKING, budget=4, must_answer=True,
                             answer_sampling=JSON_OBJECT)
        seen = run(small, model, plan)
    finally:
        small.close()
    assert seen.finish.usage.reasoning_tokens == 4
    assert isinstance(json.loads(seen.content), dict)
    assert not is_json(seen.reasoning)


def test_stop_strings_end_the_answer_not_the_reasoning(scheduler: Scheduler,
                                                       model: LoadedModel) -> None:
    plan = ReasoningPlan(PROFILE, Phase.THINKING, budget=24)
    seen = run(scheduler, model, plan, stop=("e",))
    assert "e" in seen.reasoning
    assert "e" not in seen.content
    assert seen.finish.reason == "stop" and seen.finish.usage.reasoning_tokens == 24


def test_no_budget_and_nothing_owed_ends_inside_the_block(scheduler: Scheduler,
                                                         model: LoadedModel) -> None:
    seen = run(scheduler, model, ReasoningPlan(PROFILE, Phase.THINKING), max_tokens=300)
    assert seen.content == ""
    assert seen.finish.usage.reasoning_tokens == seen.finish.usage.completion_tokens


def test_an_end_of_generation_while_an_answer_is_owed_closes_the_block(
        scheduler: Scheduler, model: LoadedModel) -> None:
    plain = run(scheduler, model, ReasoningPlan(PROFILE, Phase.THINKING), max_tokens=300)
    assert plain.finish.reason == "stop"  # the model itself ends while thinking...
    owed = ReasoningPlan(PROFILE, Phase.THINKING, must_answer=True,
                         answer_sampling=JSON_OBJECT)
    seen = run(scheduler, model, owed, max_tokens=400)
    # ...and with an answer owed the engine closes the block there instead
    assert seen.reasoning == plain.reasoning
    assert seen.finish.usage.reasoning_tokens == plain.finish.usage.reasoning_tokens
    assert isinstance(json.loads(seen.content), dict)


def test_a_request_without_a_plan_is_plain_output(scheduler: Scheduler,
                                                  model: LoadedModel) -> None:
    seen = run(scheduler, model, None, max_tokens=20)
    assert seen.reasoning == "" and seen.content
    assert seen.finish.usage.reasoning_tokens == 0
    assert not [e for e in seen.events if isinstance(e, ReasoningDelta)]


def test_answer_text_the_grammar_refuses_is_kept_out_and_the_grammar_starts_after_it(
        model: LoadedModel) -> None:
    """A model may close its thinking and write on in the same token ("</think>Sure"):
    that text is no part of the constrained answer, and the grammar holds from the next."""
    refused = SamplerChain(JSON_OBJECT, model, 512)
    try:
        assert refused.prime("Sure") is False
        grammar = refused._grammar  # what the next token is held to
        assert grammar is not None
        assert grammar_allows(grammar, model.tokenize("{", add_bos=False)[0])
        assert not grammar_allows(grammar, model.tokenize("Sure", add_bos=False)[0])
    finally:
        refused.close()
    started = SamplerChain(JSON_OBJECT, model, 512)
    try:
        assert started.prime('{"name"') is True
        grammar = started._grammar
        assert grammar is not None
        assert not grammar_allows(grammar, model.tokenize("{", add_bos=False)[0])
    finally:
        started.close()
