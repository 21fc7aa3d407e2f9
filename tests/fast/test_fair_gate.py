"""The worker-pool gate (whisper, images): bounded queue, round-robin across keys, deadlines,
and cancellation that never leaks a slot."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from appliance.engines.runtime.fair_gate import FairGate
from appliance.errors import Overloaded

pytestmark = pytest.mark.anyio


class Holder:
    """A request that holds a slot until told to let go; records when it got in."""

    def __init__(self, gate: FairGate, owner: str | None, name: str, log: list[str]):
        self.release = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(gate, owner, name, log))

    async def _run(self, gate: FairGate, owner: str | None, name: str, log: list[str]) -> None:
        async with gate.slot(owner):
            log.append(name)
            await self.release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_free_slots_are_taken_at_once_and_counted() -> None:
    reports: list[tuple[int, int]] = []
    gate = FairGate("m", slots=2, queue_limit=4, queue_timeout_s=10,
                    report=lambda busy, waiting: reports.append((busy, waiting)))
    log: list[str] = []
    first, second = Holder(gate, "a", "a1", log), Holder(gate, "a", "a2", log)
    third = Holder(gate, "a", "a3", log)
    await settle()
    assert log == ["a1", "a2"]
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (2, 1)
    first.release.set()
    await settle()
    assert log == ["a1", "a2", "a3"]
    second.release.set()
    third.release.set()
    await asyncio.gather(first.task, second.task, third.task)
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)
    assert reports[-1] == (0, 0)


async def test_a_burst_from_one_key_does_not_starve_the_others() -> None:
    gate = FairGate("m", slots=1, queue_limit=20, queue_timeout_s=10)
    log: list[str] = []
    holders = [Holder(gate, "a", "a1", log)]
    await settle()
    holders += [Holder(gate, "a", f"a{i}", log) for i in range(2, 6)]
    await settle()
    holders += [Holder(gate, "b", "b1", log), Holder(gate, "c", "c1", log)]
    await settle()
    for holder in holders:  # each lets go in turn; the next in line takes the slot
        holder.release.set()
    await asyncio.gather(*(h.task for h in holders))
    assert log == ["a1", "b1", "c1", "a2", "a3", "a4", "a5"]


async def test_turns_rotate_across_keys_each_in_arrival_order() -> None:
    gate = FairGate("m", slots=1, queue_limit=20, queue_timeout_s=10)
    log: list[str] = []
    blocker = Holder(gate, None, "x", log)
    await settle()
    waiting = [Holder(gate, owner, f"{owner}{i}", log) for i in (1, 2) for owner in "abc"]
    await settle()
    blocker.release.set()
    for holder in waiting:
        holder.release.set()
    await asyncio.gather(blocker.task, *(h.task for h in waiting))
    assert log == ["x", "a1", "b1", "c1", "a2", "b2", "c2"]


async def test_a_full_queue_is_overloaded_with_a_retry_hint() -> None:
    gate = FairGate("whisper", slots=1, queue_limit=2, queue_timeout_s=10)
    log: list[str] = []
    holders = [Holder(gate, "a", f"a{i}", log) for i in range(3)]
    await settle()
    with pytest.raises(Overloaded) as refused:
        async with gate.slot("a"):
            pass
    assert refused.value.retry_after > 0
    assert refused.value.status == 503 and "whisper" in str(refused.value)
    for holder in holders:
        holder.release.set()
    await asyncio.gather(*(h.task for h in holders))


async def test_a_full_queue_refuses_the_key_with_the_most_waiting() -> None:
    gate = FairGate("whisper", slots=1, queue_limit=3, queue_timeout_s=10)
    log: list[str] = []
    burst = [Holder(gate, "a", f"a{i}", log) for i in range(4)]  # a0 runs, 3 wait: full
    await settle()
    b = Holder(gate, "b", "b0", log)  # b has none waiting: a's newest gives its place up
    await settle()
    with pytest.raises(Overloaded) as pushed:
        await burst[3].task
    assert pushed.value.status == 503 and pushed.value.retry_after > 0
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (1, 3)
    c = Holder(gate, "c", "c0", log)  # a still has the most (2): its next-newest goes
    await settle()
    with pytest.raises(Overloaded):
        await burst[2].task
    with pytest.raises(Overloaded):  # a, b and c have one waiting each: nobody has more
        await gate.acquire("b")
    for holder in (*burst[:2], b, c):
        holder.release.set()
    await asyncio.gather(*(h.task for h in (*burst[:2], b, c)))
    assert log == ["a0", "b0", "c0", "a1"]  # the ring: a, then b and c, then a again
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_a_resumed_step_is_never_pushed_out() -> None:
    gate = FairGate("embed", slots=1, queue_limit=2, queue_timeout_s=10)
    log: list[str] = []
    long = Stepper(gate, "a", "a", 2, log)
    await settle()
    other = Holder(gate, "b", "b0", log)
    await settle()
    long.step_done.set()  # a's first step ends: b0 runs, a waits to resume
    await settle()
    newer = asyncio.ensure_future(gate.acquire("a"))  # a's new request: the queue is full
    await settle()
    assert log == ["a.0", "b0"] and gate.occupancy.waiting == 2
    late = asyncio.ensure_future(gate.acquire("c"))  # a has the most: its new one goes,
    await settle()  # not the step it resumes
    with pytest.raises(Overloaded):
        await newer
    other.release.set()  # b0 ends: the ring goes on to c, then a's step
    await late
    gate.release("c")
    await run_steps(long)
    await other.task
    assert log == ["a.0", "b0", "a.1"]
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


@pytest.mark.parametrize("pushed_first", [True, False],
                         ids=["pushed out, then cancelled", "cancelled, then a newcomer"])
async def test_a_waiter_pushed_out_as_it_is_cancelled_leaks_nothing(
        pushed_first: bool) -> None:
    gate = FairGate("whisper", slots=1, queue_limit=1, queue_timeout_s=10)
    log: list[str] = []
    holder = Holder(gate, "a", "a0", log)
    await settle()
    doomed = Holder(gate, "a", "a1", log)
    await settle()
    newcomer = asyncio.ensure_future(gate.acquire("b"))  # pushes a1 out...
    if pushed_first:
        await asyncio.sleep(0)
    doomed.task.cancel()  # ... as its client leaves
    await settle()
    assert doomed.task.cancelled() or isinstance(doomed.task.exception(), Overloaded)
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (1, 1)
    holder.release.set()
    await holder.task
    await newcomer
    gate.release("b")
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_waiting_past_the_deadline_is_overloaded_and_leaves_the_queue() -> None:
    gate = FairGate("m", slots=1, queue_limit=5, queue_timeout_s=0.05)
    log: list[str] = []
    holder = Holder(gate, "a", "a1", log)
    await settle()
    with pytest.raises(Overloaded, match="waited too long"):
        async with gate.slot("b"):
            pass
    assert gate.occupancy.waiting == 0
    holder.release.set()
    await holder.task
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_cancelled_waiters_give_their_place_up_and_leak_nothing() -> None:
    gate = FairGate("m", slots=1, queue_limit=5, queue_timeout_s=10)
    log: list[str] = []
    holder = Holder(gate, "a", "a1", log)
    await settle()
    quitter = Holder(gate, "b", "b1", log)
    patient = Holder(gate, "c", "c1", log)
    await settle()
    quitter.task.cancel()
    await settle()
    assert gate.occupancy.waiting == 1
    holder.release.set()
    patient.release.set()
    await asyncio.gather(holder.task, patient.task)
    assert log == ["a1", "c1"]
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_a_waiter_cancelled_just_as_its_turn_came_passes_the_slot_on() -> None:
    gate = FairGate("m", slots=1, queue_limit=5, queue_timeout_s=10)
    log: list[str] = []
    go = asyncio.Event()
    unlucky: list[Holder] = []

    async def first() -> None:
        async with gate.slot("a"):
            log.append("a1")
            await go.wait()
        # Leaving handed the slot to b1, which has not run yet: it is cancelled now.
        unlucky[0].task.cancel()

    holder = asyncio.ensure_future(first())
    await settle()
    unlucky.append(Holder(gate, "b", "b1", log))
    patient = Holder(gate, "c", "c1", log)
    await settle()
    go.set()
    patient.release.set()
    await asyncio.gather(holder, patient.task)
    assert log == ["a1", "c1"]
    assert unlucky[0].task.cancelled()
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_an_error_inside_the_slot_gives_it_back() -> None:
    gate = FairGate("m", slots=1, queue_limit=5, queue_timeout_s=10)
    with pytest.raises(ValueError):
        async with gate.slot("a"):
            raise ValueError("engine failed")
    assert gate.occupancy.busy == 0


async def test_a_slot_held_by_thread_work_frees_when_the_work_ends_not_before() -> None:
    gate = FairGate("m", slots=1, queue_limit=5, queue_timeout_s=10)
    finish = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        await gate.acquire("a")
        work = pool.submit(finish.wait)
        gate.release_when_done("a", work)
        await settle()
        assert gate.occupancy.busy == 1  # the client may have left; the worker has not
        finish.set()
        await asyncio.wrap_future(work)
        for _ in range(100):
            if gate.occupancy.busy == 0:
                break
            await asyncio.sleep(0.01)
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


class Stepper:
    """A request of several steps: takes its slot for the first, then ``resume``s it for each
    later one, giving it back in between; logs each step as it starts."""

    def __init__(self, gate: FairGate, owner: str | None, name: str, steps: int,
                 log: list[str]):
        self.step_done = asyncio.Event()
        self.task = asyncio.ensure_future(self._run(gate, owner, name, steps, log))

    async def _run(self, gate: FairGate, owner: str | None, name: str, steps: int,
                   log: list[str]) -> None:
        for step in range(steps):
            await (gate.acquire(owner) if step == 0 else gate.resume(owner))
            log.append(f"{name}.{step}")
            await self.step_done.wait()
            self.step_done.clear()
            gate.release(owner)


async def run_steps(*steppers: Stepper) -> None:
    """Lets every stepper's current step end, until all of them are over."""
    while not all(s.task.done() for s in steppers):
        for stepper in steppers:
            stepper.step_done.set()
        await settle()
    await asyncio.gather(*(s.task for s in steppers))


@pytest.mark.parametrize(("first", "second", "expected"), [
    pytest.param(("a", "a", 4), ("b", "b", 1), ["a.0", "b.0", "a.1", "a.2", "a.3"],
                 id="another key's short request goes between a long one's steps"),
    pytest.param(("a", "a", 3), ("b", "b", 3), ["a.0", "b.0", "a.1", "b.1", "a.2", "b.2"],
                 id="two keys' long requests alternate"),
    pytest.param(("a", "a1", 3), ("a", "a2", 1), ["a1.0", "a2.0", "a1.1", "a1.2"],
                 id="a key's own requests take turns step by step"),
])
async def test_requests_of_steps_take_turns(first: tuple[str, str, int],
                                            second: tuple[str, str, int],
                                            expected: list[str]) -> None:
    gate = FairGate("embed", slots=1, queue_limit=5, queue_timeout_s=10)
    log: list[str] = []
    earlier = Stepper(gate, *first, log)
    await settle()
    later = Stepper(gate, *second, log)
    await settle()
    await run_steps(earlier, later)
    assert log == expected
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_resuming_is_never_refused_by_a_full_queue_or_the_deadline() -> None:
    gate = FairGate("embed", slots=1, queue_limit=1, queue_timeout_s=0.01)
    log: list[str] = []
    long = Stepper(gate, "a", "a", 2, log)
    await settle()
    short = Stepper(gate, "b", "b", 1, log)  # fills the queue
    await settle()
    long.step_done.set()  # a's first step ends: b runs, a waits to resume
    await settle()
    with pytest.raises(Overloaded):  # the queue (a's resumption) is full for new requests
        await gate.acquire("c")
    await asyncio.sleep(0.05)  # past the deadline, which a resumed request does not have
    await run_steps(long, short)
    assert log == ["a.0", "b.0", "a.1"]


async def test_a_request_cancelled_while_resuming_leaves_the_queue() -> None:
    gate = FairGate("embed", slots=1, queue_limit=5, queue_timeout_s=10)
    log: list[str] = []
    long = Stepper(gate, "a", "a", 3, log)
    await settle()
    short = Stepper(gate, "b", "b", 1, log)
    await settle()
    long.step_done.set()
    await settle()
    assert log == ["a.0", "b.0"] and gate.occupancy.waiting == 1
    long.task.cancel()
    await settle()
    assert gate.occupancy.waiting == 0
    await run_steps(short)
    assert log == ["a.0", "b.0"]
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_a_key_at_its_limit_leaves_the_free_slot_to_another_key() -> None:
    gate = FairGate("image", slots=2, queue_limit=5, queue_timeout_s=10, owner_limit=1)
    log: list[str] = []
    a1 = Holder(gate, "a", "a1", log)
    await settle()
    a2 = Holder(gate, "a", "a2", log)  # a slot is free, but not to a
    await settle()
    assert log == ["a1"] and (gate.occupancy.busy, gate.occupancy.waiting) == (1, 1)
    b1 = Holder(gate, "b", "b1", log)  # ... it is b's, at once
    await settle()
    assert log == ["a1", "b1"]
    b1.release.set()  # a is still at its limit: the slot stays free
    await settle()
    assert log == ["a1", "b1"] and (gate.occupancy.busy, gate.occupancy.waiting) == (1, 1)
    a1.release.set()  # a's share frees: its next request starts
    await settle()
    assert log == ["a1", "b1", "a2"]
    a2.release.set()
    await asyncio.gather(a1.task, a2.task, b1.task)
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_the_limit_passes_a_capped_key_over_in_the_rotation_not_out_of_it() -> None:
    gate = FairGate("image", slots=2, queue_limit=9, queue_timeout_s=10, owner_limit=1)
    log: list[str] = []
    holders = [Holder(gate, "a", "a1", log), Holder(gate, "b", "b1", log)]
    await settle()
    holders += [Holder(gate, "a", "a2", log), Holder(gate, "b", "b2", log),
                Holder(gate, "c", "c1", log)]
    await settle()
    assert log == ["a1", "b1"]
    holders[1].release.set()  # b1 ends: a is capped, so c before b's second
    await settle()
    assert log == ["a1", "b1", "c1"]
    holders[4].release.set()  # c1 ends: b's turn (a still capped)
    await settle()
    assert log == ["a1", "b1", "c1", "b2"]
    holders[0].release.set()
    await settle()
    assert log == ["a1", "b1", "c1", "b2", "a2"]
    for holder in holders:
        holder.release.set()
    await asyncio.gather(*(h.task for h in holders))
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)


async def test_the_anonymous_owner_is_everyone_and_never_capped() -> None:
    gate = FairGate("image", slots=2, queue_limit=5, queue_timeout_s=10, owner_limit=1)
    log: list[str] = []
    holders = [Holder(gate, None, "x", log), Holder(gate, None, "y", log)]
    await settle()
    assert log == ["x", "y"]  # no keys: nobody else can come, so no slot is kept free
    for holder in holders:
        holder.release.set()
    await asyncio.gather(*(h.task for h in holders))


async def test_a_capped_waiter_that_leaves_or_times_out_leaks_nothing() -> None:
    gate = FairGate("image", slots=2, queue_limit=5, queue_timeout_s=0.05, owner_limit=1)
    log: list[str] = []
    a1 = Holder(gate, "a", "a1", log)
    await settle()
    with pytest.raises(Overloaded):  # capped past the deadline, a slot free all along
        await gate.acquire("a")
    leaving = Holder(gate, "a", "a3", log)
    await settle()
    leaving.task.cancel()
    await settle()
    assert (gate.occupancy.busy, gate.occupancy.waiting) == (1, 0)
    a1.release.set()
    await a1.task
    await gate.acquire("a")  # a's share is whole again
    await gate.acquire("b")
    assert gate.occupancy.busy == 2
    gate.release("a")
    gate.release("b")
    assert log == ["a1"] and (gate.occupancy.busy, gate.occupancy.waiting) == (0, 0)
