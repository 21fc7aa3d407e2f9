"""Request ids, route policies, the catch-all 500, and one durable ledger row per request
of a ledgered route.

A pure ASGI middleware (not BaseHTTPMiddleware) so streaming responses pass through untouched
and a client that leaves mid-stream is seen as such: the response never completes, and the
row says ``cancelled``.

The final row is written before the response's last byte is sent, and the last byte waits
until the row is committed (``commit_row``): a client that got a complete response can count
on its row surviving a crash of the server a moment later. The admission middleware writes a
"started" row the same way before a request runs, so a crash mid-request leaves evidence that
the next start marks "interrupted". A request whose work outlives its response (a background
response: ``RequestNote.outlives_response``) has its final row written when that work is done,
with the work's outcome; until then its row says "started".

What the row and the access line keep of the client's path is bounded: its first
``RECORDED_PATH_CHARS`` characters, control characters escaped (a 401 row needs the route
that was knocked on, not a 60,000-character path). Refusals the failed-auth gate marks quiet
get neither (``failed_auth.py``). Every response says ``X-Content-Type-Options: nosniff``:
a browser must not guess a type for an image file or an error body.

It is also where a request's ``RoutePolicy`` is resolved, once, and left in the scope for
the middlewares inside it (``route_policy.policy_of``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable

import anyio
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.note import RequestNote
from appliance.api.route_policy import RouteTable
from appliance.api.services import LedgerSink, Pricing
from appliance.api.telemetry.logs import CURRENT_REQUEST_ID, shown
from appliance.errors import InternalError
from appliance.ledger import RequestRecord, RequestStatus

log = logging.getLogger("appliance.access")

RECORDED_PATH_CHARS = 256
_RECORDED_METHOD_CHARS = 16  # h11 takes any token as a method; real ones are short
_ALWAYS_HEADERS = [(b"x-content-type-options", b"nosniff")]


def ledger_row(note: RequestNote, status: RequestStatus, http_status: int, price: float,
               currency: str) -> RequestRecord:
    return RequestRecord(
        request_id=note.request_id,
        started_at=note.started_at,
        endpoint=note.path,
        method=note.method,
        key_id=note.key_id,
        model=note.model,
        status=status,
        http_status=http_status,
        prompt_tokens=note.prompt_tokens,
        completion_tokens=note.completion_tokens,
        cached_tokens=note.cached_tokens,
        latency_ms=note.elapsed_ms(),
        ttft_ms=note.ttft_ms(),
        price=price,
        currency=currency,
        error_code=note.error_code,
        stream=note.stream,
        audio_seconds=note.audio_seconds,
        images=note.images,
        characters=note.characters,
        kind=note.kind,
    )


async def commit_row(ledger: LedgerSink, row: RequestRecord, timeout: float) -> None:
    """Records ``row`` and waits (without blocking the loop) until the writer committed it.

    Concurrent requests share the writer's batches, so this costs a commit's latency, not a
    transaction each. A writer that does not answer in ``timeout`` is logged and passed over:
    a stuck disk must not hang every client.
    """
    loop = asyncio.get_running_loop()
    committed = asyncio.Event()

    def on_commit() -> None:  # the writer thread
        # RuntimeError: the loop closed during shutdown; nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(committed.set)

    ledger.record(row, on_commit)
    with anyio.move_on_after(timeout) as waited:
        await committed.wait()
    if waited.cancelled_caught:
        log.error("ledger row of %s not committed within %.1fs; answering anyway",
                  row.request_id, timeout)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, ledger: LedgerSink, pricing: Pricing, table: RouteTable,
                 commit_wait: float = 5.0,
                 on_final_row: Callable[[RequestRecord], None] | None = None):
        self.app = app
        self.ledger = ledger
        self.pricing = pricing
        self.table = table
        self.commit_wait = commit_wait
        self.on_final_row = on_final_row  # the quota book adds the price to the key's month

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        note = RequestNote(
            request_id=f"req_{uuid.uuid4().hex}",
            method=shown(scope["method"], _RECORDED_METHOD_CHARS),
            path=shown(scope["path"], RECORDED_PATH_CHARS),
        )
        policy = self.table.policy_for(scope)
        note.kind = policy.kind
        state = scope.setdefault("state", {})
        state["note"] = note
        state["policy"] = policy
        # Every line logged while this request runs names it (telemetry/logs.RequestIdFilter).
        id_token = CURRENT_REQUEST_ID.set(note.request_id)
        ledgered = policy.ledgered
        status = 0
        completed = False
        committed: RequestRecord | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, completed, committed
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), *_ALWAYS_HEADERS,
                           (b"x-request-id", note.request_id.encode())]
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
                if ledgered and not note.quiet and note.outlives_response is None:
                    committed = self._final_row(note, status, completed=True)
                    await commit_row(self.ledger, committed, self.commit_wait)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client left while its body was still arriving (a dropped upload): nobody
            # is there to answer, and it is no server error; the row says "cancelled".
            note.client_gone = True
            log.info("client left before its request body was complete")
        except Exception:
            log.exception("unhandled error in %s %s", note.method, note.path)
            if status == 0:
                status = 500
                error = InternalError("The server had an error while processing your request.")
                note.error_code = error.code
                await _send_json(send_with_id, 500, error.envelope())
            else:
                note.failed_mid_stream = True
        finally:
            if not note.quiet:
                # The one access line of the request; the extras become keys of a JSON line.
                log.info(
                    "%s %s %s %.1fms", note.method, note.path, status or "-",
                    note.elapsed_ms(),
                    extra={"method": note.method, "path": note.path, "status": status or None,
                           "latency_ms": round(note.elapsed_ms(), 1), "model": note.model,
                           "key_id": note.key_id},
                )
            later = note.outlives_response
            if ledgered and later is not None:
                later.add_done_callback(lambda _: self._record_later(note, status))
            elif ledgered:
                final = self._final_row(note, status, completed)
                # Normally the row went to disk before the last byte; write again only when the
                # outcome changed after it (the client left at the very end, a late failure).
                if not note.quiet and (committed is None or (final.status, final.price) != (
                        committed.status, committed.price)):
                    self.ledger.record(final)
                if self.on_final_row is not None:
                    self.on_final_row(final)
            CURRENT_REQUEST_ID.reset(id_token)

    def _record_later(self, note: RequestNote, status: int) -> None:
        """The row of a request whose work outlived its response, once that work is done:
        the outcome is the work's (the note says it), whatever became of the response."""
        final = self._final_row(note, status, completed=True)
        if not note.quiet:
            self.ledger.record(final)
        if self.on_final_row is not None:
            self.on_final_row(final)

    def _final_row(self, note: RequestNote, status: int, completed: bool) -> RequestRecord:
        outcome = _outcome(note, status, completed)
        price = self.pricing.price(note.model) if _billable(outcome, note) else 0.0
        return ledger_row(note, outcome, status, price, self.pricing.currency)


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
