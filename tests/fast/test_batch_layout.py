"""How a step's batch is laid out for llama.cpp, and which slot a request gets.

With a KV stream per sequence, llama.cpp cuts a batch into micro-batches of consecutive
sequence ids holding as many tokens each, one pass over the model apiece. Two choices keep
the passes few: each step writes its tokens slot by slot in sequence order (so one pass takes
a token from every slot, even those reading a prompt), and a new request sits next to busy
slots rather than in a gap. The layout test runs the real SmolLM2 GGUF in-process and reads
the batch the decode thread wrote, from the step observer (called on that thread).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from appliance.engines.base import CancelToken, ChatEvent, Finish, Sampling
from appliance.engines.llm.kv_reuse import COPY_MIN_GAIN, NEIGHBOUR_TOKENS, PrefixReuse
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.scheduler import GenerationRequest, Scheduler, StepReport
from appliance.engines.llm.step_budget import StepBudget
from devtools.server_harness import SMOLLM2


@dataclass
class _Cached:
    sequence: int
    cached: list[int] = field(default_factory=list)
    last_used: float = 0.0


def _slots(count: int) -> list[_Cached]:
    return [_Cached(sequence=i, last_used=float(count - i)) for i in range(count)]


def _free(slots: list[_Cached], busy: set[int]) -> list[_Cached]:
    return [s for s in slots if s.sequence not in busy]


def test_a_request_sits_next_to_the_busy_slots_not_in_the_oldest_one() -> None:
    reuse = PrefixReuse(None, None, 0)  # nothing cached: no KV is touched
    slots = _slots(8)  # slot 7 is the least recently used
    slot, reused = reuse.place([1, 2, 3], _free(slots, {0, 1, 2}), slots)
    assert (slot.sequence, reused) == (3, 0)


def test_a_gap_between_two_busy_slots_is_filled_first() -> None:
    reuse = PrefixReuse(None, None, 0)
    slots = _slots(8)
    slot, _ = reuse.place([1, 2, 3], _free(slots, {0, 1, 3, 4}), slots)
    assert slot.sequence == 2  # joins both neighbours' runs into one


def test_an_idle_engine_still_takes_the_least_recently_used_slot() -> None:
    reuse = PrefixReuse(None, None, 0)
    slots = _slots(8)
    slot, _ = reuse.place([1, 2, 3], slots, slots)
    assert slot.sequence == 7


def test_a_cached_prefix_worth_more_than_a_neighbour_wins() -> None:
    reuse = PrefixReuse(None, None, 0)
    slots = _slots(8)
    prompt = list(range(1, NEIGHBOUR_TOKENS + 40))
    slots[6].cached = prompt[:NEIGHBOUR_TOKENS + 8]  # a prefix of the prompt: kept as is
    slot, reused = reuse.place(prompt, _free(slots, {0, 1}), slots)
    assert (slot.sequence, reused) == (6, NEIGHBOUR_TOKENS + 8)
    # Worth less than sitting by slot 1 (and too short to be worth a copy, COPY_MIN_GAIN):
    slots[6].cached = prompt[:COPY_MIN_GAIN - 4]
    slot, reused = reuse.place(prompt, _free(slots, {0, 1}), slots)
    assert (slot.sequence, reused) == (2, 0)


@pytest.fixture(scope="module")
def model() -> Iterator[LoadedModel]:
    loaded = LoadedModel(SMOLLM2, 0)
    yield loaded
    loaded.close()


@dataclass
class _Done:
    finished: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)

    def emit(self, event: ChatEvent | BaseException) -> None:
        if isinstance(event, BaseException):
            self.errors.append(event)
        if isinstance(event, (Finish, BaseException)):
            self.finished.set()


def test_every_step_writes_its_tokens_in_sequence_order(model: LoadedModel) -> None:
    layouts: list[list[int]] = []
    scheduler: Scheduler | None = None

    def observe(report: StepReport) -> None:
        assert scheduler is not None
        batch = scheduler._batch  # written by this thread, read before the next step
        layouts.append([batch.handle.seq_id[i][0] for i in range(batch.size)])

    # A tiny step budget: the long prompt is read a few tokens a step while the short ones
    # decode, so steps mix slots that decode with one that reads, on both sides of it.
    scheduler = Scheduler(model, model_id="smol", slots=3, context_length=1024, threads=1,
                          batch_size=64, stop_tokens=frozenset(), on_step=observe,
                          step_budget=StepBudget(0.001, capacity=64))
    try:
        short = model.tokenize("<|im_start|>user\nCount to ten.<|im_end|>\n"
                               "<|im_start|>assistant\n", add_bos=False)
        document = model.tokenize("<|im_start|>user\n" + "A line of notes. " * 60 +
                                  "<|im_end|>\n<|im_start|>assistant\n", add_bos=False)
        seen = [_Done() for _ in range(3)]
        prompts = [short, document, short]
        requests = [GenerationRequest(tokens=tokens, max_tokens=40 if tokens is short else 2,
                                      stop=(), sampling=Sampling(temperature=0.0),
                                      cancel=CancelToken(), emit=done.emit)
                    for tokens, done in zip(prompts, seen, strict=True)]
        scheduler.submit(*requests)
        assert all(done.finished.wait(60) for done in seen)
        assert not any(done.errors for done in seen)
    finally:
        scheduler.close()
    mixed = [layout for layout in layouts if len(set(layout)) == 3 and len(layout) > 3]
    assert mixed, "no step both decoded the short answers and read the document"
    assert all(layout == sorted(layout) for layout in layouts), layouts
