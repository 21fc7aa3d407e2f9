"""Where the state store's SQL runs: one writer thread with the one write connection, and a few
reader threads with a read-only connection each (WAL lets them read while the writer writes).

Owns the threads, their connections and the transactions around each piece of work: a write is
one ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back whole if it raises), a read one snapshot.
The event loop only awaits: ``write`` and ``read`` hand a function of a connection to a thread
and wait for its result. A write that has been handed over runs to its commit even if the
awaiting request is cancelled (a client that leaves must not leave half its state behind, and
``put_response`` is the client's record of work it was charged for).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from appliance.store.schema import connect

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]


class SqlThreads:
    """Opens (and migrates) the file at construction, in the caller's thread, so a file that
    cannot be opened fails the server's boot. ``close()`` once, after the last request."""

    def __init__(self, path: Path, *, readers: int = 2) -> None:
        self.path = path
        self._write_conn = connect(path, writer=True)
        # Transactions are ours (BEGIN/COMMIT below), not sqlite3's implicit ones.
        self._write_conn.isolation_level = None
        self._writer = ThreadPoolExecutor(max_workers=1,
                                          thread_name_prefix="appliance-state-writer")
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(max_workers=readers,
                                           thread_name_prefix="appliance-state-reader",
                                           initializer=self._open_reader)
        self._closed = False

    async def write(self, work: Work[T]) -> T:
        future = self.submit_write(work)
        # shield: cancelling the request does not cancel the write (module docstring).
        return await asyncio.shield(asyncio.wrap_future(future))

    async def read(self, work: Work[T]) -> T:
        return await asyncio.wrap_future(self._readers.submit(self._read, work))

    def submit_write(self, work: Work[T]) -> Future[T]:
        """For threads that are not the event loop (the sweeper): the write's future."""
        return self._writer.submit(self._write, work)

    def close(self) -> None:
        """Lets handed-over work finish, then stops the threads and closes the connections."""
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self._write_conn.close()
        with self._read_conns_lock:
            for conn in self._read_conns:
                conn.close()
            self._read_conns.clear()

    # -- in the threads ----------------------------------------------------------------------

    def _write(self, work: Work[T]) -> T:
        conn = self._write_conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _open_reader(self) -> None:
        conn = connect(self.path, writer=False)
        conn.isolation_level = None
        self._local.conn = conn
        with self._read_conns_lock:
            self._read_conns.append(conn)

    def _read(self, work: Work[T]) -> T:
        conn: sqlite3.Connection = self._local.conn
        # One snapshot for every statement of the read (a chain and its items agree).
        conn.execute("BEGIN")
        try:
            return work(conn)
        finally:
            conn.execute("COMMIT")
