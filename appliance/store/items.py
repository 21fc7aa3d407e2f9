"""The ordered items under a parent row: a response's input items, a conversation's items, a
stored completion's messages. One shape of child table (``schema.py``), three tables.

Owns how items are encoded (compact JSON, ASCII-escaped so that a lone surrogate a client sent
inside a JSON string is stored, not refused by sqlite), appended (positions after the last, ids
unique per parent), read whole, and paged by item id (keyset pagination: a page costs its own
size whatever the list's length). Runs in the store's threads, on the connection handed in.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.store.records import JSON, CursorNotFound, DuplicateItemId, Order, Page


@dataclass(frozen=True)
class ChildTable:
    """A child table's name and the name of its parent column. Only the three constants below
    exist: SQL is built from these names, never from a caller's text."""

    name: str
    parent: str


# A page ends early (``has_more`` true) once its items' stored JSON passes this, after one
# item at least: 100 items of 1 M emoji each (12 bytes each, escaped) made a 264 MB body,
# 830 MB of the server's memory and 1.4 s of its event loop for one GET.
PAGE_BYTES = 16 * 1024 * 1024

RESPONSE_INPUT_ITEMS = ChildTable("response_input_items", "response_seq")
CONVERSATION_ITEMS = ChildTable("conversation_items", "conversation_seq")
COMPLETION_MESSAGES = ChildTable("completion_messages", "completion_seq")


def encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def decode(text: str) -> Any:
    return json.loads(text)


def encodable(text: str) -> bool:
    """Whether sqlite can take ``text`` as a bound value (a lone surrogate cannot be UTF-8).
    An id that cannot be stored names nothing stored: lookups treat it as unknown."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def item_ids(items: Sequence[JSON]) -> list[str]:
    """Each item's id, checked: a string, storable, not repeated within ``items``."""
    ids: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id or not encodable(item_id):
            raise ValueError(f"item {index} has no usable string \"id\" (the store pages by it)")
        if item_id in seen:
            raise DuplicateItemId(f"item id {item_id!r} appears twice in one write")
        seen.add(item_id)
        ids.append(item_id)
    return ids


def append(conn: sqlite3.Connection, table: ChildTable, parent_seq: int,
           items: Sequence[JSON]) -> None:
    """Appends after the parent's last item, in order. Inside the caller's transaction, so a
    duplicate id (``DuplicateItemId``) leaves nothing of this write behind."""
    ids = item_ids(items)
    if not ids:
        return
    (last,) = conn.execute(
        f"SELECT COALESCE(MAX(position), 0) FROM {table.name} WHERE {table.parent} = ?",
        (parent_seq,)).fetchone()
    rows = [(parent_seq, last + offset, item_id, encode(item))
            for offset, (item_id, item) in enumerate(zip(ids, items, strict=True), start=1)]
    try:
        conn.executemany(
            f"INSERT INTO {table.name} ({table.parent}, position, item_id, item)"
            " VALUES (?, ?, ?, ?)", rows)
    except sqlite3.IntegrityError:
        raise DuplicateItemId("an item id is already used in this list") from None


def replace_all(conn: sqlite3.Connection, table: ChildTable, parent_seq: int,
                items: Sequence[JSON]) -> None:
    conn.execute(f"DELETE FROM {table.name} WHERE {table.parent} = ?", (parent_seq,))
    append(conn, table, parent_seq, items)


def all_of(conn: sqlite3.Connection, table: ChildTable, parent_seq: int, *,
           at_most: int | None = None) -> list[JSON]:
    """Every item in order; with ``at_most``, no more than ``at_most + 1`` (one more says the
    list is over the bound, without reading all of a list that may be very long)."""
    limit = -1 if at_most is None else at_most + 1  # sqlite: a negative LIMIT is none
    rows = conn.execute(
        f"SELECT item FROM {table.name} WHERE {table.parent} = ? ORDER BY position LIMIT ?",
        (parent_seq, limit))
    return [decode(item) for (item,) in rows]


def of_parents(conn: sqlite3.Connection, table: ChildTable,
               parent_seqs: Iterable[int]) -> dict[int, list[JSON]]:
    """The items of several parents in one query (a chain's turns), each list in order."""
    seqs = list(parent_seqs)
    found: dict[int, list[JSON]] = {seq: [] for seq in seqs}
    if not seqs:
        return found
    marks = ", ".join("?" for _ in seqs)
    rows = conn.execute(
        f"SELECT {table.parent}, item FROM {table.name} WHERE {table.parent} IN ({marks})"
        f" ORDER BY {table.parent}, position", seqs)
    for parent_seq, item in rows:
        found[parent_seq].append(decode(item))
    return found


def get(conn: sqlite3.Connection, table: ChildTable, parent_seq: int,
        item_id: str) -> JSON | None:
    if not encodable(item_id):
        return None
    row = conn.execute(
        f"SELECT item FROM {table.name} WHERE {table.parent} = ? AND item_id = ?",
        (parent_seq, item_id)).fetchone()
    return None if row is None else dict(decode(row[0]))


def delete(conn: sqlite3.Connection, table: ChildTable, parent_seq: int, item_id: str) -> bool:
    if not encodable(item_id):
        return False
    cursor = conn.execute(f"DELETE FROM {table.name} WHERE {table.parent} = ? AND item_id = ?",
                          (parent_seq, item_id))
    return cursor.rowcount > 0


def page(conn: sqlite3.Connection, table: ChildTable, parent_seq: int, *, order: Order,
         after: str | None, limit: int, max_bytes: int = PAGE_BYTES) -> Page:
    """Up to ``limit`` items after the item ``after`` (in ``order``), and whether more follow;
    fewer once they hold ``max_bytes`` of stored JSON (the client's next page, ``after`` the
    last of these, has the rest)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    direction, beyond = ("ASC", ">") if order == "asc" else ("DESC", "<")
    where = f"{table.parent} = ?"
    params: list[Any] = [parent_seq]
    if after is not None:
        position = _position(conn, table, parent_seq, after)
        where += f" AND position {beyond} ?"
        params.append(position)
    # One more than asked: its presence is `has_more`, without a COUNT over the rest. Rows are
    # read one at a time, so a page past max_bytes stops reading where it stops.
    rows = conn.execute(
        f"SELECT item FROM {table.name} WHERE {where} ORDER BY position {direction} LIMIT ?",
        (*params, limit + 1))
    texts: list[str] = []
    held, has_more = 0, False
    for (text,) in rows:
        if len(texts) == limit or (texts and held + len(text) > max_bytes):
            has_more = True
            break
        texts.append(text)
        held += len(text)
    rows.close()
    return Page(items=tuple(decode(item) for item in texts), has_more=has_more)


def _position(conn: sqlite3.Connection, table: ChildTable, parent_seq: int,
              item_id: str) -> int:
    row = None
    if encodable(item_id):
        row = conn.execute(
            f"SELECT position FROM {table.name} WHERE {table.parent} = ? AND item_id = ?",
            (parent_seq, item_id)).fetchone()
    if row is None:
        raise CursorNotFound(f"no item {item_id!r} in this list")
    return int(row[0])
