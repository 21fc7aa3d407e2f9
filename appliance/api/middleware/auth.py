"""Bearer-key authentication for every route whose policy needs a key.

Missing, malformed, unknown, revoked and expired keys get OpenAI's 401 (the SDKs raise
AuthenticationError) with a message that says which. Every 401 counts against the client's
address (``failed_auth.FailedAuthGate``, which runs first): past the allowance, that
address gets 429s. Each request looks its key up in SQLite, off the event loop (an indexed
read of one row; there is no cache), so a key revoked or changed through the admin API or
the CLI is refused from the very next request.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from appliance.api.errors import error_response
from appliance.api.route_policy import policy_of
from appliance.api.services import KeyLookup
from appliance.errors import AuthenticationFailed
from appliance.ledger import KeyRecord


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, keys: KeyLookup,
                 wall_clock: Callable[[], float] = time.time):
        self.app = app
        self.keys = keys
        self.wall_clock = wall_clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not policy_of(scope).needs_key:
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, secret = header.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret:
            error = AuthenticationFailed(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
            await error_response(error)(scope, receive, send)
            return
        if not (secret.isascii() and secret.isprintable()) or " " in secret:
            error = AuthenticationFailed(
                "Malformed Authorization header: expected `Bearer <key>` with a key of "
                "printable ASCII characters and no spaces."
            )
            await error_response(error)(scope, receive, send)
            return
        record = await anyio.to_thread.run_sync(self.keys.lookup, secret)
        if record is None:
            error = AuthenticationFailed(f"Incorrect API key provided: {_redact(secret)}.")
            await error_response(error)(scope, receive, send)
            return
        note = scope.get("state", {}).get("note")
        if note is not None:
            note.key_id = record.id  # refused keys too: the ledger shows who knocked
        refusal = _refusal(record, self.wall_clock())
        if refusal is not None:
            await error_response(refusal)(scope, receive, send)
            return
        scope.setdefault("state", {})["key"] = record
        await self.app(scope, receive, send)


def _refusal(record: KeyRecord, now: float) -> AuthenticationFailed | None:
    if record.revoked_at is not None:
        return AuthenticationFailed(
            f"The API key {record.prefix}... ({record.name}) was revoked on "
            f"{_when(record.revoked_at)}. Ask an administrator for a new key."
        )
    if record.expired(now):
        assert record.limits.expires_at is not None
        return AuthenticationFailed(
            f"The API key {record.prefix}... ({record.name}) expired on "
            f"{_when(record.limits.expires_at)}. Ask an administrator to extend it."
        )
    return None


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _redact(secret: str) -> str:
    """Like OpenAI: show only the ends, so a pasted key never lands whole in a log or reply."""
    if len(secret) <= 8:
        return "*" * len(secret)
    return f"{secret[:3]}{'*' * 4}{secret[-4:]}"
