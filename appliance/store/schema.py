"""The state store's SQLite schema and how its file is opened.

Owns the append-only migration list (sqlite-utils ``Migrations``, set name
``appliance.store``, in the state file's own ``_sqlite_migrations`` table) and the connection
pragmas. Never edit or reorder a migration that has shipped: add a new one at the end of
``_STEPS``; ``tests/fast/test_state_store.py`` pins the resulting tables.

Each parent row (response, conversation, completion) has an integer ``seq`` (its insertion
order, what lists page by) and a text ``id`` (what the wire names). Its items live in a child
table keyed by ``(parent seq, position)``, deleted with the parent by ``ON DELETE CASCADE``.
``expires_at`` is on every parent: reads filter on it, the sweep deletes by it.
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


# Append only.
_STEPS: tuple[Callable[[Database], None], ...] = (m001_responses, m002_conversations,
                                                  m003_completions)


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
