"""Usage reports read from the ledger: totals grouped by key, model and/or day, and one key's
month to date (the seed of its monthly quota and budget).

Owns the read side of the ``requests`` table for people and quotas (``buckets.py`` serves the
OpenAI-shaped admin endpoints). Each call opens its own read-only connection, so reports run
beside a serving process (WAL lets readers run beside the writer).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

# The only SQL fragments a report is built from: fixed text chosen by a fixed name, so nothing a
# user types ever reaches the statement (values travel as bound parameters).
GROUPINGS: Mapping[str, str] = {
    "key": "key_id",
    "model": "model",
    "day": "strftime('%Y-%m-%d', started_at, 'unixepoch')",
}


@dataclass(frozen=True)
class UsageRow:
    """One group. Fields not grouped by are None. Prices in different currencies are never
    summed: currency is always part of the group."""

    key_id: str | None
    key_name: str | None
    model: str | None
    day: str | None  # YYYY-MM-DD (UTC)
    requests: int
    ok: int
    errors: int
    cancelled: int
    interrupted: int
    prompt_tokens: int
    completion_tokens: int
    audio_seconds: float
    images: int
    cost: float
    currency: str
    characters: int = 0  # speech: input characters


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection: a report must never create, migrate or lock the ledger."""
    if not path.exists():
        raise FileNotFoundError(f"no ledger at {path}")
    uri = path.resolve().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        yield conn


def usage_report(
    path: Path,
    by: Sequence[str] = ("key", "model"),
    since: float | None = None,
    until: float | None = None,
    key_names: Mapping[str, str] | None = None,
) -> list[UsageRow]:
    """Totals for requests started in ``[since, until)`` (unix seconds), grouped by ``by``
    (names from GROUPINGS, sorted in that order; unknown names are a ValueError).

    ``key_names`` (id -> name, from the KeyStore, which lives in another file) fills
    ``key_name``; unknown ids get None. Groups without a key or model sort last.
    """
    unknown = [name for name in by if name not in GROUPINGS]
    if unknown or not by:
        raise ValueError(f"group by one or more of {', '.join(GROUPINGS)}, got {list(by)}")
    chosen = list(dict.fromkeys(by))  # the caller's order is the sort order
    selected = [GROUPINGS[name] if name in chosen else "NULL" for name in GROUPINGS]
    order = ", ".join(f"{GROUPINGS[name]} IS NULL, {GROUPINGS[name]}" for name in chosen)
    sql = (
        f"SELECT {', '.join(selected)}, count(*), sum(status = 'ok'), sum(status = 'error'),"
        " sum(status = 'cancelled'), sum(status = 'interrupted'), sum(prompt_tokens),"
        " sum(completion_tokens), total(audio_seconds), sum(images), total(price), currency,"
        " sum(characters)"
        " FROM requests WHERE (:since IS NULL OR started_at >= :since)"
        " AND (:until IS NULL OR started_at < :until)"
        f" GROUP BY {', '.join(GROUPINGS[name] for name in chosen)}, currency"
        f" ORDER BY {order}, currency"
    )
    names = key_names or {}
    with read_only(path) as conn:
        rows = conn.execute(sql, {"since": since, "until": until}).fetchall()
    return [
        UsageRow(row[0], names.get(row[0]) if row[0] is not None else None, row[1], row[2],
                 *row[3:])
        for row in rows
    ]


@dataclass(frozen=True)
class MonthToDate:
    requests: int  # every request but those answered 401, 403 or 429 (not admitted)
    spend: float


def month_to_date(path: Path, key_id: str, since: float) -> MonthToDate:
    """What ``key_id`` used from ``since`` (the month's start) on; zero without a ledger."""
    if not path.exists():
        return MonthToDate(0, 0.0)
    with read_only(path) as conn:
        count, spend = conn.execute(
            "SELECT count(*), total(price) FROM requests WHERE key_id = ? AND started_at >= ?"
            " AND http_status NOT IN (401, 403, 429)",  # as key_quota counts: not admitted
            [key_id, since],
        ).fetchone()
    return MonthToDate(int(count), float(spend))

