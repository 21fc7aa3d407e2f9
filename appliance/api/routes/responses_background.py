"""Background responses: work owned by the app, not by the request that asked for it.

``POST /v1/responses`` with ``background: true`` answers at once (``queued``) and leaves the
generation to a task here. The task is registered with the drain like a request (a shutdown
waits for it through the grace period, then cuts it), and its request's ledger row waits for
it (``RequestNote.outlives_response``, written by the request context when the work is done:
a background response is charged when it completes, as its tokens are known only then).

Each job keeps its stream's frames, so ``GET /v1/responses/{id}?stream=true&starting_after=N``
replays what followed event N and then follows live; a finished job stays while it is among
its key's last ``KEPT_FINISHED_PER_KEY`` and the server's last ``KEPT_FINISHED``, after which
a stream is rebuilt from the stored body. How many
run at once is bounded per key and in all (``RequestBounds``): past either, a 429.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from appliance.api.note import RequestNote
from appliance.api.wire.responses_object import EventNumbers, sse_frame
from appliance.engines.base import CancelToken
from appliance.errors import RateLimited

log = logging.getLogger("appliance.api")
JSON = dict[str, Any]
# Finished jobs whose frames stay for late streams: the last few of each key, so that other
# keys' work cannot push one key's out, and a bound in all (a few MB a job at most).
KEPT_FINISHED_PER_KEY = 16
KEPT_FINISHED = 64
CANCEL_WAIT_S = 10.0  # how long a cancel waits for the work to write its ending
RETRY_AFTER_S = 5.0


class DrainSlots(Protocol):
    """What the drain (Services.drain) counts: the work a shutdown waits for, then cuts."""

    def entered(self, task: asyncio.Task[object]) -> None: ...
    def left(self, task: asyncio.Task[object]) -> None: ...


class BackgroundJob:
    """One background response: its frames so far, its latest body, and what stops it."""

    def __init__(self, response_id: str, owner: str | None, body: JSON):
        self.id = response_id
        self.owner = owner
        self.latest = body
        self.frames: list[bytes] = []
        self.finished = False
        self.cancel_requested = False
        self.forgotten = False  # deleted while it ran: stopped, and kept nowhere
        self.on_forget: Callable[[], None] | None = None  # stops its storing
        self.cancel = CancelToken()
        self.task: asyncio.Task[None] | None = None
        self._numbers = EventNumbers()
        self._changed = asyncio.Event()
        self._done = asyncio.Event()

    def publish(self, event: JSON) -> None:
        numbered = self._numbers.number(event)
        self.frames.append(sse_frame(numbered))
        response = event.get("response")
        if isinstance(response, dict):
            self.latest = response
        self._wake()

    def _wake(self) -> None:
        # Followers wait on the event current when they looked; each change sets it and
        # starts a new one, so no wake-up is lost between a check and a wait.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def stop(self, reason: str) -> None:
        """Cancels the work (once); its ending is written by the work itself."""
        if self.task is not None and not self.cancel_requested:
            self.cancel_requested = True
            self.task.cancel(reason)

    def forget(self) -> None:
        self.forgotten = True
        if self.on_forget is not None:
            self.on_forget()
        self.stop("deleted by the client")

    def end(self) -> None:
        self.finished = True
        self._done.set()
        self._wake()

    async def wait_done(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        """The frames after sequence number ``after``, then the live ones until the end."""
        index = max(after + 1, 0)
        while True:
            while index < len(self.frames):
                yield self.frames[index]
                index += 1
            if self.finished:
                return
            changed = self._changed
            await changed.wait()


class BackgroundResponses:
    """The app's background jobs: running ones, and the last few finished."""

    def __init__(self) -> None:
        self._running: dict[str, BackgroundJob] = {}
        self._finished: OrderedDict[str, BackgroundJob] = OrderedDict()

    def find(self, owner: str | None, response_id: str) -> BackgroundJob | None:
        job = self._running.get(response_id) or self._finished.get(response_id)
        return job if job is not None and job.owner == owner else None

    def _keep_finished(self, job: BackgroundJob) -> None:
        self._finished[job.id] = job
        mine = [kept for kept in self._finished.values() if kept.owner == job.owner]
        for oldest in mine[:max(0, len(mine) - KEPT_FINISHED_PER_KEY)]:
            del self._finished[oldest.id]
        while len(self._finished) > KEPT_FINISHED:
            self._finished.popitem(last=False)

    async def forget(self, owner: str | None, response_id: str) -> bool:
        """Forgets ``owner``'s job (DELETE): a running one is stopped and stores nothing
        more, and this returns once its work has ended, so no write of it lands after the
        caller deletes its row. False when there is no such job."""
        job = self.find(owner, response_id)
        if job is None:
            return False
        self._finished.pop(response_id, None)
        if not job.finished:
            job.forget()
            await job.wait_done(CANCEL_WAIT_S)
        return True

    def admit(self, owner: str | None, total: int, per_key: int) -> None:
        """Raises RateLimited when ``owner`` (or the server) has as many running as allowed."""
        if len(self._running) >= total:
            raise RateLimited(f"This server runs {total} background responses at once; retry "
                              "when one has finished.", retry_after=RETRY_AFTER_S)
        mine = sum(1 for job in self._running.values() if job.owner == owner)
        if mine >= per_key:
            raise RateLimited(f"This key runs {per_key} background responses at once; retry "
                              "when one has finished.", retry_after=RETRY_AFTER_S)

    async def start(self, job: BackgroundJob, work: Callable[[BackgroundJob], Awaitable[None]],
                    note: RequestNote, drain: DrainSlots) -> None:
        """Runs ``work`` as the app's task; the request's ledger row waits for it. Returns once
        the task has taken its first step: a task cancelled before that would never run its
        ``finally`` (nor write the response's ending)."""
        later: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        note.outlives_response = later
        self._running[job.id] = job

        async def run() -> None:
            try:
                await work(job)
            except Exception:
                log.exception("background response %s failed", job.id)
            finally:
                self._running.pop(job.id, None)
                if not job.forgotten:
                    self._keep_finished(job)
                job.end()
                if not later.done():
                    later.set_result(None)

        task = asyncio.create_task(run(), name=f"background {job.id}")
        job.task = task
        drain.entered(task)
        task.add_done_callback(lambda done: drain.left(done))
        await asyncio.sleep(0)  # the task's first step runs before this returns (FIFO)
