"""Stored chat completions in SQL: write, read, list (by model and metadata), update metadata,
delete, and their request messages.

Plain functions of a connection, run in the store's threads inside the transaction it opens.
Metadata is kept twice: whole (JSON, what is read back) and one row per pair in
``completion_metadata`` (what the list's filter looks up; keys and values JSON-encoded there
too, so any text a client sent is a value sqlite can bind). Another owner's or an expired
completion is not found, exactly as one that never existed.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.store import items
from appliance.store.items import COMPLETION_MESSAGES
from appliance.store.records import CursorNotFound, Order, Page, StoredCompletion

_COLUMNS = "seq, id, owner, created_at, model, metadata, body"


def put(conn: sqlite3.Connection, completion: StoredCompletion, expires_at: float) -> None:
    """Inserts; a completion id is stored once (an id already stored: ValueError)."""
    try:
        cursor = conn.execute(
            "INSERT INTO completions (id, owner, created_at, expires_at, model, metadata, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (completion.id, completion.owner, completion.created_at, expires_at,
             completion.model, items.encode(completion.metadata),
             items.encode(completion.body)))
    except sqlite3.IntegrityError:
        raise ValueError(f"completion id {completion.id!r} is already stored") from None
    seq = cursor.lastrowid
    assert seq is not None
    _write_pairs(conn, seq, completion.metadata)
    items.append(conn, COMPLETION_MESSAGES, seq, completion.messages)


def get(conn: sqlite3.Connection, owner: str | None, completion_id: str,
        now: float) -> StoredCompletion | None:
    row = _row(conn, owner, completion_id, now)
    if row is None:
        return None
    return _completion(row, items.all_of(conn, COMPLETION_MESSAGES, row[0]))


def update(conn: sqlite3.Connection, owner: str | None, completion_id: str,
           metadata: dict[str, str], now: float) -> StoredCompletion | None:
    row = _row(conn, owner, completion_id, now)
    if row is None:
        return None
    seq = row[0]
    conn.execute("UPDATE completions SET metadata = ? WHERE seq = ?",
                 (items.encode(metadata), seq))
    conn.execute("DELETE FROM completion_metadata WHERE completion_seq = ?", (seq,))
    _write_pairs(conn, seq, metadata)
    updated = (*row[:5], items.encode(metadata), row[6])
    return _completion(updated, items.all_of(conn, COMPLETION_MESSAGES, seq))


def delete(conn: sqlite3.Connection, owner: str | None, completion_id: str,
           now: float) -> bool:
    row = _row(conn, owner, completion_id, now)
    if row is None:
        return False
    conn.execute("DELETE FROM completions WHERE seq = ?", (row[0],))
    return True


def listed(conn: sqlite3.Connection, owner: str | None, now: float, *, model: str | None,
           metadata: dict[str, str], order: Order, after: str | None, limit: int) -> Page:
    """One page of the owner's completions in creation order; each item the completion's body
    with ``"metadata"`` set to its current metadata."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    where = ["c.owner IS ?", "c.expires_at > ?"]
    params: list[Any] = [owner, now]
    if model is not None:
        where.append("c.model = ?")
        params.append(model)
    for key, value in metadata.items():
        # One indexed lookup per pair; the pairs are bounded by the wire (16 keys).
        where.append("EXISTS (SELECT 1 FROM completion_metadata AS m WHERE"
                     " m.completion_seq = c.seq AND m.key = ? AND m.value = ?)")
        params.extend((items.encode(key), items.encode(value)))
    direction, beyond = ("ASC", ">") if order == "asc" else ("DESC", "<")
    if after is not None:
        where.append(f"c.seq {beyond} ?")
        params.append(_seq_of(conn, owner, after, now))
    rows = conn.execute(
        f"SELECT c.body, c.metadata FROM completions AS c WHERE {' AND '.join(where)}"
        f" ORDER BY c.seq {direction} LIMIT ?", (*params, limit + 1)).fetchall()
    bodies = tuple({**items.decode(body), "metadata": items.decode(pairs)}
                   for body, pairs in rows[:limit])
    return Page(items=bodies, has_more=len(rows) > limit)


def messages(conn: sqlite3.Connection, owner: str | None, completion_id: str, now: float, *,
             order: Order, after: str | None, limit: int) -> Page | None:
    row = _row(conn, owner, completion_id, now)
    if row is None:
        return None
    return items.page(conn, COMPLETION_MESSAGES, row[0], order=order, after=after, limit=limit)


def _seq_of(conn: sqlite3.Connection, owner: str | None, completion_id: str,
            now: float) -> int:
    row = _row(conn, owner, completion_id, now)
    if row is None:
        raise CursorNotFound(f"no stored completion {completion_id!r} to list after")
    return int(row[0])


def _write_pairs(conn: sqlite3.Connection, seq: int, metadata: dict[str, str]) -> None:
    conn.executemany(
        "INSERT INTO completion_metadata (completion_seq, key, value) VALUES (?, ?, ?)",
        [(seq, items.encode(key), items.encode(value)) for key, value in metadata.items()])


def _row(conn: sqlite3.Connection, owner: str | None, completion_id: str,
         now: float) -> tuple[Any, ...] | None:
    if not items.encodable(completion_id):
        return None
    row: tuple[Any, ...] | None = conn.execute(
        f"SELECT {_COLUMNS} FROM completions WHERE id = ? AND owner IS ? AND expires_at > ?",
        (completion_id, owner, now)).fetchone()
    return row


def _completion(row: tuple[Any, ...], stored: list[dict[str, Any]]) -> StoredCompletion:
    _, completion_id, owner, created_at, model, metadata, body = row
    return StoredCompletion(id=completion_id, owner=owner, created_at=created_at, model=model,
                            metadata=items.decode(metadata), messages=tuple(stored),
                            body=items.decode(body))
