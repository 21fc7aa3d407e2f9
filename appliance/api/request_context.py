"""Request ids, the catch-all 500, and one ledger row per /v1 request.

A pure ASGI middleware (not BaseHTTPMiddleware) so streaming responses pass through untouched
and a client that leaves mid-stream is seen as such: the response never completes, and the
row says ``cancelled``.
"""

from __future__ import annotations

import json
import logging
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.note import RequestNote
from appliance.api.services import LedgerSink, Pricing
from appliance.errors import EngineFailure
from appliance.ledger import RequestRecord, RequestStatus

log = logging.getLogger("appliance.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, ledger: LedgerSink, pricing: Pricing):
        self.app = app
        self.ledger = ledger
        self.pricing = pricing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        note = RequestNote(
            request_id=f"req_{uuid.uuid4().hex}", method=scope["method"], path=scope["path"]
        )
        scope.setdefault("state", {})["note"] = note
        status = 0
        completed = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, completed
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", note.request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in %s %s", note.method, note.path)
            if status == 0:
                status = 500
                error = EngineFailure("The server had an error while processing your request.")
                note.error_code = error.code
                await _send_json(send_with_id, 500, error.envelope())
            else:
                note.failed_mid_stream = True
        finally:
            self._finish(note, status, completed)

    def _finish(self, note: RequestNote, status: int, completed: bool) -> None:
        outcome = _outcome(note, status, completed)
        log.info(
            "%s %s %s %s %.1fms",
            note.request_id, note.method, note.path, status or "-", note.elapsed_ms(),
        )
        if not note.path.startswith("/v1"):
            return
        self.ledger.record(
            RequestRecord(
                request_id=note.request_id,
                started_at=note.started_at,
                endpoint=note.path,
                method=note.method,
                key_id=note.key_id,
                model=note.model,
                status=outcome,
                http_status=status,
                prompt_tokens=note.prompt_tokens,
                completion_tokens=note.completion_tokens,
                cached_tokens=note.cached_tokens,
                latency_ms=note.elapsed_ms(),
                ttft_ms=note.ttft_ms(),
                price=self.pricing.price(note.model) if _billable(outcome, note) else 0.0,
                currency=self.pricing.currency,
                error_code=note.error_code,
                stream=note.stream,
                audio_seconds=note.audio_seconds,
                images=note.images,
            )
        )


def _outcome(note: RequestNote, status: int, completed: bool) -> RequestStatus:
    if not completed or note.client_gone:
        return "cancelled"
    if status >= 400 or note.failed_mid_stream:
        return "error"
    return "ok"


def _billable(outcome: RequestStatus, note: RequestNote) -> bool:
    """Billing rule: a success is charged; a stream cancelled after its first token too (the
    client received text). A cancelled non-streaming request delivered nothing: not charged."""
    if outcome == "ok":
        return True
    return outcome == "cancelled" and note.stream and note.completion_tokens > 0


async def _send_json(send: Send, status: int, body: object) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
