"""The queue in front of an engine's worker pool (WorkerPool): who runs next, how many wait.

A pool of ``slots`` workers, a bounded queue in front of it, and round-robin across owners
(API keys): when a slot frees, it goes to the next owner after the one served last that has
work waiting, each owner's requests in arrival order, so one key's burst of 50 uploads does
not make another key's single request wait behind all of them. A full queue is a 503
``overloaded`` with a retry hint, as is a request that waited past ``queue_timeout_s``, before
any work is done. A full queue refuses the key with the most requests waiting, not whoever
comes next: a request from a key with fewer waiting takes the place of that key's newest
(which gets the 503 instead), so one key's burst cannot fill the queue and keep every other
key out. The chat scheduler applies the same policy to its sequence slots itself.
Engines use it through WorkerPool, which gives a slot back when its thread's work is done.

A request of many steps (an embedding request's batches, a transcription's segments) takes
a slot again for each later step with ``resume``: its turn comes after one step of each other
key waiting, so a key's request of 25 minutes holds another key's request of one batch for one
batch, not for those 25 minutes. A resumed request waits behind its own key's requests
already waiting, so a key's requests take turns step by step too; it waits outside the queue
bound and the deadline: it was admitted already, and its turn comes within a step of each
request ahead of it.

``owner_limit`` caps the slots one key holds at once, free or not: a gate whose slots are
more than its work can use at once (the image model's places, two a compute slot) keeps the
rest for other keys, so a key's second long request waits behind its first rather than
taking the place a third key's request would start in. The anonymous owner (None: no keys
are configured, so it is everyone) is never capped: no other owner can come.

Lives on the event loop: every method is called from the loop's thread (request coroutines),
so no lock is needed; the occupancy report may be read from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from appliance.engines.runtime.round_robin import RoundRobin
from appliance.errors import Overloaded

RETRY_AFTER_S = 1.0
# Told (busy slots, waiting requests) whenever either changes.
OccupancyReport = Callable[[int, int], None]


@dataclass(frozen=True)
class Occupancy:
    busy: int
    waiting: int


class FairGate:
    def __init__(self, model_id: str, *, slots: int, queue_limit: int, queue_timeout_s: float,
                 report: OccupancyReport | None = None, owner_limit: int | None = None):
        self._model_id = model_id
        self._slots = slots
        self._queue_limit = queue_limit
        self._queue_timeout_s = queue_timeout_s
        self._report = report
        self._owner_limit = owner_limit
        self._busy = 0
        self._held: dict[str | None, int] = {}  # slots held, by owner (none held: absent)
        self._waiting: dict[str | None, deque[asyncio.Future[None]]] = {}
        # The waiters that came through ``acquire``: only these can be pushed out of a full
        # queue (a resumed request was admitted already, and is never refused).
        self._new: set[asyncio.Future[None]] = set()
        self._turns = RoundRobin()

    @property
    def occupancy(self) -> Occupancy:
        return Occupancy(self._busy, sum(len(q) for q in self._waiting.values()))

    @asynccontextmanager
    async def slot(self, owner: str | None) -> AsyncIterator[None]:
        """Holds one worker slot for the body of the ``async with`` (see ``acquire``)."""
        await self.acquire(owner)
        try:
            yield
        finally:
            self.release(owner)

    def release(self, owner: str | None) -> None:
        """Gives ``owner``'s slot back (on the event loop's thread)."""
        self._leave(owner)

    def release_when_done(self, owner: str | None,
                          work: concurrent.futures.Future[Any]) -> None:
        """Gives the slot back when ``work`` (on a worker thread) is over, not when its client
        leaves: a cancelled request still finishes its current step, and until then the
        worker is busy, which the next request and the metrics must see."""
        loop = asyncio.get_running_loop()

        def done(_: concurrent.futures.Future[Any]) -> None:
            # A closed loop (shutdown) has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.release, owner)

        work.add_done_callback(done)

    async def acquire(self, owner: str | None) -> None:
        """Takes a worker slot, waiting in turn; raises Overloaded when the queue is full or
        the wait runs past the deadline. Cancellation (the client left) takes the request out
        of the queue, or gives a slot granted at that moment back."""
        if self._may_start(owner):
            self._take(owner)
            self._tell()
            return
        self._drop_cancelled()
        if self.occupancy.waiting >= self._queue_limit and not self._make_room(owner):
            raise self._full()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(turn)
        self._new.add(turn)
        self._tell()
        try:
            # Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives
            # as the turn is granted, and the request would then run for a client that left.
            async with asyncio.timeout(self._queue_timeout_s):
                await turn
        except TimeoutError:
            if _granted(turn):  # granted at the last moment: keep it
                return
            self._give_up(owner, turn)
            raise Overloaded(f"The request waited too long for a free worker on model "
                             f"{self._model_id}; try again shortly.",
                             retry_after=RETRY_AFTER_S) from None
        except Overloaded:  # pushed out of the full queue (``_make_room``): holds nothing
            raise
        except BaseException:  # cancelled while waiting
            self._give_up(owner, turn)
            raise
        finally:
            self._new.discard(turn)

    async def resume(self, owner: str | None) -> None:
        """Takes a slot for a later step of a request that held one for its earlier step:
        at once where a slot is free to it, else in turn (round-robin across owners, and
        behind ``owner``'s requests already waiting), never refused.
        Cancellation (the client left) takes it out of the queue as ``acquire`` does."""
        if self._may_start(owner):
            self._take(owner)
            self._tell()
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(turn)
        self._tell()
        try:
            await turn
        except BaseException:
            self._give_up(owner, turn)
            raise

    def _give_up(self, owner: str | None, turn: asyncio.Future[None]) -> None:
        """A waiter cancelled: a slot handed to it at that moment is passed on, else it
        leaves the queue."""
        if _granted(turn):
            self._leave(owner)
        elif turn.done() and not turn.cancelled():  # pushed out as it was cancelled
            turn.exception()  # taken, so asyncio does not log it as never retrieved
        else:  # out of the queue it goes (a cancelled task cancels the turn it awaits)
            turn.cancel()
            self._forget(owner, turn)

    def _full(self) -> Overloaded:
        return Overloaded(f"Model {self._model_id} has {self._queue_limit} requests waiting, "
                          "as many of them this key's as any other's; try again shortly.",
                          retry_after=RETRY_AFTER_S)

    def _drop_cancelled(self) -> None:
        """Takes out turns cancelled with their task that has not yet run to leave (a
        task's cancel cancels the turn it awaits at once): they hold no place."""
        for other, pending in list(self._waiting.items()):
            live = deque(turn for turn in pending if not turn.done())
            if len(live) == len(pending):
                continue
            if live:
                self._waiting[other] = live
            else:
                del self._waiting[other]

    def _make_room(self, owner: str | None) -> bool:
        """On a full queue: the newest new request of the owner with the most waiting gets
        the 503, if that owner has more waiting than ``owner``; False when none has."""
        def new_waiters(of: str | None) -> list[asyncio.Future[None]]:
            return [turn for turn in self._waiting.get(of, ()) if turn in self._new]

        mine = len(new_waiters(owner))
        fullest, theirs = max(((other, new_waiters(other)) for other in self._waiting
                               if other != owner), key=lambda pair: len(pair[1]),
                              default=(None, []))
        if len(theirs) <= mine:
            return False
        pushed = theirs[-1]
        self._new.discard(pushed)
        self._forget(fullest, pushed)
        pushed.set_exception(self._full())
        return True

    def _may_start(self, owner: str | None) -> bool:
        """A free slot ``owner`` may take now. Nobody it would pass waits for it: every
        change that frees a slot or an owner's share hands it on at once (``_leave``)."""
        return self._busy < self._slots and not self._at_limit(owner)

    def _at_limit(self, owner: str | None) -> bool:
        return (self._owner_limit is not None and owner is not None
                and self._held.get(owner, 0) >= self._owner_limit)

    def _take(self, owner: str | None) -> None:
        self._busy += 1
        self._held[owner] = self._held.get(owner, 0) + 1
        self._turns.served(owner)

    def _leave(self, owner: str | None) -> None:
        self._busy -= 1
        left = self._held[owner] - 1
        if left:
            self._held[owner] = left
        else:
            del self._held[owner]
        while self._busy < self._slots:
            waiter = self._next_waiter()
            if waiter is None:
                break
            next_owner, turn = waiter
            if turn.done():  # cancelled, not yet taken out of the queue
                continue
            self._take(next_owner)
            turn.set_result(None)
        self._tell()

    def _next_waiter(self) -> tuple[str | None, asyncio.Future[None]] | None:
        """Takes the first waiter of the owner whose turn it is, among the owners under their
        limit; None when no such owner waits."""
        for owner in self._turns.rotation(self._waiting):
            if self._at_limit(owner):
                continue
            pending = self._waiting[owner]
            turn = pending.popleft()
            if not pending:
                del self._waiting[owner]
            return owner, turn
        return None

    def _forget(self, owner: str | None, turn: asyncio.Future[None]) -> None:
        pending = self._waiting.get(owner)
        if pending is not None and turn in pending:
            pending.remove(turn)
            if not pending:
                del self._waiting[owner]
        self._tell()

    def _tell(self) -> None:
        if self._report is not None:
            occupancy = self.occupancy
            self._report(occupancy.busy, occupancy.waiting)


def _granted(turn: asyncio.Future[None]) -> bool:
    """The turn was handed a slot (not cancelled, not pushed out of the queue)."""
    return turn.done() and not turn.cancelled() and turn.exception() is None
