"""OpenAI's organization usage and costs endpoints over the ledger (admin keys only).

    GET /v1/organization/usage/{completions,embeddings,audio_transcriptions,audio_speeches,
    images}
    GET /v1/organization/costs

Same query parameters and ``page`` of ``bucket`` objects as OpenAI, so dashboards written for
OpenAI read the appliance: ``start_time`` (required), ``end_time`` (default now),
``bucket_width`` (``1m``, ``1h``, ``1d``; costs ``1d`` only), ``group_by`` (``api_key_id``,
``model``; costs ``api_key_id``, ``line_item`` = the model), ``api_key_ids``, ``models``,
``limit`` buckets per page and ``page`` (the previous page's ``next_page``). Buckets align to
UTC minute, hour or day boundaries; empty buckets are listed with no results, as OpenAI does.
Grouping by ``project_id``, ``user_id``, ``batch`` or ``service_tier`` is accepted and answers
null (the appliance has none of them); filtering by them is a 400.

Usage counts requests that reached a model and delivered (``ok``, or a stream cancelled after
it began); costs are the recorded flat prices, in the server's currency (lowercase, as OpenAI).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.services import Services
from appliance.engines.base import CHAT, EMBEDDING, IMAGE, SPEECH, TRANSCRIPTION
from appliance.errors import InvalidRequest, NotFound
from appliance.ledger import BucketQuery, BucketTotal

_WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}  # (default, max) buckets
_NULL_GROUPS = ("project_id", "user_id", "batch", "service_tier")
_UNSERVED_FILTERS = ("project_ids", "user_ids", "batch", "sources", "sizes")
# Past 2**53 a number is no timestamp (JSON clients round it), and past 2**63 SQLite's
# integers overflow: a 500 before this bound (found by tests/fast/test_openapi_fuzz.py).
_MAX_INTEGER = 2**53


@dataclass(frozen=True)
class _Report:
    kinds: tuple[str, ...] | None  # the model kinds whose rows it sums; None: every row
    result: Callable[[list[BucketTotal]], dict[str, Any]]
    groups: tuple[str, ...]  # group_by values that split results


def _completions(rows: list[BucketTotal]) -> dict[str, Any]:
    prompt = sum(r.prompt_tokens for r in rows)
    cached = sum(r.cached_tokens for r in rows)
    return {"object": "organization.usage.completions.result", "input_tokens": prompt,
            "input_cached_tokens": cached, "input_uncached_tokens": prompt - cached,
            "output_tokens": sum(r.completion_tokens for r in rows),
            "input_text_tokens": prompt - cached, "input_cached_text_tokens": cached,
            "output_text_tokens": sum(r.completion_tokens for r in rows),
            "num_model_requests": sum(r.requests for r in rows)}


def _embeddings(rows: list[BucketTotal]) -> dict[str, Any]:
    return {"object": "organization.usage.embeddings.result",
            "input_tokens": sum(r.prompt_tokens for r in rows),
            "num_model_requests": sum(r.requests for r in rows)}


def _audio(rows: list[BucketTotal]) -> dict[str, Any]:
    return {"object": "organization.usage.audio_transcriptions.result",
            "seconds": round(sum(r.audio_seconds for r in rows)),
            "num_model_requests": sum(r.requests for r in rows)}


def _speeches(rows: list[BucketTotal]) -> dict[str, Any]:
    return {"object": "organization.usage.audio_speeches.result",
            "characters": sum(r.characters for r in rows),
            "num_model_requests": sum(r.requests for r in rows)}


def _images(rows: list[BucketTotal]) -> dict[str, Any]:
    return {"object": "organization.usage.images.result", "images": sum(r.images for r in rows),
            "num_model_requests": sum(r.requests for r in rows), "source": None, "size": None}


def _costs(rows: list[BucketTotal]) -> dict[str, Any]:
    return {"object": "organization.costs.result",
            "amount": {"value": round(sum(r.cost for r in rows), 10),
                       "currency": rows[0].currency.lower()},
            "line_item": None, "project_id": None, "quantity": None, "quantity_unit": None}


_USAGE_GROUPS = ("api_key_id", "model")
# OpenAI's usage reports, each over the ledger rows of one model kind (RequestRecord.kind).
REPORTS = {
    "completions": _Report((CHAT.name,), _completions, _USAGE_GROUPS),
    "embeddings": _Report((EMBEDDING.name,), _embeddings, _USAGE_GROUPS),
    "audio_transcriptions": _Report((TRANSCRIPTION.name,), _audio, _USAGE_GROUPS),
    "audio_speeches": _Report((SPEECH.name,), _speeches, _USAGE_GROUPS),
    "images": _Report((IMAGE.name,), _images, _USAGE_GROUPS),
}
COSTS = _Report(None, _costs, ("api_key_id", "line_item"))


async def organization_usage(request: Request) -> Response:
    report = REPORTS.get(request.path_params["kind"])
    if report is None:
        raise NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    return await _report(request, report, costs=False)


async def organization_costs(request: Request) -> Response:
    return await _report(request, COSTS, costs=True)


def _list(request: Request, name: str) -> list[str]:
    """OpenAI's array parameters arrive as ``name=a&name=b`` or ``name[]=a&name[]=b``."""
    return [*request.query_params.getlist(name), *request.query_params.getlist(f"{name}[]")]


def _integer(request: Request, name: str, default: int | None) -> int | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise InvalidRequest(f"`{name}` must be an integer, got {text!r}.", param=name) from None
    if abs(value) > _MAX_INTEGER:
        raise InvalidRequest(f"`{name}` is out of range (at most 2**53 either way).",
                             param=name)
    return value


async def _report(request: Request, report: _Report, *, costs: bool) -> Response:
    services: Services = request.app.state.services
    for name in _UNSERVED_FILTERS:
        if _list(request, name) or request.query_params.get(name) is not None:
            raise InvalidRequest(f"`{name}` is not served: the appliance has no projects, "
                                 "users, batches or image sources to filter by.", param=name)
    start = _integer(request, "start_time", None)
    if start is None:
        raise InvalidRequest("`start_time` (unix seconds) is required.", param="start_time")
    if start < 0:
        raise InvalidRequest("`start_time` must be at least 0 (unix seconds).",
                             param="start_time")
    end = _integer(request, "end_time", None)
    end = int(services.wall_clock()) + 1 if end is None else end
    if end <= start:
        raise InvalidRequest("`end_time` must be after `start_time`.", param="end_time")
    width_name = request.query_params.get("bucket_width", "1d")
    allowed_widths = ("1d",) if costs else tuple(_WIDTHS)
    if width_name not in allowed_widths:
        raise InvalidRequest(f"`bucket_width` must be one of {', '.join(allowed_widths)}.",
                             param="bucket_width")
    width = _WIDTHS[width_name]
    default_limit, max_limit = (7, 180) if costs else _LIMITS[width_name]
    limit = _integer(request, "limit", default_limit)
    if limit is None or not 1 <= limit <= max_limit:
        raise InvalidRequest(f"`limit` must be between 1 and {max_limit}.", param="limit")
    group_by = _list(request, "group_by")
    for value in group_by:
        accepted_as_null = ("project_id",) if costs else _NULL_GROUPS
        if value not in report.groups and value not in accepted_as_null:
            raise InvalidRequest(f"`group_by` cannot be {value!r} here.", param="group_by")
    origin = start - start % width
    page_start = _page(request, origin, width, end)
    page_end = min(page_start + limit * width, end)
    query = BucketQuery(
        origin=origin, width=width, start=max(start, page_start), end=page_end,
        kinds=report.kinds, key_ids=tuple(_list(request, "api_key_ids")) or None,
        models=tuple(_ledger_model(services, name) for name in _list(request, "models")) or None,
        statuses=None if costs else ("ok", "cancelled"),
    )
    totals = ([] if services.reports is None
              else await anyio.to_thread.run_sync(services.reports.bucket_totals, query))
    buckets = _buckets(totals, report, group_by, origin, width, page_start, page_end)
    has_more = page_end < end
    return JSONResponse({"object": "page", "data": buckets, "has_more": has_more,
                         "next_page": f"page_{page_end}" if has_more else None})


def _ledger_model(services: Services, name: str) -> str:
    """The ledger records model ids: an alias filters by its model, as everywhere else. A name
    the catalog does not know may still be in the ledger (a model since removed)."""
    try:
        return services.catalog.resolve(name).id
    except NotFound:
        return name


def _page(request: Request, origin: int, width: int, end: int) -> int:
    token = request.query_params.get("page")
    if token is None:
        return origin
    number = token.removeprefix("page_")
    if not (number.isascii() and number.isdigit() and len(number) <= 16) or \
            (int(number) - origin) % width or not origin <= int(number) < end:
        raise InvalidRequest("`page` is not a `next_page` value of this query.", param="page")
    return int(number)


def _buckets(totals: list[BucketTotal], report: _Report, group_by: list[str], origin: int,
             width: int, page_start: int, page_end: int) -> list[dict[str, Any]]:
    groups: dict[tuple[int, Any, Any, str], list[BucketTotal]] = {}
    for row in totals:
        key_id = row.key_id if "api_key_id" in group_by else None
        model = row.model if ("model" in group_by or "line_item" in group_by) else None
        groups.setdefault((row.bucket, key_id, model, row.currency), []).append(row)
    buckets = []
    for bucket_start in range(page_start, page_end, width):
        index = (bucket_start - origin) // width
        results = []
        for (bucket, key_id, model, _), rows in groups.items():
            if bucket != index:
                continue
            result = report.result(rows)
            result["api_key_id"] = key_id
            if "line_item" in report.groups:
                result["line_item"] = model
            else:
                result.update(model=model, project_id=None, user_id=None)
                if report is REPORTS["completions"]:
                    result.update(batch=None, service_tier=None)
            results.append(result)
        buckets.append({"object": "bucket", "start_time": bucket_start,
                        "end_time": bucket_start + width, "results": results})
    return buckets

