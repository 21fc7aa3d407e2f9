"""Usage totals read from the ledger: what each key spent on each model over a time window.

Owns the read side of the ``requests`` table. It opens its own read-only connection per call,
so the CLI can report while a server is writing (WAL lets readers run beside the writer).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UsageTotal:
    """One (key, model, currency) group. Prices in different currencies are never summed."""

    key_id: str | None
    key_name: str | None
    model: str | None
    requests: int
    ok: int
    errors: int
    cancelled: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    currency: str


_QUERY = """
SELECT key_id, model, count(*),
       sum(status = 'ok'), sum(status = 'error'), sum(status = 'cancelled'),
       sum(prompt_tokens), sum(completion_tokens), total(price), currency
FROM requests
WHERE (:since IS NULL OR started_at >= :since) AND (:until IS NULL OR started_at < :until)
GROUP BY key_id, model, currency
ORDER BY key_id IS NULL, key_id, model IS NULL, model, currency
"""


def usage_totals(
    path: Path,
    since: float | None = None,
    until: float | None = None,
    key_names: Mapping[str, str] | None = None,
) -> list[UsageTotal]:
    """Totals per key and model for requests started in ``[since, until)`` (unix seconds).

    Requests without a key or model come last in their group. ``key_names`` (id -> name, from
    the KeyStore, which lives in another file) fills ``key_name``; unknown ids get None.
    """
    if not path.exists():
        raise FileNotFoundError(f"no ledger at {path}")
    names = key_names or {}
    # mode=ro: a report must never create, migrate or lock the ledger for writing.
    uri = path.resolve().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout=5000")
        rows = conn.execute(_QUERY, {"since": since, "until": until}).fetchall()
    # The query's columns after key_id and model follow UsageTotal's field order.
    return [
        UsageTotal(row[0], names.get(row[0]) if row[0] is not None else None, row[1], *row[2:])
        for row in rows
    ]
