"""Turns at a FairGate, taken by a worker thread for work it cannot leave between its steps.

A diffusers pipeline runs all its denoising steps inside one call, so a request cannot give
its worker back between two steps as the embedder and whisper do (``WorkerPool.resume``).
Instead the request's thread waits, inside the pipeline's step callback, while another
owner's request computes: ``ComputeTurn`` holds a slot of a FairGate of compute slots while
its request computes, and after about ``STEP_S`` of work gives it to the next owner waiting
and waits for its own next turn (round-robin across owners, never refused).

The FairGate lives on the event loop; the thread reaches it through that loop and blocks
until the loop answers. A request stopped (its client left, the engine closing) while it
waits gives its place in the queue up; one stopped while the engine closes gives up at once
from its own thread, since ``close`` may hold the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from appliance.engines.runtime.fair_gate import FairGate
from appliance.engines.runtime.worker_pool import STEP_S

# How often a waiting request looks whether it was stopped: what a client that left costs in
# wake-ups while it waits, against how late its place in the queue is given up.
POLL_S = 0.05


class TurnStopped(Exception):
    """The request was stopped while it waited for its turn: it holds no compute slot."""


class ComputeTurn:
    """One request's turns at ``gate``, used from the request's worker thread only."""

    def __init__(self, gate: FairGate, loop: asyncio.AbstractEventLoop, owner: str | None,
                 should_stop: Callable[[], bool], closing: Callable[[], bool]):
        self._gate = gate
        self._loop = loop
        self._owner = owner
        self._should_stop = should_stop  # the client left, or the engine is closing
        self._closing = closing  # the engine is closing: the loop may not answer
        self._held = False
        self._since = 0.0

    def take(self) -> None:
        """Waits for this request's first turn; raises TurnStopped when stopped first."""
        self._wait(self._turn())

    def between_steps(self) -> None:
        """After a step: past STEP_S of holding the slot, the next owner waiting gets it and
        this thread waits for its own next turn (raises TurnStopped when stopped first)."""
        if time.monotonic() - self._since < STEP_S:
            return
        self._held = False
        self._wait(self._give_way())

    def end(self) -> None:
        """Gives the slot back, if held (the work is over, however it ended)."""
        if self._held:
            self._held = False
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                self._loop.call_soon_threadsafe(self._gate.release, self._owner)

    def _wait(self, turn: Coroutine[Any, Any, bool]) -> None:
        """Runs ``turn`` on the loop and blocks this thread for its answer."""
        try:
            answer = asyncio.run_coroutine_threadsafe(turn, self._loop)
        except RuntimeError:  # the loop is closed: the server is gone
            turn.close()
            raise TurnStopped from None
        while True:
            try:
                granted = answer.result(timeout=POLL_S)
                break
            except concurrent.futures.TimeoutError:
                if self._closing():  # close() may be holding the loop: do not wait for it
                    answer.cancel()
                    raise TurnStopped from None
        if not granted:
            raise TurnStopped
        self._held = True
        self._since = time.monotonic()

    async def _give_way(self) -> bool:
        """On the loop: keeps the slot where nobody waits, else passes it on and queues."""
        if self._gate.occupancy.waiting == 0:
            return True
        self._gate.release(self._owner)
        return await self._turn()

    async def _turn(self) -> bool:
        """On the loop: True once this request holds a slot; False when it was stopped
        while it waited (and holds none: a slot granted at that moment is passed on)."""
        waiting = asyncio.ensure_future(self._gate.resume(self._owner))
        try:
            while not waiting.done():
                await asyncio.wait({waiting}, timeout=POLL_S)
                if not waiting.done() and self._should_stop():
                    waiting.cancel()
                    try:
                        await waiting
                    except asyncio.CancelledError:
                        return False
        except asyncio.CancelledError:  # the thread gave up (the engine is closing)
            waiting.cancel()
            raise
        if self._should_stop():  # stopped as its turn came, before the poll saw it
            self._gate.release(self._owner)
            return False
        return True
