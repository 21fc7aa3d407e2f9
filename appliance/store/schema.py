"""The state store's SQLite schema and how its file is opened.

Owns the append-only migration list (sqlite-utils ``Migrations``, set name
``appliance.store``, in the state file's own ``_sqlite_migrations`` table) and the connection
pragmas. Never edit or reorder a migration that has shipped: add a new one at the end of
``_STEPS``; ``tests/fast/test_state_store.py`` pins the resulting tables.

Each parent row (response, conversation, completion) has an integer ``seq`` (its insertion
order, what lists page by) and a text ``id`` (what the wire names). Its items live in a child
table keyed by ``(parent seq, position)``, deleted with the parent by ``ON DELETE CASCADE``.
``expires_at`` is on every parent: reads filter on it, the sweep deletes by it. What each owner
keeps (``stored_bytes`` on every parent, ``owner_usage`` per owner, ``item_count`` on a
conversation) is maintained by m004's triggers, whatever writes or deletes (``usage.py``
reads and checks it).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATION_SET = "appliance.store"

# Hand-written DDL (as the ledger's), so that a migration's result cannot drift with
# sqlite-utils' Python-type-to-SQL mapping between its versions.


def m001_responses(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE responses (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            owner TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            model TEXT NOT NULL,
            previous_response_id TEXT,
            conversation_id TEXT,
            body TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX idx_responses_expires_at ON responses (expires_at)")
    db.execute(
        """
        CREATE TABLE response_input_items (
            response_seq INTEGER NOT NULL REFERENCES responses (seq) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            item TEXT NOT NULL,
            PRIMARY KEY (response_seq, position)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE UNIQUE INDEX idx_response_input_items_id"
               " ON response_input_items (response_seq, item_id)")


def m002_conversations(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE conversations (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            owner TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            metadata TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX idx_conversations_expires_at ON conversations (expires_at)")
    db.execute(
        """
        CREATE TABLE conversation_items (
            conversation_seq INTEGER NOT NULL REFERENCES conversations (seq) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            item TEXT NOT NULL,
            PRIMARY KEY (conversation_seq, position)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE UNIQUE INDEX idx_conversation_items_id"
               " ON conversation_items (conversation_seq, item_id)")


def m003_completions(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE completions (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            owner TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            model TEXT NOT NULL,
            metadata TEXT NOT NULL,
            body TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX idx_completions_expires_at ON completions (expires_at)")
    # The list pages one owner's completions in insertion order, optionally of one model.
    db.execute("CREATE INDEX idx_completions_owner ON completions (owner, seq)")
    db.execute("CREATE INDEX idx_completions_owner_model ON completions (owner, model, seq)")
    # The list's metadata filter is a lookup per pair, not a JSON scan of every row.
    db.execute(
        """
        CREATE TABLE completion_metadata (
            completion_seq INTEGER NOT NULL REFERENCES completions (seq) ON DELETE CASCADE,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (completion_seq, key)
        ) WITHOUT ROWID
        """
    )
    db.execute(
        """
        CREATE TABLE completion_messages (
            completion_seq INTEGER NOT NULL REFERENCES completions (seq) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            item_id TEXT NOT NULL,
            item TEXT NOT NULL,
            PRIMARY KEY (completion_seq, position)
        ) WITHOUT ROWID
        """
    )
    db.execute("CREATE UNIQUE INDEX idx_completion_messages_id"
               " ON completion_messages (completion_seq, item_id)")


# What one stored row counts beyond the bytes of its JSON: its ids, keys and index entries.
# Without it a key could fill the disk with rows of almost nothing (an empty conversation is a
# 2-byte "{}"). Fixed by m004's triggers: a change needs a migration that recreates them.
ROW_BYTES = 128


def _bytes(*columns: str) -> str:
    """The SQL for a row's counted size: ROW_BYTES plus its columns' UTF-8 bytes."""
    return " + ".join([str(ROW_BYTES), *(f"length(CAST({c} AS BLOB))" for c in columns)])


# (parent, its own counted columns, [(child, its parent column, its counted columns)]).
# Constants only: the triggers' SQL is built from these names, never from a caller's text.
_COUNTED = (
    ("responses", ("body",), (("response_input_items", "response_seq", ("item",)),)),
    ("conversations", ("metadata",), (("conversation_items", "conversation_seq", ("item",)),)),
    ("completions", ("metadata", "body"),
     (("completion_messages", "completion_seq", ("item",)),
      ("completion_metadata", "completion_seq", ("key", "value")))),
)


def _add_to_owner(owner: str, amount: str) -> str:
    return (f"INSERT INTO owner_usage (owner, stored_bytes) VALUES (COALESCE({owner}, ''),"
            f" {amount}) ON CONFLICT (owner) DO UPDATE"
            " SET stored_bytes = stored_bytes + excluded.stored_bytes;")


def m004_stored_bytes(db: Database) -> None:
    """What each owner keeps, maintained by triggers rather than summed per write.

    Every parent row gains ``stored_bytes`` (its own row and all of its children's, as
    ``_bytes`` counts them) and a conversation ``item_count``; ``owner_usage`` holds the sum of
    ``stored_bytes`` per owner (``''`` for the keyless owner). The triggers keep both true
    whatever writes (an insert, a rewrite, a delete, the cascade from a parent's delete, the
    sweep), so the quota check is one primary-key read, never a scan. A child deleted by the
    cascade finds its parent already gone (its update is a no-op) and the parent's own delete
    gives back its whole ``stored_bytes``: ``tests/fast/test_state_store.py`` checks the sums
    against a full recount after every kind of write.
    """
    db.execute(
        """
        CREATE TABLE owner_usage (
            owner TEXT PRIMARY KEY NOT NULL,
            stored_bytes INTEGER NOT NULL
        ) WITHOUT ROWID
        """
    )
    for parent, own, children in _COUNTED:
        db.execute(f"ALTER TABLE {parent} ADD COLUMN stored_bytes INTEGER NOT NULL DEFAULT 0")
        # What is already stored, counted once before the triggers exist.
        sums = " + ".join(
            f"COALESCE((SELECT SUM({_bytes(*counted)}) FROM {child}"
            f" WHERE {child}.{column} = {parent}.seq), 0)"
            for child, column, counted in children)
        db.execute(f"UPDATE {parent} SET stored_bytes = {_bytes(*own)} + {sums}")
        db.execute(f"INSERT INTO owner_usage (owner, stored_bytes) SELECT COALESCE(owner, ''),"
                   f" SUM(stored_bytes) FROM {parent} WHERE 1 GROUP BY COALESCE(owner, '')"
                   " ON CONFLICT (owner) DO UPDATE"
                   " SET stored_bytes = stored_bytes + excluded.stored_bytes")
    db.execute("ALTER TABLE conversations ADD COLUMN item_count INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE conversations SET item_count = (SELECT COUNT(*) FROM conversation_items"
               " WHERE conversation_seq = conversations.seq)")
    for parent, own, children in _COUNTED:
        new_own = _bytes(*(f"NEW.{c}" for c in own))
        old_own = _bytes(*(f"OLD.{c}" for c in own))
        db.execute(f"CREATE TRIGGER {parent}_counted_insert AFTER INSERT ON {parent} BEGIN"
                   f" UPDATE {parent} SET stored_bytes = stored_bytes + {new_own}"
                   " WHERE seq = NEW.seq; END")
        db.execute(f"CREATE TRIGGER {parent}_counted_update AFTER UPDATE OF {', '.join(own)}"
                   f" ON {parent} BEGIN UPDATE {parent}"
                   f" SET stored_bytes = stored_bytes + ({new_own}) - ({old_own})"
                   " WHERE seq = NEW.seq; END")
        # Any change of a parent's stored_bytes (or owner) moves the owners' sums with it.
        db.execute(f"CREATE TRIGGER {parent}_owner_update AFTER UPDATE OF stored_bytes, owner"
                   f" ON {parent} BEGIN {_add_to_owner('OLD.owner', '-OLD.stored_bytes')}"
                   f" {_add_to_owner('NEW.owner', 'NEW.stored_bytes')} END")
        db.execute(f"CREATE TRIGGER {parent}_owner_delete AFTER DELETE ON {parent} BEGIN"
                   f" {_add_to_owner('OLD.owner', '-OLD.stored_bytes')} END")
        for child, column, counted in children:
            new_child = _bytes(*(f"NEW.{c}" for c in counted))
            old_child = _bytes(*(f"OLD.{c}" for c in counted))
            counts = child == "conversation_items"
            added = ", item_count = item_count + 1" if counts else ""
            removed = ", item_count = item_count - 1" if counts else ""
            db.execute(f"CREATE TRIGGER {child}_counted_insert AFTER INSERT ON {child} BEGIN"
                       f" UPDATE {parent} SET stored_bytes = stored_bytes + {new_child}{added}"
                       f" WHERE seq = NEW.{column}; END")
            db.execute(f"CREATE TRIGGER {child}_counted_delete AFTER DELETE ON {child} BEGIN"
                       f" UPDATE {parent} SET stored_bytes = stored_bytes - ({old_child})"
                       f"{removed} WHERE seq = OLD.{column}; END")
            # Children are never rewritten today; if one is, the sums still hold.
            db.execute(f"CREATE TRIGGER {child}_counted_rewrite AFTER UPDATE ON {child} BEGIN"
                       f" UPDATE {parent} SET stored_bytes = stored_bytes - ({old_child})"
                       f"{removed} WHERE seq = OLD.{column};"
                       f" UPDATE {parent} SET stored_bytes = stored_bytes + {new_child}{added}"
                       f" WHERE seq = NEW.{column}; END")


# Append only.
_STEPS: tuple[Callable[[Database], None], ...] = (m001_responses, m002_conversations,
                                                  m003_completions, m004_stored_bytes)


def migrations() -> Migrations:
    """A fresh migration set (built per call: sqlite-utils' set is mutable, we keep none global)."""
    steps = Migrations(MIGRATION_SET)
    for step in _STEPS:
        steps(name=step.__name__)(step)
    return steps


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    """One connection to the state file. The writer's creates the file and its folder and
    migrates it; a reader's is read-only. Either may be closed from another thread than the one
    that uses it (``check_same_thread=False``): each is used by one thread only, and closed
    after that thread has stopped."""
    if writer:
        path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        if writer:
            # execute_plugins=False: an installed sqlite-utils plugin must not run code on our
            # connection (DESIGN.md section 5).
            db = Database(conn, execute_plugins=False)
            db.enable_wal()
            migrations().apply(db)
            # FULL, unlike the ledger's NORMAL: a write's return is the client's promise that
            # its conversation is there after a power loss too, and state writes are one per
            # request, not a stream of rows worth group-committing.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        else:
            conn.execute("PRAGMA query_only=ON")
    except BaseException:
        conn.close()
        raise
    return conn
