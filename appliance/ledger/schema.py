"""The ledger's SQLite schema and how a database file is opened.

Owns the append-only migration list (sqlite-utils ``Migrations``, recorded in its
``_sqlite_migrations`` table under the set name ``appliance.ledger``) and ``open_database``, the
one place that sets the connection pragmas. Never edit or reorder a migration that has shipped:
add a new one at the end of ``_STEPS``; ``tests/fast/test_ledger.py`` pins the resulting schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATION_SET = "appliance.ledger"

# Migrations are hand-written DDL rather than ``table.create({...: float})`` so that what a
# migration produces cannot drift with sqlite-utils' Python-type-to-SQL mapping between versions.


def m001_requests(db: Database) -> None:
    # No CHECK on status: a later issue adds a "started" row that is overwritten by the final
    # one, and SQLite cannot alter a CHECK without rebuilding the table. RequestStatus types it.
    db.execute(
        """
        CREATE TABLE requests (
            request_id TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            endpoint TEXT NOT NULL,
            method TEXT NOT NULL,
            key_id TEXT,
            model TEXT,
            status TEXT NOT NULL,
            http_status INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            latency_ms REAL NOT NULL DEFAULT 0,
            ttft_ms REAL,
            price REAL NOT NULL DEFAULT 0,
            currency TEXT NOT NULL DEFAULT 'USD',
            error_code TEXT,
            stream INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    db.execute("CREATE INDEX idx_requests_started_at ON requests (started_at)")
    db.execute("CREATE INDEX idx_requests_key_id ON requests (key_id)")
    db.execute("CREATE INDEX idx_requests_model ON requests (model)")


def m002_api_keys(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            secret_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            revoked_at REAL
        )
        """
    )
    # A revoked key's name may be reused; two live keys may not share one. The index makes that
    # hold even when `appliance keys create` runs beside a serving process.
    db.execute(
        "CREATE UNIQUE INDEX idx_api_keys_active_name ON api_keys (name) WHERE revoked_at IS NULL"
    )


def m003_media_units(db: Database) -> None:
    # What a speech or image request consumed, beside the token counts of text requests.
    db.execute("ALTER TABLE requests ADD COLUMN audio_seconds REAL NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE requests ADD COLUMN images INTEGER NOT NULL DEFAULT 0")


def m004_key_limits(db: Database) -> None:
    # Per-key limits (issue 7). NULL means "no limit"; `models` is a JSON array of canonical
    # model ids (NULL: every model). Admin keys manage keys and read usage, nothing else.
    for column in (
        "admin INTEGER NOT NULL DEFAULT 0",
        "models TEXT",
        "rpm INTEGER",
        "max_concurrent INTEGER",
        "monthly_requests INTEGER",
        "monthly_budget REAL",
        "expires_at REAL",
    ):
        db.execute(f"ALTER TABLE api_keys ADD COLUMN {column}")


def m005_request_lookups(db: Database) -> None:
    # The start-up sweep finds rows a dead process left "started" without scanning the table;
    # quota seeding sums one key's month.
    db.execute(
        "CREATE INDEX idx_requests_in_flight ON requests (status) WHERE status = 'started'"
    )
    db.execute("CREATE INDEX idx_requests_key_started ON requests (key_id, started_at)")



def m006_request_kind(db: Database) -> None:
    # The kind of model a request's route serves, so that usage reports select rows by kind
    # rather than by lists of paths. Rows written before this migration get theirs from the
    # paths that served each kind then (the only place those paths are still spelled).
    db.execute("ALTER TABLE requests ADD COLUMN kind TEXT")
    db.execute(
        """
        UPDATE requests SET kind = CASE
            WHEN endpoint IN ('/v1/chat/completions', '/v1/completions') THEN 'chat'
            WHEN endpoint = '/v1/embeddings' THEN 'embedding'
            WHEN endpoint IN ('/v1/audio/transcriptions', '/v1/audio/translations')
                THEN 'transcription'
            WHEN endpoint IN ('/v1/images/generations', '/v1/images/edits',
                              '/v1/images/variations') THEN 'image'
        END
        """
    )
    db.execute("CREATE INDEX idx_requests_kind_started ON requests (kind, started_at)")


def m007_speech_characters(db: Database) -> None:
    # Speech requests are billed by OpenAI per input character: the row keeps how many.
    db.execute("ALTER TABLE requests ADD COLUMN characters INTEGER NOT NULL DEFAULT 0")


# Append only.
_STEPS: tuple[Callable[[Database], None], ...] = (m001_requests, m002_api_keys,
                                                  m003_media_units, m004_key_limits,
                                                  m005_request_lookups, m006_request_kind,
                                                  m007_speech_characters)


def migrations() -> Migrations:
    """A fresh migration set (built per call: sqlite-utils' set is mutable, we keep none global)."""
    steps = Migrations(MIGRATION_SET)
    for step in _STEPS:
        steps(name=step.__name__)(step)
    return steps


def open_database(path: Path, *, check_same_thread: bool = True) -> Database:
    """Opens (creating it and its folder if needed) and migrates the SQLite file at ``path``.

    The connection belongs to the calling thread unless ``check_same_thread=False``, in which
    case the caller must serialise every use of it (KeyStore holds a lock).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), check_same_thread=check_same_thread)
    try:
        # execute_plugins=False: an installed sqlite-utils plugin must not run code on our
        # connection (DESIGN.md section 5).
        db = Database(conn, execute_plugins=False)
        # busy_timeout first, so that switching to WAL waits for another process's lock.
        db.execute("PRAGMA busy_timeout=5000")
        db.enable_wal()
        # NORMAL is durable across application crashes in WAL mode; only an OS crash or power
        # loss may drop the last transactions (https://sqlite.org/pragma.html#pragma_synchronous).
        db.execute("PRAGMA synchronous=NORMAL")
        migrations().apply(db)
    except BaseException:
        conn.close()
        raise
    return db
