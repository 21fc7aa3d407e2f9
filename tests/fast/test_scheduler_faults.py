"""One request's exception fails that request alone: the decode loop goes on with the others.

The scheduler runs in-process on the real SmolLM2 GGUF (135M: it loads in a fraction of a second
and decodes a few tokens in milliseconds), with samplers that fail on purpose for marked
requests. Before, a sampler that raised while a request was admitted escaped the loop's
stage, the catch-all failed only the requests in slots, and the loop retried the same queued
request at once, thousands of times a second, until its queue timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from appliance.engines.base import CancelToken, ChatEvent, Finish, Sampling, TextDelta
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.scheduler import GenerationRequest, Scheduler, StepReport
from appliance.errors import EngineFailure
from devtools.server_harness import SMOLLM2
from tests.injected_faults import FAILS_AT_SETUP, FAILS_MID_STREAM, injected_samplers


@dataclass
class _Seen:
    events: list[ChatEvent | BaseException] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: ChatEvent | BaseException) -> None:
        self.events.append(event)
        if isinstance(event, (Finish, BaseException)):
            self.done.set()

    @property
    def errors(self) -> list[BaseException]:
        return [e for e in self.events if isinstance(e, BaseException)]

    @property
    def deltas(self) -> list[TextDelta]:
        return [e for e in self.events if isinstance(e, TextDelta)]


@pytest.fixture(scope="module")
def model() -> Iterator[LoadedModel]:
    loaded = LoadedModel(SMOLLM2, 0)
    yield loaded
    loaded.close()


@pytest.fixture
def steps() -> list[StepReport]:
    return []


@pytest.fixture
def scheduler(model: LoadedModel, steps: list[StepReport]) -> Iterator[Scheduler]:
    running = Scheduler(model, model_id="smol", slots=2, context_length=256, threads=1,
                        batch_size=64, stop_tokens=frozenset(), on_step=steps.append,
                        samplers=injected_samplers)
    yield running
    running.close()


def _request(model: LoadedModel, seen: _Seen, seed: int | None = None, max_tokens: int = 12,
             cancel: CancelToken | None = None) -> GenerationRequest:
    tokens = model.tokenize("<|im_start|>user\nCount to twenty.<|im_end|>\n"
                            "<|im_start|>assistant\n", add_bos=False)
    return GenerationRequest(tokens=tokens, max_tokens=max_tokens, stop=(),
                             sampling=Sampling(temperature=0.0, seed=seed),
                             cancel=cancel or CancelToken(), emit=seen.emit)


def _failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_sampler_failing_at_admission_fails_that_request_once(
        scheduler: Scheduler, model: LoadedModel, steps: list[StepReport],
        caplog: pytest.LogCaptureFixture) -> None:
    bad, good = _Seen(), _Seen()
    started = time.monotonic()
    scheduler.submit(_request(model, bad, seed=FAILS_AT_SETUP), _request(model, good))
    assert bad.done.wait(10) and good.done.wait(30)
    assert time.monotonic() - started < 10  # not the 120 s queue timeout
    assert len(bad.errors) == 1 and isinstance(bad.errors[0], EngineFailure)
    assert bad.errors[0].code == "engine_error" and bad.errors[0].status == 500
    assert not good.errors and isinstance(good.events[-1], Finish)
    assert good.events[-1].usage.completion_tokens == 12
    failures = _failures(caplog)
    assert len(failures) == 1, [r.getMessage() for r in failures]  # once, not per step
    assert "injected" in (failures[0].exc_text or "")
    assert scheduler.waiting() == 0
    time.sleep(0.1)  # the step that finished the good request reports after its Finish
    steps.clear()
    time.sleep(0.3)
    assert not steps  # idle: the loop waits instead of retrying anything


def test_a_sampler_failing_mid_stream_leaves_its_neighbour_streaming(
        scheduler: Scheduler, model: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    bad, good = _Seen(), _Seen()
    scheduler.submit(_request(model, bad, seed=FAILS_MID_STREAM),
                     _request(model, good, max_tokens=30))
    assert bad.done.wait(30) and good.done.wait(30)
    assert len(bad.deltas) == 2 and len(bad.errors) == 1  # two tokens, then the failure
    assert isinstance(bad.errors[0], EngineFailure)
    assert not good.errors and len(good.deltas) >= 20  # it kept streaming after the failure
    finish = good.events[-1]
    assert isinstance(finish, Finish) and finish.usage.completion_tokens == 30
    assert len(_failures(caplog)) == 1
    # The failed slot is free again: the next request runs as usual.
    again = _Seen()
    scheduler.submit(_request(model, again))
    assert again.done.wait(30) and isinstance(again.events[-1], Finish)


def test_a_consumer_that_refuses_events_is_dropped_alone(
        scheduler: Scheduler, model: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    good = _Seen()
    refused = threading.Event()

    def broken(event: ChatEvent | BaseException) -> None:
        refused.set()
        raise RuntimeError("injected: the consumer is broken")

    request = _request(model, _Seen())
    request.emit = broken
    scheduler.submit(request, _request(model, good, max_tokens=20))
    assert good.done.wait(30) and isinstance(good.events[-1], Finish)
    assert refused.is_set() and request.cancel.cancelled
    assert len(_failures(caplog)) == 1


def test_a_failing_step_observer_is_logged_once(
        model: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    def observer(report: StepReport) -> None:
        raise RuntimeError("injected: metrics are broken")

    running = Scheduler(model, model_id="smol", slots=1, context_length=256, threads=1,
                        batch_size=64, stop_tokens=frozenset(), on_step=observer)
    try:
        seen = _Seen()
        running.submit(_request(model, seen))
        assert seen.done.wait(30) and isinstance(seen.events[-1], Finish)
    finally:
        running.close()
    assert len(_failures(caplog)) == 1


def test_a_fault_of_the_loop_itself_fails_what_is_in_flight_and_the_loop_goes_on(
        scheduler: Scheduler, model: LoadedModel, steps: list[StepReport],
        caplog: pytest.LogCaptureFixture) -> None:
    # An owner that cannot be a dict key breaks the fair ordering of the whole queue: no
    # single request's stage can catch that. The queued request fails (it would break the
    # same way at every retry), once; the loop then waits and serves the next request.
    broken, after = _Seen(), _Seen()
    request = _request(model, broken)
    request.owner = ["not", "hashable"]  # type: ignore[assignment]
    scheduler.submit(request)
    assert broken.done.wait(10) and isinstance(broken.errors[0], EngineFailure)
    time.sleep(0.3)
    assert len(_failures(caplog)) == 1 and not steps
    scheduler.submit(_request(model, after))
    assert after.done.wait(30) and isinstance(after.events[-1], Finish)
