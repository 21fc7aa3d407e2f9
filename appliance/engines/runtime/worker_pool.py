"""A pool of worker threads behind a FairGate: the one way an engine runs blocking work.

Whisper, diffusion and the embedder each run whole requests on threads of their own. Each
request waits its turn in a FairGate (bounded, round-robin across owners), then its work goes
to a worker thread, and the worker's place is given back when that thread is done with the
work -- not when the request's client leaves. A cancelled request still finishes its current
step (a decode, a segment, a denoising step) and until then the worker is busy: the next
request and the metrics must see it, or the next request would queue, unseen, behind the
rest of the abandoned one. Holding the place in ``submit`` itself makes that true for every
engine, not for each by its own care.

Lives on the event loop, as its FairGate does; the work runs on the pool's threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from appliance.engines.runtime.fair_gate import FairGate, Occupancy, OccupancyReport
from appliance.errors import ServiceUnavailable

# A request run in steps (``resume``) works on, within one step, until it has held the worker
# this long: a short request ends in one step, and a long one gives another key a turn about
# this often -- or after each piece of its work that takes longer (a batch, an audio window).
STEP_S = 1.0
P = ParamSpec("P")
T = TypeVar("T")


class PoolClosed(ServiceUnavailable):
    """The pool is shut down (the engine is closing): the work was not started. A 503, so
    every engine's request answers the same way without mapping it."""


class WorkerPool:
    def __init__(self, model_id: str, *, workers: int, queue_limit: int,
                 queue_timeout_s: float, thread_name: str,
                 report: OccupancyReport | None = None, owner_limit: int | None = None):
        """``owner_limit``: the workers one owner may hold at once (FairGate)."""
        self._model_id = model_id
        self._queue = FairGate(model_id, slots=workers, queue_limit=queue_limit,
                              queue_timeout_s=queue_timeout_s, report=report,
                              owner_limit=owner_limit)
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name)

    @property
    def occupancy(self) -> Occupancy:
        return self._queue.occupancy

    async def submit(self, owner: str | None, work: Callable[P, T], *args: P.args,
                     **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        """Waits for ``owner``'s turn (Overloaded when the queue is full or the wait runs
        out), then starts ``work`` on a worker thread. The worker's place is given back when
        the returned future is done: the work returned, raised, or was cancelled before it
        began (``future.cancel()``, or the pool's shutdown)."""
        await self._queue.acquire(owner)
        return self._start(owner, work, *args, **kwargs)

    async def resume(self, owner: str | None, work: Callable[P, T], *args: P.args,
                     **kwargs: P.kwargs) -> T:
        """``run`` for a later step of a request whose earlier step ran here: its turn
        comes after one step of each other owner waiting, and is never refused
        (FairGate.resume)."""
        await self._queue.resume(owner)
        return await self._result(self._start(owner, work, *args, **kwargs))

    def _start(self, owner: str | None, work: Callable[P, T], *args: P.args,
               **kwargs: P.kwargs) -> concurrent.futures.Future[T]:
        """Starts ``work`` in the slot just taken, which is given back when it is over."""
        try:
            future = self._threads.submit(work, *args, **kwargs)
        except RuntimeError:  # shut down between the turn and the start
            self._queue.release(owner)
            raise PoolClosed(f"Model {self._model_id} is shutting down.") from None
        except BaseException:
            self._queue.release(owner)
            raise
        self._queue.release_when_done(owner, future)
        return future

    async def run(self, owner: str | None, work: Callable[P, T], *args: P.args,
                  **kwargs: P.kwargs) -> T:
        """``submit``, then the work's result. A caller cancelled while the work is queued
        in the pool takes it out; work already running goes on to its own end (the caller
        tells it to stop, through its cancel token), and holds its worker until then."""
        return await self._result(await self.submit(owner, work, *args, **kwargs))

    @staticmethod
    async def _result(future: concurrent.futures.Future[T]) -> T:
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def close(self, *, wait: bool) -> None:
        """Work not yet started is dropped (its place is given back); ``wait``: returns
        once the running work is over."""
        self._threads.shutdown(wait=wait, cancel_futures=True)
