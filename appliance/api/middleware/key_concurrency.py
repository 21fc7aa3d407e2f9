"""A key's requests in flight, for its ``max_concurrent``.

Entering and leaving happen on the event loop with no await in between, so two concurrent
requests cannot both take the last place.
"""

from __future__ import annotations

from appliance.errors import RateLimited
from appliance.ledger import KeyRecord


class KeyConcurrency:
    """Requests in flight per key."""

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def enter(self, key: KeyRecord) -> None:
        limit = key.limits.max_concurrent
        current = self._in_flight.get(key.id, 0)
        if limit is not None and current >= limit:
            # When a running request ends is unknown; a second is a fair first guess and the
            # SDKs back off further on repeated refusals.
            raise RateLimited(
                f"Too many concurrent requests for key {key.name!r}: limit {limit}. "
                "Please retry when one of them has finished.",
                retry_after=1.0,
            )
        self._in_flight[key.id] = current + 1

    def leave(self, key: KeyRecord) -> None:
        left = self._in_flight.get(key.id, 1) - 1
        if left > 0:
            self._in_flight[key.id] = left
        else:
            self._in_flight.pop(key.id, None)
