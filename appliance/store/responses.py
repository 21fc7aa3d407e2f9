"""Stored responses in SQL: write, read, delete, list input items, walk a chain.

Plain functions of a connection, run in the store's threads (``threads.py``) inside the
transaction it opens. Every read takes the owner and the current time: a response that is
another owner's or past its ``expires_at`` is not found, exactly as one that never existed.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.store import items
from appliance.store.items import RESPONSE_INPUT_ITEMS
from appliance.store.records import Order, Page, StateTooLarge, StoredResponse

_COLUMNS = "seq, id, owner, created_at, model, previous_response_id, conversation_id, body"


def put(conn: sqlite3.Connection, response: StoredResponse, expires_at: float) -> bool:
    """Inserts, or rewrites the response of that id; True when it was new."""
    held = conn.execute("SELECT seq, owner FROM responses WHERE id = ?",
                        (response.id,)).fetchone()
    if held is not None and held[1] != response.owner:
        # Ids are the server's own random ones, so this is a caller's bug, not a client's.
        raise ValueError(f"response id {response.id!r} belongs to another owner")
    values = (response.owner, response.created_at, expires_at, response.model,
              response.previous_response_id, response.conversation_id,
              items.encode(response.body))
    if held is None:
        cursor = conn.execute(
            "INSERT INTO responses (owner, created_at, expires_at, model, previous_response_id,"
            " conversation_id, body, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, response.id))
        seq = cursor.lastrowid
        assert seq is not None
    else:
        # Same row, same seq: a background response rewritten as it finishes keeps its place.
        seq = int(held[0])
        conn.execute(
            "UPDATE responses SET owner = ?, created_at = ?, expires_at = ?, model = ?,"
            " previous_response_id = ?, conversation_id = ?, body = ? WHERE seq = ?",
            (*values, seq))
    items.replace_all(conn, RESPONSE_INPUT_ITEMS, seq, response.input_items)
    return held is None


def get(conn: sqlite3.Connection, owner: str | None, response_id: str,
        now: float) -> StoredResponse | None:
    row = _row(conn, owner, response_id, now)
    if row is None:
        return None
    return _response(row, items.all_of(conn, RESPONSE_INPUT_ITEMS, row[0]))


def delete(conn: sqlite3.Connection, owner: str | None, response_id: str, now: float) -> bool:
    row = _row(conn, owner, response_id, now)
    if row is None:
        return False
    conn.execute("DELETE FROM responses WHERE seq = ?", (row[0],))
    return True


def input_items(conn: sqlite3.Connection, owner: str | None, response_id: str, now: float, *,
                order: Order, after: str | None, limit: int) -> Page | None:
    row = _row(conn, owner, response_id, now)
    if row is None:
        return None
    return items.page(conn, RESPONSE_INPUT_ITEMS, row[0], order=order, after=after, limit=limit)


def chain(conn: sqlite3.Connection, owner: str | None, response_id: str, now: float,
          max_turns: int) -> list[StoredResponse] | None:
    """The response and its ancestors, oldest first (see ``ResponseStore.chain``)."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be at least 1, got {max_turns}")
    if not items.encodable(response_id):
        return None
    # One recursive query, stopped one link past the bound (so "too long" is known without
    # walking the rest) and by the owner and expiry of every link. The depth bound also ends
    # a cycle, which ids made here cannot form but a rewritten row could.
    links = conn.execute(
        """
        WITH RECURSIVE link (seq, previous, depth) AS (
            SELECT seq, previous_response_id, 1 FROM responses
            WHERE id = ? AND owner IS ? AND expires_at > ?
            UNION ALL
            SELECT r.seq, r.previous_response_id, link.depth + 1
            FROM responses AS r JOIN link ON r.id = link.previous
            WHERE link.depth <= ? AND r.owner IS ? AND r.expires_at > ?
        )
        SELECT seq, previous, depth FROM link ORDER BY depth
        """,
        (response_id, owner, now, max_turns, owner, now)).fetchall()
    if not links:
        return None
    if len(links) > max_turns:
        raise StateTooLarge(f"The chain of previous responses ending at {response_id!r} is "
                            f"longer than {max_turns} turns, the most this server continues.")
    if links[-1][1] is not None:
        return None  # the oldest link found points at a response that is gone or not theirs
    seqs = [seq for seq, _, _ in reversed(links)]
    marks = ", ".join("?" for _ in seqs)
    rows = {row[0]: row for row in conn.execute(
        f"SELECT {_COLUMNS} FROM responses WHERE seq IN ({marks})", seqs)}
    inputs = items.of_parents(conn, RESPONSE_INPUT_ITEMS, seqs)
    return [_response(rows[seq], inputs[seq]) for seq in seqs]


def _row(conn: sqlite3.Connection, owner: str | None, response_id: str,
         now: float) -> tuple[Any, ...] | None:
    if not items.encodable(response_id):
        return None
    row: tuple[Any, ...] | None = conn.execute(
        f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND owner IS ? AND expires_at > ?",
        (response_id, owner, now)).fetchone()
    return row


def _response(row: tuple[Any, ...], input_items: list[dict[str, Any]]) -> StoredResponse:
    _, response_id, owner, created_at, model, previous, conversation, body = row
    return StoredResponse(id=response_id, owner=owner, created_at=created_at, model=model,
                          previous_response_id=previous, conversation_id=conversation,
                          input_items=tuple(input_items), body=items.decode(body))
