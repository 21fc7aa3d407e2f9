"""Conversations in SQL: create, read, update metadata, delete, and their items.

Plain functions of a connection, run in the store's threads inside the transaction it opens.
A conversation lives ``retention`` from its last write (``expires_at`` moves on every update
and append): one in use does not vanish a month after it was started. Another owner's or an
expired conversation is not found, exactly as one that never existed. A write that would take
a conversation past ``StoreBounds.max_conversation_items`` raises ``ConversationFull`` inside
its transaction, so nothing of it is kept.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

from appliance.store import items, usage
from appliance.store.items import CONVERSATION_ITEMS
from appliance.store.records import JSON, Conversation, Order, Page, StateTooLarge
from appliance.store.usage import StoreBounds


def new_id() -> str:
    # As long as OpenAI's, and as unguessable: 24 random bytes.
    return "conv_" + secrets.token_hex(24)


def create(conn: sqlite3.Connection, owner: str | None, metadata: dict[str, str],
           initial: list[JSON], now: float, expires_at: float,
           bounds: StoreBounds) -> Conversation:
    conv_id = new_id()
    cursor = conn.execute(
        "INSERT INTO conversations (id, owner, created_at, expires_at, metadata)"
        " VALUES (?, ?, ?, ?, ?)", (conv_id, owner, now, expires_at, items.encode(metadata)))
    assert cursor.lastrowid is not None
    items.append(conn, CONVERSATION_ITEMS, cursor.lastrowid, initial)
    usage.check_items(conn, conv_id, cursor.lastrowid, bounds)
    return Conversation(id=conv_id, owner=owner, created_at=now, metadata=dict(metadata))


def get(conn: sqlite3.Connection, owner: str | None, conv_id: str,
        now: float) -> Conversation | None:
    row = _row(conn, owner, conv_id, now)
    return None if row is None else _conversation(row)


def update(conn: sqlite3.Connection, owner: str | None, conv_id: str,
           metadata: dict[str, str], now: float, expires_at: float) -> Conversation | None:
    row = _row(conn, owner, conv_id, now)
    if row is None:
        return None
    conn.execute("UPDATE conversations SET metadata = ?, expires_at = ? WHERE seq = ?",
                 (items.encode(metadata), expires_at, row[0]))
    return Conversation(id=row[1], owner=row[2], created_at=row[3], metadata=dict(metadata))


def delete(conn: sqlite3.Connection, owner: str | None, conv_id: str, now: float) -> bool:
    row = _row(conn, owner, conv_id, now)
    if row is None:
        return False
    conn.execute("DELETE FROM conversations WHERE seq = ?", (row[0],))
    return True


def append(conn: sqlite3.Connection, owner: str | None, conv_id: str, new_items: list[JSON],
           now: float, expires_at: float, bounds: StoreBounds) -> bool:
    """Appends in order; past ``bounds.max_conversation_items`` raises ``ConversationFull``
    (the transaction rolls back: nothing of the write is kept)."""
    row = _row(conn, owner, conv_id, now)
    if row is None:
        return False
    items.append(conn, CONVERSATION_ITEMS, row[0], new_items)
    usage.check_items(conn, conv_id, row[0], bounds)
    conn.execute("UPDATE conversations SET expires_at = ? WHERE seq = ?", (expires_at, row[0]))
    return True


def all_items(conn: sqlite3.Connection, owner: str | None, conv_id: str, now: float,
              max_items: int) -> list[JSON] | None:
    row = _row(conn, owner, conv_id, now)
    if row is None:
        return None
    found = items.all_of(conn, CONVERSATION_ITEMS, row[0], at_most=max_items)
    if len(found) > max_items:
        raise StateTooLarge(f"The conversation {conv_id!r} has more than {max_items} items, "
                            "the most this server continues in one response.")
    return found


def list_items(conn: sqlite3.Connection, owner: str | None, conv_id: str, now: float, *,
               order: Order, after: str | None, limit: int) -> Page | None:
    row = _row(conn, owner, conv_id, now)
    if row is None:
        return None
    return items.page(conn, CONVERSATION_ITEMS, row[0], order=order, after=after, limit=limit)


def get_item(conn: sqlite3.Connection, owner: str | None, conv_id: str, item_id: str,
             now: float) -> JSON | None:
    row = _row(conn, owner, conv_id, now)
    if row is None:
        return None
    return items.get(conn, CONVERSATION_ITEMS, row[0], item_id)


def delete_item(conn: sqlite3.Connection, owner: str | None, conv_id: str, item_id: str,
                now: float, expires_at: float) -> bool:
    row = _row(conn, owner, conv_id, now)
    if row is None or not items.delete(conn, CONVERSATION_ITEMS, row[0], item_id):
        return False
    conn.execute("UPDATE conversations SET expires_at = ? WHERE seq = ?", (expires_at, row[0]))
    return True


def _row(conn: sqlite3.Connection, owner: str | None, conv_id: str,
         now: float) -> tuple[Any, ...] | None:
    if not items.encodable(conv_id):
        return None
    row: tuple[Any, ...] | None = conn.execute(
        "SELECT seq, id, owner, created_at, metadata FROM conversations"
        " WHERE id = ? AND owner IS ? AND expires_at > ?", (conv_id, owner, now)).fetchone()
    return row


def _conversation(row: tuple[Any, ...]) -> Conversation:
    _, conv_id, owner, created_at, metadata = row
    return Conversation(id=conv_id, owner=owner, created_at=created_at,
                        metadata=items.decode(metadata))
