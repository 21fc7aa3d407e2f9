"""What one owner may keep: the store's bounds (``StoreBounds``), how stored state is measured,
and the checks a growing write passes before it commits.

Two bounds, both checked inside the write's own transaction after its rows are in (so a
refused write leaves nothing behind, and two writes of one owner cannot both slip under the
bound), and both readable before a request does any work (``room``):

- ``max_owner_bytes``: the sum of one owner's stored rows, each its JSON's bytes plus
  ``schema.ROW_BYTES``. The sum is ``owner_usage.stored_bytes``, kept by the triggers of
  ``schema.m004_stored_bytes`` (one primary-key read per check, no scan). Deletes and the
  retention sweep give the bytes back; expired state counts until the sweep removes it.
  Past it: ``StorageQuotaExceeded``, OpenAI's permanent 429 (``insufficient_quota``, code
  ``storage_quota_exceeded``): the request is valid, the key has used its room, and a retry
  cannot help until it deletes state or the state expires.
- ``max_conversation_items``: items in one conversation (``conversations.item_count``, kept by
  the same triggers). Past it: ``ConversationFull``, a 400.

A write that shrinks or keeps an owner's state (a delete, smaller metadata) is never refused,
even by an owner already over its quota (after the bound was lowered, say).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from appliance.store.items import encode
from appliance.store.records import JSON, ConversationFull, StorageQuotaExceeded
from appliance.store.schema import ROW_BYTES

MIB = 1024 * 1024


@dataclass(frozen=True)
class StoreBounds:
    max_owner_bytes: int = 256 * MIB  # [server] max_stored_mb_per_key
    max_conversation_items: int = 10_000  # [server] max_conversation_items

    def __post_init__(self) -> None:
        if self.max_owner_bytes < 1 or self.max_conversation_items < 1:
            raise ValueError(f"store bounds must be at least 1: {self}")


def stored_size(rows: list[JSON] | tuple[JSON, ...]) -> int:
    """What ``rows`` (items or messages about to be stored) will count, as the triggers count
    them: for a route to ask ``room`` before any work. The JSON is the store's own encoding."""
    return sum(ROW_BYTES + len(encode(row).encode()) for row in rows)


def owner_bytes(conn: sqlite3.Connection, owner: str | None) -> int:
    row = conn.execute("SELECT stored_bytes FROM owner_usage WHERE owner = ?",
                       (_owner_key(owner),)).fetchone()
    return 0 if row is None else int(row[0])


def check_quota(conn: sqlite3.Connection, owner: str | None, before: int,
                bounds: StoreBounds) -> None:
    """After a write's rows are in: refuses it (the caller's transaction rolls back) when it
    grew the owner's state past the bound. ``before``: ``owner_bytes`` when it began."""
    after = owner_bytes(conn, owner)
    if after > before and after > bounds.max_owner_bytes:
        raise quota_exceeded(after, bounds)


def check_items(conn: sqlite3.Connection, conv_id: str, conv_seq: int,
                bounds: StoreBounds) -> None:
    """After items were added to a conversation: refuses the write past the bound."""
    (count,) = conn.execute("SELECT item_count FROM conversations WHERE seq = ?",
                            (conv_seq,)).fetchone()
    if count > bounds.max_conversation_items:
        raise conversation_full(conv_id, int(count), bounds)


def room(conn: sqlite3.Connection, owner: str | None, bounds: StoreBounds, *,
         more_bytes: int, conversation_id: str | None, more_items: int) -> None:
    """Whether ``more_bytes`` (and ``more_items`` in ``conversation_id``) would still fit: the
    check a route makes before the engine runs. An unknown conversation passes (the write
    finds it missing and says so)."""
    used = owner_bytes(conn, owner)
    if more_bytes > 0 and used + more_bytes > bounds.max_owner_bytes:
        raise quota_exceeded(used + more_bytes, bounds)
    if conversation_id is None or more_items < 1:
        return
    row = conn.execute("SELECT item_count FROM conversations WHERE id = ? AND owner IS ?",
                       (conversation_id, owner)).fetchone()
    if row is not None and int(row[0]) + more_items > bounds.max_conversation_items:
        raise conversation_full(conversation_id, int(row[0]) + more_items, bounds)


def quota_exceeded(would_be: int, bounds: StoreBounds) -> StorageQuotaExceeded:
    return StorageQuotaExceeded(
        f"Storage quota exceeded: this key's stored responses, conversations and stored chat "
        f"completions would take {would_be:,} bytes; this server keeps at most "
        f"{bounds.max_owner_bytes:,} bytes per key (max_stored_mb_per_key). Delete stored "
        "state, or wait for it to expire, to make room; nothing of this write was kept.")


def conversation_full(conv_id: str, would_be: int, bounds: StoreBounds) -> ConversationFull:
    return ConversationFull(
        f"The conversation {conv_id[:128]!r} would have {would_be:,} items; this server keeps "
        f"at most {bounds.max_conversation_items:,} in one conversation "
        "(max_conversation_items). Nothing of this write was kept.")


def _owner_key(owner: str | None) -> str:
    # The triggers file the keyless owner under '' (a primary key cannot be NULL).
    return "" if owner is None else owner
