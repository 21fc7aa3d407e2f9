"""The worker pool every thread-running engine uses (whisper, images, embeddings): a worker is
given back when its thread is done, never when its client leaves; the queue in front of it is
fair, bounded and timed, and a waiter that leaves the queue gives its place up."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

import pytest

from appliance.engines.runtime.worker_pool import PoolClosed, WorkerPool
from appliance.errors import Overloaded

pytestmark = pytest.mark.anyio


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set once the test is over, so that no worker thread outlives it."""
    event = threading.Event()
    yield event
    event.set()


def pool(workers: int = 1, queue_limit: int = 10, queue_timeout_s: float = 10) -> WorkerPool:
    return WorkerPool("m", workers=workers, queue_limit=queue_limit,
                      queue_timeout_s=queue_timeout_s, thread_name="test-pool")


def blocking(log: list[str], name: str, until: threading.Event) -> Callable[[], str]:
    def work() -> str:
        log.append(name)
        until.wait(10)
        return name
    return work


async def eventually(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


async def test_a_cancelled_caller_keeps_the_worker_until_its_thread_is_done(
        release: threading.Event) -> None:
    workers = pool()
    log: list[str] = []
    abandoned = asyncio.ensure_future(workers.run("a", blocking(log, "a1", release)))
    await eventually(lambda: log == ["a1"])
    abandoned.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await abandoned
    next_one = asyncio.ensure_future(workers.run("b", blocking(log, "b1", threading.Event())))
    await asyncio.sleep(0.1)
    # The client left; the thread did not: the worker is busy, and the next request waits.
    assert (workers.occupancy.busy, workers.occupancy.waiting) == (1, 1)
    assert log == ["a1"]
    release.set()
    await eventually(lambda: log == ["a1", "b1"])
    next_one.cancel()
    workers.close(wait=False)


async def test_a_cancelled_waiter_gives_its_place_up(release: threading.Event) -> None:
    workers = pool()
    log: list[str] = []
    holder = asyncio.ensure_future(workers.run("a", blocking(log, "a1", release)))
    await eventually(lambda: log == ["a1"])
    quitter = asyncio.ensure_future(workers.run("b", blocking(log, "b1", release)))
    patient = asyncio.ensure_future(workers.run("c", blocking(log, "c1", release)))
    await eventually(lambda: workers.occupancy.waiting == 2)
    quitter.cancel()
    await eventually(lambda: workers.occupancy.waiting == 1)
    release.set()
    assert await asyncio.gather(holder, patient) == ["a1", "c1"]
    assert log == ["a1", "c1"]  # b1 never ran
    await eventually(lambda: workers.occupancy.busy == 0)
    assert workers.occupancy.waiting == 0
    workers.close(wait=True)


async def test_turns_go_round_robin_across_owners(release: threading.Event) -> None:
    workers = pool()
    log: list[str] = []
    first = asyncio.ensure_future(workers.run("a", blocking(log, "a1", release)))
    await eventually(lambda: log == ["a1"])
    later = [asyncio.ensure_future(workers.run(owner, blocking(log, name, release)))
             for owner, name in [("a", "a2"), ("a", "a3"), ("b", "b1"), ("c", "c1"),
                                 ("b", "b2")]]
    await eventually(lambda: workers.occupancy.waiting == 5)
    release.set()
    await asyncio.gather(first, *later)
    assert log == ["a1", "b1", "c1", "a2", "b2", "a3"]
    workers.close(wait=True)


async def test_a_full_queue_and_a_long_wait_are_overloaded(release: threading.Event) -> None:
    workers = pool(queue_limit=1, queue_timeout_s=0.2)
    log: list[str] = []
    holder = asyncio.ensure_future(workers.run("a", blocking(log, "a1", release)))
    await eventually(lambda: log == ["a1"])
    waiter = asyncio.ensure_future(workers.run("b", blocking(log, "b1", release)))
    await eventually(lambda: workers.occupancy.waiting == 1)
    with pytest.raises(Overloaded, match="requests waiting") as full:  # b's, the most
        await workers.run("b", blocking(log, "b2", release))
    assert full.value.status == 503 and full.value.retry_after > 0
    with pytest.raises(Overloaded, match="waited too long"):
        await waiter
    assert (workers.occupancy.busy, workers.occupancy.waiting) == (1, 0)
    release.set()
    assert await holder == "a1"
    await eventually(lambda: workers.occupancy.busy == 0)
    assert log == ["a1"]
    workers.close(wait=True)


async def test_work_that_fails_gives_its_worker_back() -> None:
    workers = pool()

    def broken() -> None:
        raise ValueError("engine failed")

    with pytest.raises(ValueError, match="engine failed"):
        await workers.run(None, broken)
    await eventually(lambda: workers.occupancy.busy == 0)
    workers.close(wait=True)


async def test_a_closed_pool_refuses_work_and_keeps_no_worker() -> None:
    workers = pool()
    workers.close(wait=True)
    with pytest.raises(PoolClosed):
        await workers.run("a", lambda: "never")
    assert (workers.occupancy.busy, workers.occupancy.waiting) == (0, 0)


async def test_a_request_of_steps_lets_another_owner_in_between_them(
        release: threading.Event) -> None:
    workers = pool()
    log: list[str] = []
    gates = [threading.Event() for _ in range(3)]

    async def long() -> None:
        await workers.run("a", blocking(log, "a.0", gates[0]))
        for step in (1, 2):
            await workers.resume("a", blocking(log, f"a.{step}", gates[step]))

    stepping = asyncio.ensure_future(long())
    await eventually(lambda: log == ["a.0"])
    short = asyncio.ensure_future(workers.run("b", blocking(log, "b.0", release)))
    await eventually(lambda: workers.occupancy.waiting == 1)
    for gate in gates:
        gate.set()
    release.set()
    await asyncio.gather(stepping, short)
    # The thread's step ended before its caller resumed: b's request had the worker first.
    assert log == ["a.0", "b.0", "a.1", "a.2"]
    await eventually(lambda: workers.occupancy.busy == 0)
    workers.close(wait=True)
