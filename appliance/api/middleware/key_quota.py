"""Monthly request quotas and budgets per key (calendar months, UTC).

Owns the month-to-date counters of keys that have a monthly limit. The first request of such
a key in a month reads the key's month so far from the ledger (off the event loop; concurrent
requests of the key wait for that one read); from then on the counters live in memory: a
request is counted when admitted, its price when its final ledger row is written. A month
that is used up is a permanent refusal (``insufficient_quota``), so the SDKs do not retry.

Spending is checked before a request runs, and its price is known only after it ends, so a
budget can be overrun by the price of the requests already in flight when it runs out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.to_thread

from appliance.errors import InsufficientQuota
from appliance.ledger import KeyRecord, MonthToDate, RequestRecord, money


class MonthReader(Protocol):
    def month_to_date(self, key_id: str, since: float) -> MonthToDate: ...


_NANOS = 1_000_000_000  # spend's unit: a billionth of the currency


def nanos(amount: float) -> int:
    return round(amount * _NANOS)


@dataclass
class _Month:
    requests: int
    spend_nanos: int


@dataclass
class MonthTicket:
    """An admitted request's place in its key's month: counted once every other check has
    passed, given back if the request is then refused with a 429."""

    month: _Month
    counted: bool = False

    def count(self) -> None:
        if not self.counted:
            self.month.requests += 1
            self.counted = True

    def give_back(self) -> None:
        if self.counted:
            self.month.requests -= 1
            self.counted = False


def month_start(now: float) -> float:
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _next_month(start: float) -> str:
    moment = dt.datetime.fromtimestamp(start, dt.UTC)
    following = (moment.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return following.strftime("%Y-%m-%d 00:00 UTC")


class KeyQuota:
    def __init__(self, reader: MonthReader | None, currency: str,
                 wall_clock: Callable[[], float]):
        self._reader = reader
        self._currency = currency
        self._clock = wall_clock
        self._months: dict[tuple[str, float], _Month] = {}
        self._loading: dict[tuple[str, float], anyio.Event] = {}

    async def admit(self, key: KeyRecord) -> MonthTicket | None:
        """Raises InsufficientQuota when ``key``'s month is used up. Otherwise returns the
        request's ticket (``count()`` it once every other check has passed), or None for a
        key without monthly limits."""
        limits = key.limits
        if limits.monthly_requests is None and limits.monthly_budget is None:
            return None
        start = month_start(self._clock())
        month = await self._month(key.id, start)
        if limits.monthly_requests is not None and month.requests >= limits.monthly_requests:
            raise InsufficientQuota(
                f"You exceeded your current quota: key {key.name!r} has used its "
                f"{limits.monthly_requests} requests for this month. It renews on "
                f"{_next_month(start)}; ask an administrator to raise it."
            )
        budget = limits.monthly_budget
        if budget is not None and month.spend_nanos >= nanos(budget):
            raise InsufficientQuota(
                f"You exceeded your current quota: key {key.name!r} has spent its monthly "
                f"budget of {money(budget)} {self._currency} "
                f"({money(month.spend_nanos / _NANOS)} spent). It renews on "
                f"{_next_month(start)}; ask an administrator to raise it."
            )
        return MonthTicket(month)

    def charge(self, row: RequestRecord) -> None:
        """Adds a finished request's price to its key's month, if that month is tracked."""
        if row.key_id is None or not row.price:
            return
        month = self._months.get((row.key_id, month_start(row.started_at)))
        if month is not None:
            month.spend_nanos += nanos(row.price)

    async def _month(self, key_id: str, start: float) -> _Month:
        slot = (key_id, start)
        while (month := self._months.get(slot)) is None:
            loading = self._loading.get(slot)
            if loading is not None:
                await loading.wait()  # another request of this key is reading the ledger
                continue
            loading = self._loading[slot] = anyio.Event()
            try:
                seed = MonthToDate(0, 0.0)
                if self._reader is not None:
                    seed = await anyio.to_thread.run_sync(
                        self._reader.month_to_date, key_id, start)
                # Months past are never asked again: drop them as a new one begins.
                for stale in [s for s in self._months if s[0] == key_id and s[1] != start]:
                    del self._months[stale]
                self._months[slot] = _Month(seed.requests, nanos(seed.spend))
            finally:
                del self._loading[slot]
                loading.set()
        return month
