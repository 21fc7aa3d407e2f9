"""``GET /v1/usage``: the calling key's own usage per UTC day and model (read-only).

The /v1/organization usage and cost routes need an admin key; this one answers a regular key
about itself only, so the playground (or any client) can show a key what it has spent.
``days`` (1-31, default 7) counts back from today, today included. Each row is one day and
model with ``requests`` (requests that reached a model and delivered: ``ok``, or a stream
cancelled after it began), token, audio, image and speech-character totals, and ``cost`` (the
recorded flat prices of every row of that day and model, in ``currency``). Days without
requests have no rows. Admin keys get the usual 403 here (they read /v1/organization/usage and
/costs).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.services import Services
from appliance.engines.base import KINDS
from appliance.errors import InvalidRequest
from appliance.ledger import BucketQuery, BucketTotal, KeyRecord

_DAY = 86_400
# Rows of requests to a model, whatever its kind (a model list or a usage read is no usage).
_MODEL_KINDS = tuple(kind.name for kind in KINDS)


def _days(request: Request) -> int:
    text = request.query_params.get("days", "7")
    if not (text.isascii() and text.isdigit() and len(text) <= 2) or not 1 <= int(text) <= 31:
        raise InvalidRequest(f"`days` must be an integer from 1 to 31, got {text!r}.",
                             param="days")
    return int(text)


async def key_usage(request: Request) -> Response:
    services: Services = request.app.state.services
    key: KeyRecord = request.scope["state"]["key"]
    days = _days(request)
    now = int(services.wall_clock())
    origin = now - now % _DAY - (days - 1) * _DAY
    delivered, priced = [], []
    if services.reports is not None:
        reports = services.reports
        base = BucketQuery(origin=origin, width=_DAY, start=origin, end=now + 1,
                           kinds=_MODEL_KINDS, key_ids=(key.id,))
        delivered = await anyio.to_thread.run_sync(reports.bucket_totals, base)
        everything = BucketQuery(origin=origin, width=_DAY, start=origin, end=now + 1,
                                 kinds=_MODEL_KINDS, key_ids=(key.id,), statuses=None)
        priced = await anyio.to_thread.run_sync(reports.bucket_totals, everything)
    return JSONResponse({
        "object": "list", "api_key_id": key.id, "api_key_name": key.name,
        "currency": services.pricing.currency.lower(), "start_time": origin, "end_time": now + 1,
        "data": _rows(origin, delivered, priced),
    })


def _rows(origin: int, delivered: list[BucketTotal],
          priced: list[BucketTotal]) -> list[dict[str, Any]]:
    rows: dict[tuple[int, str | None], dict[str, Any]] = {}

    def row(total: BucketTotal) -> dict[str, Any]:
        start = origin + total.bucket * _DAY
        day = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y-%m-%d")
        return rows.setdefault((total.bucket, total.model), {
            "object": "usage.day", "date": day, "start_time": start, "model": total.model,
            "requests": 0, "input_tokens": 0, "output_tokens": 0, "audio_seconds": 0.0,
            "images": 0, "characters": 0, "cost": 0.0})

    for total in delivered:
        entry = row(total)
        entry.update(requests=total.requests, input_tokens=total.prompt_tokens,
                     output_tokens=total.completion_tokens,
                     audio_seconds=round(total.audio_seconds, 3), images=total.images,
                     characters=total.characters)
    for total in priced:
        if total.model is None and (total.bucket, None) not in rows:
            continue  # refused before naming a model: nothing to show
        row(total)["cost"] = round(total.cost, 10)
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] or ""))]
