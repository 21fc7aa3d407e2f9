"""Failed authentications per client address, and the gate that enforces them: guessing
keys, or knocking without one, from one address is slowed to a crawl and cannot flood the
ledger or the log.

Every 401 answered to an address counts against it (no key, a malformed, unknown, revoked or
expired one, on any route), and so does a URL over ``RequestBounds.max_url_bytes`` or a head
(request line and headers) over ``max_header_bytes``: both refused here, before routing and
auth, with a 400. (h11 refuses a head over that size only while it is incomplete; one that
arrives whole in a single read, up to asyncio's 256 KiB, reaches this check.) More than
``max_failures`` within ``window_s`` and that address gets 429s with ``retry-after`` (right
key or not) until its oldest failure leaves the window. Those 429s are *quiet*: no ledger
row and no access line each (the note says so), only one warning when an address is shut
out, itself throttled. So an address hammering the server adds at most ``max_failures``
ledger rows and access lines per window, each with a path cut to
``request_context.RECORDED_PATH_CHARS``.

The address is the TCP peer's: ``X-Forwarded-For`` counts only from the proxies an operator
names in ``[server] trusted_proxies`` (uvicorn's proxy-header middleware then puts the
forwarded address in the scope), since any client can send one and would then pick the
address its failures are charged to. ``/health`` and ``/ready`` are always served: probes
must see the process, whoever shares its address.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from appliance.api.errors import error_response, retry_headers
from appliance.api.note import RequestNote
from appliance.api.route_policy import policy_of
from appliance.api.telemetry.logs import Throttle
from appliance.errors import InvalidRequest, RateLimited

log = logging.getLogger("appliance.auth")

_MAX_ADDRESSES = 10_000  # bounds memory under a flood from many addresses


class FailedAuthLimiter:
    def __init__(self, max_failures: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        # Shut-out warnings, across all addresses: a flood from many cannot flood the log.
        self._warnings = Throttle(burst=10, window_s=window_s, clock=clock)

    def check(self, address: str) -> None:
        """Raises RateLimited while ``address`` is over its allowance of failures."""
        failures = self._recent(address)
        if failures is not None and len(failures) >= self.max_failures:
            retry_after = failures[0] + self.window_s - self.clock()
            raise RateLimited(
                "Too many failed authentications from your address; try again in "
                f"{max(1, round(retry_after))} seconds.", retry_after=retry_after)

    def failed(self, address: str) -> None:
        if len(self._failures) >= _MAX_ADDRESSES and address not in self._failures:
            self._forget_expired()
        # maxlen: requests already past check() when the address reached its allowance
        # still count, but memory per address stays bounded.
        failures = self._failures.setdefault(address, deque(maxlen=2 * self.max_failures))
        failures.append(self.clock())
        if len(failures) == self.max_failures:
            allowed, held = self._warnings.allow()
            if allowed:
                log.warning("%s: %d failed authentications within %.0fs; refusing its "
                            "requests (429) until they age out%s", address, self.max_failures,
                            self.window_s, f" ({held} more addresses shut out, not logged)"
                            if held else "")

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self.clock() - self.window_s
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def _forget_expired(self) -> None:
        for address in list(self._failures):
            self._recent(address)
        if len(self._failures) >= _MAX_ADDRESSES:
            # Still full of live entries: drop the oldest half rather than grow without bound.
            by_age = sorted(self._failures, key=lambda a: self._failures[a][-1])
            for address in by_age[: len(by_age) // 2]:
                del self._failures[address]


class FailedAuthGate:
    """The outermost check of a request (inside the request context): the address's
    allowance, then the URL's length; then it counts the request if it ends in a 401."""

    def __init__(self, app: ASGIApp, failures: FailedAuthLimiter, max_url_bytes: int,
                 max_header_bytes: int):
        self.app = app
        self.failures = failures
        self.max_url_bytes = max_url_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        note: RequestNote | None = scope.get("state", {}).get("note")
        if policy_of(scope).gated:
            try:
                self.failures.check(address)
            except RateLimited as refused:
                if note is not None:
                    note.quiet = True
                    note.error_code = refused.code
                await error_response(refused, retry_headers(refused.retry_after))(
                    scope, receive, send)
                return
        error = self._oversized(scope)
        if error is not None:
            self.failures.failed(address)
            if note is not None:
                note.error_code = error.code
            await error_response(error)(scope, receive, send)
            return

        async def send_counting_401(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.failures.failed(address)
            await send(message)

        await self.app(scope, receive, send_counting_401)


    def _oversized(self, scope: Scope) -> InvalidRequest | None:
        url_bytes = url_length(scope)
        if url_bytes > self.max_url_bytes:
            return InvalidRequest(
                f"The request URL (path and query string) is {url_bytes} bytes long; the "
                f"limit is {self.max_url_bytes} bytes.", param="url", code="url_too_long")
        # As sent: "name: value\r\n" per header.
        head_bytes = url_bytes + sum(len(name) + len(value) + 4
                                     for name, value in scope.get("headers", ()))
        if head_bytes > self.max_header_bytes:
            return InvalidRequest(
                f"The request's headers are {head_bytes} bytes long with its URL; the limit is "
                f"{self.max_header_bytes} bytes.", param="headers", code="headers_too_large")
        return None


def url_length(scope: Scope) -> int:
    """Bytes of the request target as sent: the raw path, and ``?query`` if any."""
    raw_path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    query = scope.get("query_string", b"")
    return len(raw_path) + (1 + len(query) if query else 0)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    if isinstance(client, (tuple, list)) and client:
        return str(client[0])
    return "unknown"
