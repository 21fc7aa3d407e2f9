"""Events that an engine's worker thread hands to the event loop waiting for them.

Engines decode on their own threads (the LLM scheduler, the whisper pool); a request's
coroutine awaits what those threads emit. An exception emitted by the thread is raised in
the coroutine, so a failed request fails where its client is waiting.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from appliance.engines.base import CancelToken

T = TypeVar("T")


class ThreadEvents(Generic[T]):
    """Create it on the event loop; call ``emit`` from any thread, ``next`` on the loop."""

    def __init__(self, cancel: CancelToken):
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T | BaseException] = asyncio.Queue()
        self._cancel = cancel

    def emit(self, event: T | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            self._cancel.cancel()

    async def next(self) -> T:
        event = await self._queue.get()
        if isinstance(event, BaseException):
            raise event
        return event
