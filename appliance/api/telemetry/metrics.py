"""Prometheus metrics: what was asked, how fast it went, what failed, how full the engines are.

One ``CollectorRegistry`` per app (prometheus-client's default registry is process-global, and
tests build many apps). Request metrics come from each request's final ledger row, so the
metrics and the ledger count the same requests the same way. Chat engines report every decode
step (busy slots, queued requests) from their decode thread; an idle scheduler does not step,
so a model that has not stepped for three of its recent step intervals (at least
``IDLE_AFTER_S``: a loaded CPU makes steps slow) reports 0 rather than its last step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import BaseRoute, Route

from appliance.api.telemetry.model_health import ModelHealth
from appliance.ledger import RequestRecord

IDLE_AFTER_S = 1.0
# A gap longer than this between two steps was idleness, not a slow step.
SLOWEST_STEP_S = 5.0
UNMATCHED_ROUTE = "unmatched"  # a 404 path: one label, whatever the path, to bound cardinality
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A decode step is what every running stream waits for between two tokens; the step budget
# (max_step_ms) aims near 25 ms on a GPU and 75 ms on a CPU.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5)
PREFILL_BUCKETS = (0, 1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class _Step:
    at: float
    interval: float  # since the step before
    busy_slots: int
    waiting: int
    exact: bool = False  # reported on every change (worker pools): never stale


class EngineLoad(Collector):
    """Slot use and queue depth per model: chat models as of their last decode step,
    worker-pool models (whisper, images) as of their last change."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._steps: dict[str, _Step] = {}

    def observe_step(self, model: str, busy_slots: int, waiting: int) -> None:
        now = self._clock()
        with self._lock:
            before = self._steps.get(model)
            gap = now - before.at if before is not None else 0.0
            interval = gap if gap <= SLOWEST_STEP_S else 0.0
            self._steps[model] = _Step(now, interval, busy_slots, waiting)

    def observe_occupancy(self, model: str, busy: int, waiting: int) -> None:
        with self._lock:
            self._steps[model] = _Step(self._clock(), 0.0, busy, waiting, exact=True)

    def collect(self) -> Iterable[Metric]:
        slots = GaugeMetricFamily("appliance_engine_slots_busy",
                                  "Slots (chat sequences, whisper or image workers) in use",
                                  labels=["model"])
        queued = GaugeMetricFamily("appliance_engine_queue_depth",
                                   "Requests waiting for a slot", labels=["model"])
        now = self._clock()
        with self._lock:
            steps = dict(self._steps)
        for model, step in sorted(steps.items()):
            idle = not step.exact and now - step.at > max(IDLE_AFTER_S, 3 * step.interval)
            slots.add_metric([model], 0 if idle else step.busy_slots)
            queued.add_metric([model], 0 if idle else step.waiting)
        yield slots
        yield queued


class RouteLabels:
    """Turns a request path into its route template (``/v1/models/{model:path}``)."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def bind(self, routes: Sequence[BaseRoute]) -> None:
        self._routes = [route for route in routes if isinstance(route, Route)]

    def label(self, path: str) -> str:
        for route in self._routes:
            if route.path_regex.match(path):
                return route.path
        return UNMATCHED_ROUTE


class ApplianceMetrics:
    def __init__(self, ledger_lag: Callable[[], float] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.registry = CollectorRegistry()
        self.routes = RouteLabels()
        self.engine_load = EngineLoad(clock)
        self.registry.register(self.engine_load)
        self.health = ModelHealth()  # which models are failing now (for /ready too)
        self.registry.register(self.health)
        self.requests = Counter(
            "appliance_requests", "Finished /v1 requests", ["route", "model", "status", "outcome"],
            registry=self.registry)
        self.latency = Histogram(
            "appliance_request_duration_seconds", "Time from arrival to the last byte",
            ["route", "model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram(
            "appliance_time_to_first_token_seconds", "Time from arrival to the first token",
            ["route", "model"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.generated = Counter(
            "appliance_generated_tokens", "Completion tokens generated", ["model"],
            registry=self.registry)
        self.engine_errors = Counter(
            "appliance_engine_errors", "Requests the server failed (5xx or an error mid-stream)",
            ["model", "code"], registry=self.registry)
        self.speech_characters = Counter(
            "appliance_speech_characters", "Input characters of finished speech requests",
            ["model"], registry=self.registry)
        # Counted by the speech route as each sentence's audio arrives from the engine: how
        # far synthesis has got, while a response is still streaming.
        self.speech_sentences = Counter(
            "appliance_speech_sentences", "Sentences synthesised for speech requests",
            ["model"], registry=self.registry)
        self.step_seconds = Histogram(
            "appliance_engine_step_seconds",
            "Chat decode steps: time from building the batch to the last token sampled",
            ["model"], buckets=STEP_BUCKETS, registry=self.registry)
        self.step_prefill = Histogram(
            "appliance_engine_step_prefill_tokens", "Prompt tokens read per chat decode step",
            ["model"], buckets=PREFILL_BUCKETS, registry=self.registry)
        if ledger_lag is not None:
            Gauge("appliance_ledger_write_lag_seconds",
                  "Age of the oldest row in the ledger writer's last batch when it was written",
                  registry=self.registry).set_function(ledger_lag)

    def observe(self, row: RequestRecord) -> None:
        """Counts one finished request from its final ledger row."""
        route = self.routes.label(row.endpoint)
        model = row.model or "none"
        self.requests.labels(route, model, str(row.http_status), row.status).inc()
        self.latency.labels(route, model).observe(row.latency_ms / 1000.0)
        if row.ttft_ms is not None:
            self.ttft.labels(route, model).observe(row.ttft_ms / 1000.0)
        if row.completion_tokens:
            self.generated.labels(model).inc(row.completion_tokens)
        if row.characters:
            self.speech_characters.labels(model).inc(row.characters)
        if row.status == "error" and not 400 <= row.http_status < 500:
            self.engine_errors.labels(model, row.error_code or "unknown").inc()
        self.health.observe(row)

    def observe_step(self, model: str, busy_slots: int, waiting: int, seconds: float = 0.0,
                     prefill_tokens: int = 0) -> None:
        """Called from a chat engine's decode thread after every step."""
        self.engine_load.observe_step(model, busy_slots, waiting)
        if seconds > 0:
            self.step_seconds.labels(model).observe(seconds)
            self.step_prefill.labels(model).observe(prefill_tokens)

    def observe_occupancy(self, model: str, busy: int, waiting: int) -> None:
        """Called by a worker-pool model (whisper, images) whenever its occupancy changes."""
        self.engine_load.observe_occupancy(model, busy, waiting)


def each(*callbacks: Callable[[RequestRecord], None]) -> Callable[[RequestRecord], None]:
    """One final-row callback that runs several (the quota book, the metrics)."""

    def run(row: RequestRecord) -> None:
        for callback in callbacks:
            callback(row)

    return run
