"""One place that turns any failure into OpenAI's error envelope and status.

Clients of the official SDKs pick their exception class from the status and read
``error.message/type/param/code``; a FastAPI-style ``detail`` or a 422 would break them.
"""

from __future__ import annotations

import json
import logging
import math

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.note import RequestNote
from appliance.errors import (
    ApplianceError,
    EngineFailure,
    InsufficientQuota,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)

log = logging.getLogger("appliance.api")


def retry_headers(retry_after: float) -> dict[str, str]:
    """``retry-after`` in whole seconds (HTTP), ``retry-after-ms`` for clients that read it
    (the OpenAI SDKs prefer it), both rounded up so a retry never comes too early."""
    return {
        "retry-after": str(max(1, math.ceil(retry_after))),
        "retry-after-ms": str(max(1, math.ceil(retry_after * 1000))),
    }


class _ErrorJSON(JSONResponse):
    """An envelope written in ASCII: a message may quote what the client sent, and a lone
    surrogate in it failed the UTF-8 encoding of the error itself, a 500 in place of the 4xx."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def error_response(error: ApplianceError, headers: dict[str, str] | None = None) -> JSONResponse:
    return _ErrorJSON(error.envelope(), status_code=error.status, headers=headers)


def error_frame(error: ApplianceError) -> bytes:
    """The SSE frame that carries an error once a stream has started (then comes [DONE])."""
    return b"data: " + json.dumps(error.envelope()).encode() + b"\n\n"


def mid_stream_failure(note: RequestNote, exc: Exception, doing: str) -> bytes:
    """The error frame for a stream that fails after its first bytes; the note records it.
    An unexpected exception is logged with its traceback and shown as a plain 500 envelope."""
    error = exc if isinstance(exc, ApplianceError) else EngineFailure(
        f"The server had an error while {doing}.")
    if not isinstance(exc, ApplianceError):
        log.error("stream failed while %s", doing, exc_info=exc)
    note.failed_mid_stream = True
    note.error_code = error.code
    return error_frame(error)


def from_http_exception(exc: HTTPException, request: Request) -> ApplianceError:
    if exc.status_code == 404:
        return NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    if exc.status_code == 405:
        return MethodNotAllowed(
            f"Method {request.method} is not allowed for {request.url.path}."
        )
    if 400 <= exc.status_code < 500:
        return InvalidRequest(str(exc.detail))
    return EngineFailure(str(exc.detail))


async def handle_appliance_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApplianceError)
    if isinstance(exc, ServiceUnavailable):
        log.info("request refused: %s", exc.message)  # load shedding or shutdown: routine
    elif exc.status >= 500:
        log.error("request failed: %s", exc.message)
    note = request.scope.get("state", {}).get("note")
    if note is not None:
        note.error_code = exc.code or exc.error_type
    retry_after = getattr(exc, "retry_after", None)
    # A transient refusal says when to come back; the SDKs' retries wait exactly that long.
    headers = retry_headers(retry_after) if retry_after is not None else {}
    if isinstance(exc, InsufficientQuota):
        # A permanent 429 (a storage quota used up): the SDKs retry 429s unless told not to.
        headers["x-should-retry"] = "false"
    return error_response(exc, headers or None)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return await handle_appliance_error(request, from_http_exception(exc, request))
