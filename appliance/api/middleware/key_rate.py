"""A key's request rate (its ``rpm``), and OpenAI's ``x-ratelimit-*-requests`` headers.

Owns the in-memory counters (one server process serves a ledger, so memory is the truth for
what happened in the last minute). Checks and counts happen on the event loop with no await
in between, so concurrent requests cannot both take the last slot.

The rate is a sliding window: a key with ``rpm`` N is admitted when fewer than N of its
requests were admitted in the last ``window`` seconds; the refusal says exactly when the
oldest of them leaves the window (``retry-after``), so the SDKs' automatic retry waits the
right time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import RateLimited
from appliance.ledger import KeyRecord


@dataclass(frozen=True)
class RateState:
    """What the ``x-ratelimit-*-requests`` headers report for one response."""

    limit: int
    remaining: int
    reset_seconds: float  # until the key is back to its full limit

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": go_duration(self.reset_seconds),
        }


def go_duration(seconds: float) -> str:
    """OpenAI writes reset times as Go durations: ``120ms``, ``1.5s``, ``6m0s``."""
    seconds = max(seconds, 0.0)
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60.0)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


class KeyRate:
    """Sliding-window request counts per key."""

    def __init__(self, window: float, clock: Callable[[], float]):
        self._window = window
        self._clock = clock
        self._admitted: dict[str, deque[float]] = {}

    def admit(self, key: KeyRecord) -> RateState | None:
        """Counts one request of ``key``; None for a key without an rpm limit.

        Raises RateLimited (with the state in ``state``) when the window is full.
        """
        limit = key.limits.rpm
        if limit is None:
            self._admitted.pop(key.id, None)
            return None
        now = self._clock()
        times = self._admitted.setdefault(key.id, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        if len(times) >= limit:
            retry_after = times[len(times) - limit] + self._window - now
            state = RateState(limit, 0, times[-1] + self._window - now)
            raise RateLimitedWithState(
                f"Rate limit reached for key {key.name!r} on requests per min (RPM): "
                f"Limit {limit}, Used {len(times)}, Requested 1. Please try again in "
                f"{go_duration(retry_after)}.",
                retry_after=retry_after,
                state=state,
            )
        times.append(now)
        return RateState(limit, limit - len(times), self._window)

    def peek(self, key: KeyRecord) -> RateState | None:
        """The state without counting a request (for responses refused for another reason)."""
        limit = key.limits.rpm
        times = self._admitted.get(key.id)
        if limit is None:
            return None
        if not times:
            return RateState(limit, limit, 0.0)
        now = self._clock()
        live = [t for t in times if t > now - self._window]
        reset = live[-1] + self._window - now if live else 0.0
        return RateState(limit, max(limit - len(live), 0), reset)


class RateLimitedWithState(RateLimited):
    """A rate refusal that also carries the headers' numbers."""

    def __init__(self, message: str, *, retry_after: float, state: RateState):
        super().__init__(message, retry_after=retry_after)
        self.state = state
