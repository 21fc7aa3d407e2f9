"""Which models are failing now, seen from their requests' final ledger rows.

An engine that breaks at run time (a CUDA error, a decode that keeps failing, a worker that
raises) fails its own requests with 500s while the other models go on serving. This keeps,
per model, the run of server failures since its last success, so ``/ready`` can name the
failing models (still 200: the others serve) and ``/metrics`` can export
``appliance_model_up``. A success ends the run. Client errors (4xx), cancellations and
refusals for load (503 overloaded, shutting down) say nothing about the engine's health.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.ledger import RequestRecord

# 503s that refuse work for load or shutdown, not because the engine failed.
NOT_FAILURES = frozenset({"overloaded", "service_unavailable", "shutting_down"})


@dataclass(frozen=True)
class Failing:
    failures: int  # server failures in a row, none since succeeded
    since: float  # unix seconds of the first of them
    last_code: str


class ModelHealth(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()  # rows arrive on the event loop; scrapes on a thread
        self._models: set[str] = set()
        self._failing: dict[str, Failing] = {}

    def track(self, models: Iterable[str]) -> None:
        """The served models: each is reported, up or not, from the start."""
        with self._lock:
            self._models.update(models)

    def observe(self, row: RequestRecord) -> None:
        if row.model is None:
            return
        if row.status == "ok":
            with self._lock:
                self._failing.pop(row.model, None)
            return
        if row.status != "error" or 400 <= row.http_status < 500 \
                or row.error_code in NOT_FAILURES:
            return
        code = row.error_code or "unknown"
        with self._lock:
            before = self._failing.get(row.model)
            self._failing[row.model] = Failing(
                failures=1 if before is None else before.failures + 1,
                since=row.started_at if before is None else before.since, last_code=code)

    def failing(self) -> dict[str, Failing]:
        with self._lock:
            return dict(self._failing)

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("appliance_model_up", "1 while the model's requests succeed; "
                               "0 after a server failure until its next success",
                               labels=["model"])
        with self._lock:
            models = sorted(self._models | set(self._failing))
            failing = set(self._failing)
        for model in models:
            up.add_metric([model], 0 if model in failing else 1)
        yield up
