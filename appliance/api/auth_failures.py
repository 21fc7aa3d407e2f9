"""Failed authentications per client address: guessing keys from one address is slowed to a
crawl.

More than ``max_failures`` wrong keys within ``window_s`` from one address and that address
gets 429s with ``retry-after`` (right key or not) until its oldest failure leaves the window.
The address is the TCP peer's: ``X-Forwarded-For`` is not trusted, since any client can send
one and would then pick the address its failures are charged to.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from starlette.types import Scope

from appliance.errors import RateLimited

_MAX_ADDRESSES = 10_000  # bounds memory under a flood from many addresses


class FailedAuthLimiter:
    def __init__(self, max_failures: int = 20, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window_s = window_s
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

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
        self._failures.setdefault(address, deque()).append(self.clock())

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


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    if isinstance(client, (tuple, list)) and client:
        return str(client[0])
    return "unknown"
