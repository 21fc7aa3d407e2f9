"""The retention sweep: deleting what expired, a bounded batch per transaction.

Expired state is already invisible (every read filters on ``expires_at``); the sweep only
gives the space back. It deletes parents (their items go by ``ON DELETE CASCADE``) at most
``batch`` at a time, so one sweep over a large backlog is many short write transactions
between which requests' writes get their turn, not one long one that holds them all up.
"""

from __future__ import annotations

import sqlite3

PARENT_TABLES = ("responses", "conversations", "completions")


def sweep_batch(conn: sqlite3.Connection, now: float, batch: int) -> int:
    """Deletes up to ``batch`` expired parents of each table; returns how many went."""
    removed = 0
    for table in PARENT_TABLES:
        cursor = conn.execute(
            f"DELETE FROM {table} WHERE seq IN"
            f" (SELECT seq FROM {table} WHERE expires_at <= ? LIMIT ?)", (now, batch))
        removed += cursor.rowcount
    return removed
