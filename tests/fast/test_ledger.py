"""The ledger: schema pinned against an explicit expectation, the writer thread, keys, usage."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from contextlib import closing
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from appliance.ledger import (
    MIGRATION_SET,
    KeyStore,
    LedgerWriter,
    RequestRecord,
    open_database,
    usage_totals,
)

# (name, type, notnull, default, pk) per column, as PRAGMA table_info reports them. A change
# here means a new migration, never an edit to a shipped one.
EXPECTED_REQUESTS = [
    ("request_id", "TEXT", 0, None, 1),
    ("started_at", "REAL", 1, None, 0),
    ("endpoint", "TEXT", 1, None, 0),
    ("method", "TEXT", 1, None, 0),
    ("key_id", "TEXT", 0, None, 0),
    ("model", "TEXT", 0, None, 0),
    ("status", "TEXT", 1, None, 0),
    ("http_status", "INTEGER", 1, None, 0),
    ("prompt_tokens", "INTEGER", 1, "0", 0),
    ("completion_tokens", "INTEGER", 1, "0", 0),
    ("cached_tokens", "INTEGER", 1, "0", 0),
    ("latency_ms", "REAL", 1, "0", 0),
    ("ttft_ms", "REAL", 0, None, 0),
    ("price", "REAL", 1, "0", 0),
    ("currency", "TEXT", 1, "'USD'", 0),
    ("error_code", "TEXT", 0, None, 0),
    ("stream", "INTEGER", 1, "0", 0),
    ("audio_seconds", "REAL", 1, "0", 0),
    ("images", "INTEGER", 1, "0", 0),
]
EXPECTED_API_KEYS = [
    ("id", "TEXT", 0, None, 1),
    ("name", "TEXT", 1, None, 0),
    ("prefix", "TEXT", 1, None, 0),
    ("secret_hash", "TEXT", 1, None, 0),
    ("created_at", "REAL", 1, None, 0),
    ("revoked_at", "REAL", 0, None, 0),
]
# (index name, unique, columns)
EXPECTED_INDEXES = {
    "requests": {
        ("idx_requests_started_at", 0, ("started_at",)),
        ("idx_requests_key_id", 0, ("key_id",)),
        ("idx_requests_model", 0, ("model",)),
        ("sqlite_autoindex_requests_1", 1, ("request_id",)),
    },
    "api_keys": {
        ("idx_api_keys_active_name", 1, ("name",)),
        ("sqlite_autoindex_api_keys_1", 1, ("id",)),
        ("sqlite_autoindex_api_keys_2", 1, ("secret_hash",)),
    },
}
EXPECTED_MIGRATIONS = ["m001_requests", "m002_api_keys", "m003_media_units"]


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return [row[1:] for row in conn.execute(f"PRAGMA table_info({table})")]


def _indexes(conn: sqlite3.Connection, table: str) -> set[tuple[object, ...]]:
    found: set[tuple[object, ...]] = set()
    for _, name, unique, *_ in conn.execute(f"PRAGMA index_list({table})"):
        cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
        found.add((name, unique, cols))
    return found


def _row(request_id: str, **overrides: object) -> RequestRecord:
    base = RequestRecord(
        request_id=request_id,
        started_at=1000.0,
        endpoint="/v1/chat/completions",
        method="POST",
        key_id="key_a",
        model="m1",
        status="ok",
        http_status=200,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def _read(path: Path) -> dict[str, tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return {r[0]: r for r in conn.execute("SELECT * FROM requests")}


def test_migrated_schema_matches_expected(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.sqlite"
    open_database(path).close()
    open_database(path).close()  # a second open applies nothing twice
    with closing(sqlite3.connect(path)) as conn:
        assert _columns(conn, "requests") == EXPECTED_REQUESTS
        assert _columns(conn, "api_keys") == EXPECTED_API_KEYS
        for table, expected in EXPECTED_INDEXES.items():
            assert _indexes(conn, table) == expected
        applied = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
            [MIGRATION_SET],
        ).fetchall()
        assert [name for (name,) in applied] == EXPECTED_MIGRATIONS
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # The writer maps dataclass fields to columns by name: they must stay the same list.
    assert [f.name for f in fields(RequestRecord)] == [c[0] for c in EXPECTED_REQUESTS]


def test_writer_collects_rows_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with LedgerWriter(path) as writer:

        def produce(worker: int) -> None:
            for i in range(200):
                writer.record(_row(f"req-{worker}-{i}", stream=i % 2 == 0, ttft_ms=1.5))

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        writer.flush()
        rows = _read(path)
        assert len(rows) == 1600
        stream = [c[0] for c in EXPECTED_REQUESTS].index("stream")
        assert rows["req-3-4"][stream] == 1 and rows["req-3-5"][stream] == 0  # stored as 0/1
        assert writer.lag_seconds >= 0.0


def test_record_with_existing_id_updates_row(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with LedgerWriter(path) as writer:
        writer.record(_row("r1", status="cancelled", http_status=499))
        writer.flush()
        writer.record(_row("r1", completion_tokens=7, price=0.25))
        writer.flush()
        rows = _read(path)
    assert len(rows) == 1
    record = RequestRecord(*rows["r1"])
    assert (record.status, record.http_status) == ("ok", 200)
    assert (record.completion_tokens, record.price) == (7, 0.25)


def test_close_flushes_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    writer = LedgerWriter(path)
    writer.start()
    for i in range(50):
        writer.record(_row(f"r{i}"))
    writer.close()
    writer.close()
    writer.record(_row("late"))  # dropped with a log line, never raises
    assert set(_read(path)) == {f"r{i}" for i in range(50)}


def test_writer_survives_a_bad_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ledger.sqlite"
    caplog.set_level(logging.ERROR, logger="appliance.ledger")
    with LedgerWriter(path) as writer:
        writer.record(_row("good-1"))
        writer.record(_row("bad", endpoint=None))  # NOT NULL violation
        writer.record(_row("good-2"))
        writer.flush()
        writer.record(_row("good-3"))
        writer.flush()
    assert set(_read(path)) == {"good-1", "good-2", "good-3"}
    assert "1 of 3 rows not written (requests bad)" in caplog.text


def test_start_raises_when_the_database_cannot_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        LedgerWriter(blocker / "ledger.sqlite").start()


def test_key_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    with KeyStore(path) as keys:
        record, secret = keys.create("alice")
        assert secret.startswith("sk-app-") and record.id.startswith("key_")
        assert len(record.id) == len("key_") + 12 and secret.startswith(record.prefix)
        assert keys.lookup(secret) == record
        assert keys.lookup(secret + "x") is None
        assert keys.lookup("sk-app-nope") is None
        with pytest.raises(ValueError):
            keys.create("alice")
        with pytest.raises(ValueError):
            keys.create("  ")
        other, _ = keys.create("bob")
        assert keys.count_active() == 2
        assert [k.name for k in keys.list()] == ["alice", "bob"]
        with pytest.raises(KeyError):
            keys.revoke("nobody")
        revoked = keys.revoke("alice")
        assert revoked.id == record.id and revoked.revoked_at is not None
        assert keys.lookup(secret) is None
        assert keys.count_active() == 1
        assert keys.revoke(other.prefix).id == other.id
        with pytest.raises(KeyError):
            keys.revoke(other.id)  # already revoked
        again, _ = keys.create("alice")  # a revoked key's name may be reused
        assert again.id != record.id
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret.encode() not in data
    assert secret[len(record.prefix) :].encode() not in data
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in data


def test_key_lookup_from_several_threads(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "keys.sqlite") as keys:
        record, secret = keys.create("shared")
        found: list[object] = []
        threads = [
            threading.Thread(target=lambda: found.append(keys.lookup(secret))) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert found == [record] * 8


def test_usage_totals_group_and_sum(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with LedgerWriter(path) as writer:
        for row in [
            _row("1", prompt_tokens=10, completion_tokens=5, price=0.5),
            _row("2", prompt_tokens=20, completion_tokens=1, price=0.25),
            _row("3", status="error", http_status=400),
            _row("4", status="cancelled", http_status=499, completion_tokens=2, price=0.125),
            _row("5", model="m2", price=1.0),
            _row("6", key_id="key_b", price=2.0),
            _row("7", key_id=None, model=None, status="error", http_status=401),
            _row("8", started_at=5000.0, price=100.0),  # outside the window below
        ]:
            writer.record(row)
    totals = usage_totals(path, since=0.0, until=5000.0, key_names={"key_a": "alice"})
    summary = [
        (
            t.key_id,
            t.key_name,
            t.model,
            t.requests,
            t.ok,
            t.errors,
            t.cancelled,
            t.prompt_tokens,
            t.completion_tokens,
            t.cost,
            t.currency,
        )
        for t in totals
    ]
    assert summary == [
        ("key_a", "alice", "m1", 4, 2, 1, 1, 30, 8, 0.875, "USD"),
        ("key_a", "alice", "m2", 1, 1, 0, 0, 0, 0, 1.0, "USD"),
        ("key_b", None, "m1", 1, 1, 0, 0, 0, 0, 2.0, "USD"),
        (None, None, None, 1, 0, 1, 0, 0, 0, 0.0, "USD"),
    ]
    everything = usage_totals(path)
    assert sum(t.requests for t in everything) == 8
    assert sum(t.cost for t in everything) == pytest.approx(103.875)
    with pytest.raises(FileNotFoundError):
        usage_totals(tmp_path / "missing.sqlite")
