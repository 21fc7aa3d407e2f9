"""The ledger writer: one thread, one write connection, one queue.

Request code calls ``record()`` from any thread, including the event loop; it only enqueues.
The writer thread owns the connection (opened in that thread, so sqlite3's same-thread check
holds) and commits whatever has queued up as one transaction per batch, which keeps the cost of
a row far below one fsync each under load. Rows are upserted by ``request_id``: a request is
written at admission ("started") and again when it ends, and stays one row.

A caller that must know its row is on disk (the api, before it sends a response's last byte)
passes ``on_commit``; it runs in the writer thread once the batch holding the row committed.
Concurrent requests share one commit (group commit), so durability costs latency, not a
transaction per row. At start, rows a dead process left "started" are marked "interrupted".
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlite_utils import Database

from appliance.ledger.records import RequestRecord
from appliance.ledger.schema import open_database

log = logging.getLogger("appliance.ledger")

_COLUMNS = tuple(f.name for f in fields(RequestRecord))
_UPSERT = (
    f"INSERT INTO requests ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c != "request_id")
)


@dataclass(frozen=True)
class _Flush:
    """Set once every item enqueued before it is committed (the queue is FIFO)."""

    done: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class _Stop:
    pass


_Item = RequestRecord | _Flush | _Stop
OnCommit = Callable[[], None]


class LedgerWriter:
    """Owns the writer thread. ``start()`` once, ``record()`` many times, ``close()`` at exit."""

    def __init__(self, path: Path, *, max_batch: int = 500) -> None:
        self.path = path
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[float, _Item, OnCommit | None]] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lag = 0.0
        self._interrupted = 0

    # -- any thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Opens the database in the writer thread; raises here if it cannot be opened."""
        if self._thread is not None or self._closed:
            raise RuntimeError("LedgerWriter.start() may be called once, before close()")
        opened = threading.Event()
        failure: list[BaseException] = []
        # Daemon: a process that dies without close() must not hang on this thread; the server's
        # lifespan calls close(), which drains the queue first.
        self._thread = threading.Thread(
            target=self._run, args=(opened, failure), name="appliance-ledger-writer", daemon=True
        )
        self._thread.start()
        opened.wait()
        if failure:
            self._thread.join()
            self._closed = True
            raise failure[0]

    def record(self, row: RequestRecord, on_commit: OnCommit | None = None) -> None:
        """Enqueues ``row``; never blocks. ``on_commit`` runs in the writer thread once the row
        is committed (or its write failed, logged). Rows recorded after ``close()`` are dropped,
        logged, and their ``on_commit`` runs at once so no caller waits forever."""
        if self._closed:
            log.warning("ledger closed; dropping row for request %s", row.request_id)
            if on_commit is not None:
                on_commit()
            return
        self._queue.put((time.monotonic(), row, on_commit))

    def flush(self, timeout: float = 5.0) -> None:
        """Blocks until every row recorded before this call is committed (or its write failed)."""
        if self._thread is None or not self._thread.is_alive():
            if self._closed:
                return  # close() already drained the queue
            raise RuntimeError("LedgerWriter is not running; call start() first")
        marker = _Flush()
        self._queue.put((time.monotonic(), marker, None))
        if not marker.done.wait(timeout):
            raise TimeoutError(f"ledger flush did not finish within {timeout}s")

    def close(self, timeout: float = 10.0) -> None:
        """Commits what is queued, stops the thread and closes the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        self._queue.put((time.monotonic(), _Stop(), None))
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("ledger writer did not stop within %ss; queued rows may be lost", timeout)

    @property
    def lag_seconds(self) -> float:
        """Enqueue-to-commit time of the oldest row in the last committed batch."""
        return self._lag

    @property
    def interrupted_at_start(self) -> int:
        """Rows a previous process left "started" that ``start()`` marked "interrupted"."""
        return self._interrupted

    @property
    def pending(self) -> int:
        """Approximate number of queued items the writer has not taken yet."""
        return self._queue.qsize()

    def __enter__(self) -> LedgerWriter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writer thread ----------------------------------------------------------------------

    def _run(self, opened: threading.Event, failure: list[BaseException]) -> None:
        try:
            db = open_database(self.path)
            self._interrupted = _mark_interrupted(db)
        except BaseException as error:
            failure.append(error)
            opened.set()
            return
        opened.set()
        try:
            while self._drain(db, block=True):
                pass
            # A record() racing close() may have landed behind the stop marker: keep it too.
            self._drain(db, block=False)
        finally:
            db.close()

    def _drain(self, db: Database, *, block: bool) -> bool:
        """Writes one batch; returns False once the stop marker has been seen."""
        batch: list[tuple[float, _Item, OnCommit | None]] = []
        if block:
            batch.append(self._queue.get())
        while len(batch) < self._max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        rows: list[tuple[float, RequestRecord, OnCommit | None]] = []
        running = True
        for enqueued_at, item, on_commit in batch:
            if isinstance(item, RequestRecord):
                rows.append((enqueued_at, item, on_commit))
                continue
            # Markers keep their place in the queue: commit the rows queued before them first.
            self._write(db, rows)
            rows = []
            if isinstance(item, _Flush):
                item.done.set()
            else:
                running = False
        self._write(db, rows)
        return running

    def _write(
        self, db: Database, rows: list[tuple[float, RequestRecord, OnCommit | None]]
    ) -> None:
        if not rows:
            return
        values = [tuple(getattr(row, column) for column in _COLUMNS) for _, row, _ in rows]
        try:
            with db.atomic():
                db.conn.executemany(_UPSERT, values)
        except Exception:
            # One bad row must not cost the whole batch: retry them one by one.
            self._write_one_by_one(db, values)
        self._lag = time.monotonic() - rows[0][0]
        for _, _, on_commit in rows:
            if on_commit is not None:
                try:
                    on_commit()
                except Exception:
                    log.exception("ledger: an on_commit callback failed")

    def _write_one_by_one(self, db: Database, values: list[tuple[Any, ...]]) -> None:
        failed: list[str] = []
        last: Exception | None = None
        for value in values:
            try:
                with db.atomic():
                    db.conn.execute(_UPSERT, value)
            except Exception as error:
                failed.append(str(value[0]))
                last = error
        if failed:
            # Once per batch: a full disk would otherwise log a traceback for every row.
            log.error(
                "ledger: %d of %d rows not written (requests %s)",
                len(failed),
                len(values),
                ", ".join(failed[:5]),
                exc_info=last,
            )


def _mark_interrupted(db: Database) -> int:
    """A row still "started" when the ledger opens belongs to a process that died mid-request
    (only one server writes a ledger). Charged nothing: no complete response was delivered."""
    with db.atomic():
        cursor = db.conn.execute(
            "UPDATE requests SET status = 'interrupted', price = 0 WHERE status = 'started'"
        )
    count = cursor.rowcount
    if count:
        log.warning("ledger: %d request(s) in flight when the last process stopped are now"
                    " marked interrupted", count)
    return count
