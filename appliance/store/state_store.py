"""SqliteStateStore: the api's ``StateStore`` (stored responses, conversations, stored chat
completions) on one SQLite file in the data dir.

Owns the retention rule and the clock: a write stamps ``expires_at`` (a response or completion
``retention_s`` after its creation, a conversation after its last write), every read passes
"now" so expired state is invisible at once, and a sweeper thread deletes it every
``sweep_interval_s`` (first at start). Owns which writes are checked against the bounds of
what one owner may keep (``usage.StoreBounds``): every write that adds state, inside its own
transaction; a rewrite of a stored response (a background response finishing) is not, as it
was checked when first stored and refusing it would leave it ``queued`` for good. The SQL lives
in ``responses``, ``conversations`` and ``completions``; where it runs, in ``threads``. A write
has committed when its method returns.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from appliance.store import completions, conversations, responses, usage
from appliance.store.records import (
    JSON,
    Conversation,
    Order,
    Page,
    StoredCompletion,
    StoredResponse,
)
from appliance.store.sweep import sweep_batch
from appliance.store.threads import SqlThreads, Work
from appliance.store.usage import StoreBounds

log = logging.getLogger("appliance.store")
T = TypeVar("T")

DAY_SECONDS = 86_400.0


class SqliteStateStore:
    """``close()`` once at shutdown; the store is unusable after it."""

    def __init__(self, path: Path, *, retention_s: float,
                 wall_clock: Callable[[], float] = time.time,
                 sweep_interval_s: float | None = 3600.0, sweep_batch_size: int = 500,
                 readers: int = 2, bounds: StoreBounds | None = None) -> None:
        if not retention_s > 0:
            raise ValueError(f"retention_s must be above 0, got {retention_s!r}")
        self.path = path
        self.retention_s = retention_s
        self.bounds = bounds if bounds is not None else StoreBounds()
        self._clock = wall_clock
        self._batch = sweep_batch_size
        self._threads = SqlThreads(path, readers=readers)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        if sweep_interval_s is not None:
            # Daemon: a process that dies without close() must not hang on it.
            self._sweeper = threading.Thread(target=self._sweep_every, args=(sweep_interval_s,),
                                             name="appliance-state-sweeper", daemon=True)
            self._sweeper.start()

    # -- responses -------------------------------------------------------------------------

    async def put_response(self, response: StoredResponse) -> None:
        expires_at = response.created_at + self.retention_s

        def put(conn: sqlite3.Connection) -> None:
            before = usage.owner_bytes(conn, response.owner)
            if responses.put(conn, response, expires_at):
                usage.check_quota(conn, response.owner, before, self.bounds)
        await self._threads.write(put)

    async def get_response(self, owner: str | None, response_id: str) -> StoredResponse | None:
        now = self._clock()
        return await self._threads.read(
            lambda conn: responses.get(conn, owner, response_id, now))

    async def delete_response(self, owner: str | None, response_id: str) -> bool:
        now = self._clock()
        return await self._threads.write(
            lambda conn: responses.delete(conn, owner, response_id, now))

    async def input_items(self, owner: str | None, response_id: str, *, order: Order,
                          after: str | None, limit: int) -> Page | None:
        now = self._clock()
        return await self._threads.read(lambda conn: responses.input_items(
            conn, owner, response_id, now, order=order, after=after, limit=limit))

    async def chain(self, owner: str | None, response_id: str,
                    max_turns: int) -> list[StoredResponse] | None:
        now = self._clock()
        return await self._threads.read(
            lambda conn: responses.chain(conn, owner, response_id, now, max_turns))

    # -- conversations ---------------------------------------------------------------------

    async def create_conversation(self, owner: str | None, metadata: dict[str, str],
                                  items: list[JSON]) -> Conversation:
        now = self._clock()
        return await self._growing(owner, lambda conn: conversations.create(
            conn, owner, metadata, items, now, now + self.retention_s, self.bounds))

    async def get_conversation(self, owner: str | None, conv_id: str) -> Conversation | None:
        now = self._clock()
        return await self._threads.read(
            lambda conn: conversations.get(conn, owner, conv_id, now))

    async def update_conversation(self, owner: str | None, conv_id: str,
                                  metadata: dict[str, str]) -> Conversation | None:
        now = self._clock()
        return await self._growing(owner, lambda conn: conversations.update(
            conn, owner, conv_id, metadata, now, now + self.retention_s))

    async def delete_conversation(self, owner: str | None, conv_id: str) -> bool:
        now = self._clock()
        return await self._threads.write(
            lambda conn: conversations.delete(conn, owner, conv_id, now))

    async def append_items(self, owner: str | None, conv_id: str, items: list[JSON]) -> bool:
        now = self._clock()
        return await self._growing(owner, lambda conn: conversations.append(
            conn, owner, conv_id, items, now, now + self.retention_s, self.bounds))

    async def all_items(self, owner: str | None, conv_id: str,
                        max_items: int) -> list[JSON] | None:
        now = self._clock()
        return await self._threads.read(
            lambda conn: conversations.all_items(conn, owner, conv_id, now, max_items))

    async def list_items(self, owner: str | None, conv_id: str, *, order: Order,
                         after: str | None, limit: int) -> Page | None:
        now = self._clock()
        return await self._threads.read(lambda conn: conversations.list_items(
            conn, owner, conv_id, now, order=order, after=after, limit=limit))

    async def get_item(self, owner: str | None, conv_id: str, item_id: str) -> JSON | None:
        now = self._clock()
        return await self._threads.read(
            lambda conn: conversations.get_item(conn, owner, conv_id, item_id, now))

    async def delete_item(self, owner: str | None, conv_id: str, item_id: str) -> bool:
        now = self._clock()
        return await self._threads.write(lambda conn: conversations.delete_item(
            conn, owner, conv_id, item_id, now, now + self.retention_s))

    # -- stored chat completions -----------------------------------------------------------

    async def put_completion(self, completion: StoredCompletion) -> None:
        expires_at = completion.created_at + self.retention_s
        await self._growing(completion.owner,
                            lambda conn: completions.put(conn, completion, expires_at))

    async def get_completion(self, owner: str | None,
                             completion_id: str) -> StoredCompletion | None:
        now = self._clock()
        return await self._threads.read(
            lambda conn: completions.get(conn, owner, completion_id, now))

    async def list_completions(self, owner: str | None, *, model: str | None,
                               metadata: dict[str, str], order: Order, after: str | None,
                               limit: int) -> Page | None:
        now = self._clock()
        return await self._threads.read(lambda conn: completions.listed(
            conn, owner, now, model=model, metadata=metadata, order=order, after=after,
            limit=limit))

    async def update_completion(self, owner: str | None, completion_id: str,
                                metadata: dict[str, str]) -> StoredCompletion | None:
        now = self._clock()
        return await self._growing(
            owner, lambda conn: completions.update(conn, owner, completion_id, metadata, now))

    async def delete_completion(self, owner: str | None, completion_id: str) -> bool:
        now = self._clock()
        return await self._threads.write(
            lambda conn: completions.delete(conn, owner, completion_id, now))

    async def completion_messages(self, owner: str | None, completion_id: str, *,
                                  order: Order, after: str | None,
                                  limit: int) -> Page | None:
        now = self._clock()
        return await self._threads.read(lambda conn: completions.messages(
            conn, owner, completion_id, now, order=order, after=after, limit=limit))

    # -- what one owner keeps ---------------------------------------------------------------

    async def room(self, owner: str | None, *, more_bytes: int = 0,
                   conversation_id: str | None = None, more_items: int = 0) -> None:
        await self._threads.read(lambda conn: usage.room(
            conn, owner, self.bounds, more_bytes=more_bytes, conversation_id=conversation_id,
            more_items=more_items))

    async def stored_bytes(self, owner: str | None) -> int:
        return await self._threads.read(lambda conn: usage.owner_bytes(conn, owner))

    async def _growing(self, owner: str | None, work: Work[T]) -> T:
        """A write that may add to ``owner``'s state: refused (rolled back) past the quota."""
        def checked(conn: sqlite3.Connection) -> T:
            before = usage.owner_bytes(conn, owner)
            result = work(conn)
            usage.check_quota(conn, owner, before, self.bounds)
            return result
        return await self._threads.write(checked)

    # -- retention ---------------------------------------------------------------------------

    def sweep(self) -> int:
        """Deletes everything expired, a batch per write transaction; returns how much went.
        Blocks: for the sweeper thread and tests, never the event loop."""
        removed = 0
        while True:
            batch = self._threads.submit_write(
                functools.partial(sweep_batch, now=self._clock(), batch=self._batch)).result()
            removed += batch
            if batch == 0 or self._stop.is_set():
                return removed

    def close(self) -> None:
        """Stops the sweeper, lets handed-over writes commit, closes the file. Idempotent."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join()
        self._threads.close()

    def __enter__(self) -> SqliteStateStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _sweep_every(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                removed = self.sweep()
            except Exception:
                # A full disk must not end the sweeping for good: log, try again next time.
                log.exception("state store: the retention sweep failed")
            else:
                if removed:
                    log.info("state store: swept %d expired responses, conversations and "
                             "stored completions", removed)
            if self._stop.wait(interval_s):
                return
