"""Turns taken from worker threads (runtime/thread_turns.py), with steps that only sleep:
two requests of one compute slot alternate past STEP_S, a stopped one gives its place in the
queue up, and a closing engine frees a waiting thread even while the loop is held."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from appliance.engines.runtime import thread_turns
from appliance.engines.runtime.fair_gate import FairGate
from appliance.engines.runtime.thread_turns import ComputeTurn, TurnStopped

STEP = 0.01


@pytest.fixture(autouse=True)
def short_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thread_turns, "STEP_S", 5 * STEP)  # a turn of about five steps


def gate() -> FairGate:
    return FairGate("m", slots=1, queue_limit=0, queue_timeout_s=0.0)


def work(turn: ComputeTurn, owner: str, steps: int, log: list[str],
         after_step: Callable[[int], None] = lambda done: None) -> None:
    """A request's steps on its own thread, as the pipeline's step callback runs them;
    ``after_step`` is told how many steps are done after each."""
    turn.take()
    try:
        for done in range(1, steps + 1):
            time.sleep(STEP)
            log.append(owner)
            after_step(done)
            turn.between_steps()
    finally:
        turn.end()


async def run_on_threads(*jobs: Callable[[], None]) -> list[BaseException | None]:
    return list(await asyncio.gather(*(asyncio.to_thread(job) for job in jobs),
                                     return_exceptions=True))


def test_two_owners_alternate_turns_of_several_steps() -> None:
    async def scenario() -> list[str]:
        compute, loop, log = gate(), asyncio.get_running_loop(), []
        first_step = threading.Event()

        def long() -> None:
            work(ComputeTurn(compute, loop, "a", lambda: False, lambda: False), "a", 30, log,
                 lambda done: first_step.set())

        def short() -> None:
            first_step.wait()  # "a" computes
            work(ComputeTurn(compute, loop, "b", lambda: False, lambda: False), "b", 3, log)

        outcomes = await run_on_threads(long, short)
        assert outcomes == [None, None]
        assert compute.occupancy.busy == 0 and compute.occupancy.waiting == 0
        return log

    log = asyncio.run(scenario())
    assert log.count("a") == 30 and log.count("b") == 3
    assert log.index("b") < 25  # b's turn came after one of a's, not after all 30 steps
    assert log[-1] == "a"


def test_a_request_stopped_while_it_waits_leaves_the_queue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thread_turns, "STEP_S", 60.0)  # "a" keeps its turn to the end

    async def scenario() -> None:
        compute, loop, log = gate(), asyncio.get_running_loop(), []
        stop, first_step = threading.Event(), threading.Event()

        def after_step(done: int) -> None:
            first_step.set()
            if done == 5:
                stop.set()  # "b" is waiting by now: its client leaves

        def long() -> None:
            work(ComputeTurn(compute, loop, "a", lambda: False, lambda: False), "a", 40, log,
                 after_step)

        def leaving() -> None:
            first_step.wait()  # "a" holds the slot
            work(ComputeTurn(compute, loop, "b", stop.is_set, lambda: False), "b", 20, log)

        outcomes = await run_on_threads(long, leaving)
        assert outcomes[0] is None and isinstance(outcomes[1], TurnStopped)
        assert "b" not in log
        assert compute.occupancy.busy == 0 and compute.occupancy.waiting == 0
        # The slot was never handed to "b": another request gets it at once.
        await asyncio.wait_for(compute.resume("c"), timeout=1)

    asyncio.run(scenario())


def test_a_closing_engine_frees_a_waiting_thread_while_the_loop_is_held() -> None:
    async def scenario() -> BaseException | None:
        compute, loop = gate(), asyncio.get_running_loop()
        await compute.resume("holder")  # the slot is taken and never given back
        closing = threading.Event()
        waiting = ComputeTurn(compute, loop, "b", closing.is_set, closing.is_set)
        outcome: list[BaseException | None] = []

        def job() -> None:
            try:
                waiting.take()
                outcome.append(None)
            except TurnStopped as stopped:
                outcome.append(stopped)

        thread = threading.Thread(target=job)
        thread.start()
        await asyncio.sleep(5 * STEP)
        closing.set()
        thread.join(timeout=2)  # the loop is held here, as close() holds it
        assert not thread.is_alive()
        return outcome[0]

    assert isinstance(asyncio.run(scenario()), TurnStopped)


def test_a_request_stopped_as_its_turn_comes_passes_the_slot_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(thread_turns, "POLL_S", 60.0)  # the waiting poll never sees the stop

    async def scenario() -> BaseException | None:
        compute, loop = gate(), asyncio.get_running_loop()
        await compute.resume("holder")
        stop = threading.Event()
        waiting = ComputeTurn(compute, loop, "b", stop.is_set, lambda: False)
        thread = asyncio.ensure_future(asyncio.to_thread(waiting.take))
        while compute.occupancy.waiting == 0:
            await asyncio.sleep(STEP)
        stop.set()  # the client leaves ...
        compute.release("holder")  # ... as the slot comes to it
        outcome = (await asyncio.gather(thread, return_exceptions=True))[0]
        assert compute.occupancy.busy == 0 and compute.occupancy.waiting == 0
        await asyncio.wait_for(compute.resume("c"), timeout=1)  # passed on at once
        return outcome

    assert isinstance(asyncio.run(scenario()), TurnStopped)
