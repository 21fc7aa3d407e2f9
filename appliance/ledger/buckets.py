"""Time-bucketed totals for the OpenAI-shaped usage and costs endpoints.

Owns one query: rows of the ``requests`` table summed per (time bucket, key, model, currency).
The api regroups these fine groups by what the client asked (``group_by``), so the statement
never changes with the request; lists of ids and endpoints travel as bound JSON arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from appliance.ledger.usage import MonthToDate, month_to_date, read_only


@dataclass(frozen=True)
class BucketQuery:
    origin: int  # unix seconds where bucket 0 starts
    width: int  # seconds per bucket
    start: float  # rows started in [start, end)
    end: float
    kinds: tuple[str, ...] | None = None  # model kinds (RequestRecord.kind); None: every row
    key_ids: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    # Usage counts requests that reached a model and delivered (ok, or a cancelled stream);
    # costs sum every row (refused and failed rows are priced 0 anyway).
    statuses: tuple[str, ...] | None = ("ok", "cancelled")


@dataclass(frozen=True)
class BucketTotal:
    bucket: int
    key_id: str | None
    model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    audio_seconds: float
    images: int
    cost: float
    currency: str
    characters: int = 0  # speech: input characters


_QUERY = """
SELECT CAST((started_at - :origin) / :width AS INTEGER) AS bucket, key_id, model, count(*),
       sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), total(audio_seconds),
       sum(images), total(price), currency, sum(characters)
FROM requests
WHERE started_at >= :start AND started_at < :end
  AND (:kinds IS NULL OR kind IN (SELECT value FROM json_each(:kinds)))
  AND (:key_ids IS NULL OR key_id IN (SELECT value FROM json_each(:key_ids)))
  AND (:models IS NULL OR model IN (SELECT value FROM json_each(:models)))
  AND (:statuses IS NULL OR status IN (SELECT value FROM json_each(:statuses)))
GROUP BY bucket, key_id, model, currency
ORDER BY bucket, key_id IS NULL, key_id, model IS NULL, model, currency
"""


def _json(values: tuple[str, ...] | None) -> str | None:
    return None if values is None else json.dumps(list(values))


def bucket_totals(path: Path, query: BucketQuery) -> list[BucketTotal]:
    """Totals per bucket, key, model and currency; empty when there is no ledger yet."""
    if not path.exists():
        return []
    params = {
        "origin": query.origin, "width": query.width, "start": query.start, "end": query.end,
        "kinds": _json(query.kinds), "key_ids": _json(query.key_ids),
        "models": _json(query.models), "statuses": _json(query.statuses),
    }
    with read_only(path) as conn:
        rows = conn.execute(_QUERY, params).fetchall()
    return [BucketTotal(*row) for row in rows]


class LedgerReports:
    """The read side of one ledger file, for the server: quota seeds and usage buckets."""

    def __init__(self, path: Path):
        self.path = path

    def month_to_date(self, key_id: str, since: float) -> MonthToDate:
        return month_to_date(self.path, key_id, since)

    def bucket_totals(self, query: BucketQuery) -> list[BucketTotal]:
        return bucket_totals(self.path, query)
