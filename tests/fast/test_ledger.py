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
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from appliance.ledger import (
    MIGRATION_SET,
    KeyLimits,
    KeyStore,
    LedgerWriter,
    RequestRecord,
    month_to_date,
    open_database,
    usage_report,
)
from appliance.ledger.schema import m001_requests, m002_api_keys, m003_media_units

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
    ("kind", "TEXT", 0, None, 0),
    ("characters", "INTEGER", 1, "0", 0),
]
EXPECTED_API_KEYS = [
    ("id", "TEXT", 0, None, 1),
    ("name", "TEXT", 1, None, 0),
    ("prefix", "TEXT", 1, None, 0),
    ("secret_hash", "TEXT", 1, None, 0),
    ("created_at", "REAL", 1, None, 0),
    ("revoked_at", "REAL", 0, None, 0),
    ("admin", "INTEGER", 1, "0", 0),
    ("models", "TEXT", 0, None, 0),
    ("rpm", "INTEGER", 0, None, 0),
    ("max_concurrent", "INTEGER", 0, None, 0),
    ("monthly_requests", "INTEGER", 0, None, 0),
    ("monthly_budget", "REAL", 0, None, 0),
    ("expires_at", "REAL", 0, None, 0),
]
# (index name, unique, columns)
EXPECTED_INDEXES = {
    "requests": {
        ("idx_requests_started_at", 0, ("started_at",)),
        ("idx_requests_key_id", 0, ("key_id",)),
        ("idx_requests_model", 0, ("model",)),
        ("idx_requests_in_flight", 0, ("status",)),
        ("idx_requests_key_started", 0, ("key_id", "started_at")),
        ("idx_requests_kind_started", 0, ("kind", "started_at")),
        ("sqlite_autoindex_requests_1", 1, ("request_id",)),
    },
    "api_keys": {
        ("idx_api_keys_active_name", 1, ("name",)),
        ("sqlite_autoindex_api_keys_1", 1, ("id",)),
        ("sqlite_autoindex_api_keys_2", 1, ("secret_hash",)),
    },
}
EXPECTED_MIGRATIONS = ["m001_requests", "m002_api_keys", "m003_media_units",
                       "m004_key_limits", "m005_request_lookups", "m006_request_kind",
                       "m007_speech_characters"]


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
        assert keys.get("alice") == record == keys.get(record.prefix)
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
        # A revoked key is still found, so the auth layer can say it was revoked.
        assert keys.lookup(secret) == revoked and not revoked.active
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


def test_usage_report_groups_and_sums(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with LedgerWriter(path) as writer:
        for row in [
            _row("1", prompt_tokens=10, completion_tokens=5, price=0.5),
            _row("2", prompt_tokens=20, completion_tokens=1, price=0.25),
            _row("3", status="error", http_status=400),
            _row("4", status="cancelled", http_status=499, completion_tokens=2, price=0.125),
            _row("5", model="m2", price=1.0, started_at=90000.0),
            _row("6", key_id="key_b", price=2.0, audio_seconds=2.5),
            _row("7", key_id=None, model=None, status="error", http_status=401),
            _row("8", started_at=500000.0, price=100.0),  # outside the window below
            _row("9", status="interrupted", http_status=0, images=2),
        ]:
            writer.record(row)
    totals = usage_report(path, since=0.0, until=200000.0, key_names={"key_a": "alice"})
    summary = [
        (t.key_id, t.key_name, t.model, t.day, t.requests, t.ok, t.errors, t.cancelled,
         t.interrupted, t.prompt_tokens, t.completion_tokens, t.audio_seconds, t.images, t.cost,
         t.currency)
        for t in totals
    ]
    assert summary == [
        ("key_a", "alice", "m1", None, 5, 2, 1, 1, 1, 30, 8, 0.0, 2, 0.875, "USD"),
        ("key_a", "alice", "m2", None, 1, 1, 0, 0, 0, 0, 0, 0.0, 0, 1.0, "USD"),
        ("key_b", None, "m1", None, 1, 1, 0, 0, 0, 0, 0, 2.5, 0, 2.0, "USD"),
        (None, None, None, None, 1, 0, 1, 0, 0, 0, 0, 0.0, 0, 0.0, "USD"),
    ]
    by_day = usage_report(path, by=["day"])
    assert [(t.day, t.requests, t.key_id) for t in by_day] == [
        ("1970-01-01", 7, None), ("1970-01-02", 1, None), ("1970-01-06", 1, None)]
    by_model = usage_report(path, by=["model"], until=200000.0)
    assert [(t.model, t.requests) for t in by_model] == [("m1", 6), ("m2", 1), (None, 1)]
    assert sum(t.cost for t in usage_report(path)) == pytest.approx(103.875)
    with pytest.raises(ValueError):
        usage_report(path, by=["key; DROP TABLE requests"])
    with pytest.raises(FileNotFoundError):
        usage_report(tmp_path / "missing.sqlite")
    # Month to date counts admitted requests (not 401/429 refusals) and sums prices.
    seed = month_to_date(path, "key_a", 0.0)
    assert (seed.requests, seed.spend) == (7, 101.875)


def test_started_rows_become_interrupted_at_the_next_start(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with LedgerWriter(path) as writer:
        writer.record(_row("done"))
        writer.record(_row("in-flight", status="started", http_status=0))
        writer.record(_row("finished-later", status="started", http_status=0))
        writer.record(_row("finished-later", completion_tokens=3, price=0.5))
    writer = LedgerWriter(path)
    writer.start()
    writer.close()
    assert writer.interrupted_at_start == 1
    statuses = {rid: RequestRecord(*row).status for rid, row in _read(path).items()}
    assert statuses == {"done": "ok", "in-flight": "interrupted", "finished-later": "ok"}


def test_on_commit_runs_after_the_row_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    seen: list[set[str]] = []
    with LedgerWriter(path) as writer:
        done = threading.Event()

        def committed() -> None:
            seen.append(set(_read(path)))
            done.set()

        writer.record(_row("r1"), committed)
        assert done.wait(5)
    assert seen == [{"r1"}]
    late: list[bool] = []
    writer.record(_row("late"), lambda: late.append(True))  # closed: runs at once, not lost
    assert late == [True]


def test_an_old_ledger_upgrades_in_place(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = Migrations(MIGRATION_SET)
    for step in (m001_requests, m002_api_keys, m003_media_units):
        old(name=step.__name__)(step)
    with closing(sqlite3.connect(path)) as conn:
        db = Database(conn)
        old.apply(db)
        conn.execute("INSERT INTO requests (request_id, started_at, endpoint, method, status,"
                     " http_status) VALUES ('old', 1, '/v1/models', 'GET', 'ok', 200)")
        conn.execute("INSERT INTO api_keys (id, name, prefix, secret_hash, created_at)"
                     " VALUES ('key_000000000001', 'old', 'sk-app-ab', ?, 1)",
                     [hashlib.sha256(b"sk-app-old-secret").hexdigest()])
        conn.commit()
    with LedgerWriter(path):
        pass
    with KeyStore(path) as keys:
        record = keys.lookup("sk-app-old-secret")
        assert record is not None and record.limits == KeyLimits() and not record.admin
    assert RequestRecord(*_read(path)["old"]).status == "ok"
    with closing(sqlite3.connect(path)) as conn:
        assert _columns(conn, "api_keys") == EXPECTED_API_KEYS
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_rows_from_before_the_kind_column_get_their_kind_from_their_path(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    old = Migrations(MIGRATION_SET)
    for step in (m001_requests, m002_api_keys, m003_media_units):
        old(name=step.__name__)(step)
    served = {"chat": "/v1/chat/completions", "legacy": "/v1/completions",
              "embed": "/v1/embeddings", "speech": "/v1/audio/translations",
              "image": "/v1/images/edits", "list": "/v1/models"}
    with closing(sqlite3.connect(path)) as conn:
        old.apply(Database(conn))
        for request_id, endpoint in served.items():
            conn.execute("INSERT INTO requests (request_id, started_at, endpoint, method, "
                         "status, http_status) VALUES (?, 1, ?, 'POST', 'ok', 200)",
                         [request_id, endpoint])
        conn.commit()
    with LedgerWriter(path):
        pass
    kinds = {rid: RequestRecord(*row).kind for rid, row in _read(path).items()}
    assert kinds == {"chat": "chat", "legacy": "chat", "embed": "embedding",
                     "speech": "transcription", "image": "image", "list": None}


def test_key_limits_round_trip_and_validation(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "keys.sqlite") as keys:
        limits = KeyLimits(models=("m1",), rpm=60, max_concurrent=4, monthly_requests=10000,
                           monthly_budget=25.0, expires_at=4_000_000_000.0)
        record, secret = keys.create("alice", limits)
        assert keys.lookup(secret) == record and record.limits == limits
        updated = keys.update("alice", KeyLimits(rpm=5))
        assert updated.limits == KeyLimits(rpm=5) and keys.get(record.id) == updated
        for bad in (KeyLimits(rpm=0), KeyLimits(monthly_budget=-1.0), KeyLimits(models=())):
            with pytest.raises(ValueError):
                keys.create("bob", bad)
        for name in ("", "a" * 65, "-dash", "tab\tname", "émile", "x'; DROP TABLE api_keys"):
            with pytest.raises(ValueError):
                keys.create(name)
        with pytest.raises(ValueError):
            keys.create("ops", KeyLimits(rpm=5), admin=True)
        admin, _ = keys.create("ops", admin=True)
        assert admin.admin and keys.get("ops").admin
        keys.revoke("alice")
        with pytest.raises(KeyError):
            keys.update("alice", KeyLimits())
        assert keys.get("alice").revoked_at is not None  # still shown
