"""/metrics, request ids in logs, the failed-authentication allowance, draining, CORS.

Each test builds its own app over fakes (no shared registry: every app has its own metrics).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx2
import pytest
from starlette.types import Message

from appliance.api.app import create_app
from appliance.api.middleware.failed_auth import FailedAuthLimiter
from appliance.api.services import Exposure, Pricing, Services
from appliance.api.telemetry.logs import log_handler
from appliance.api.telemetry.metrics import ApplianceMetrics
from appliance.engines.base import CHAT as CHAT_KIND
from appliance.engines.base import EMBEDDING, Listing
from appliance.engines.catalog import Catalog
from tests.fakes import FakeChatEngine, FakeEmbeddingEngine, FakeKeys, ListLedger

pytestmark = pytest.mark.anyio
USER_KEY = "sk-user-0123456789abcdef"
ADMIN_KEY = "sk-admin-0123456789abcdef"
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


@dataclasses.dataclass
class Harness:
    services: Services
    ledger: ListLedger
    clock: list[float]

    def client(self) -> httpx2.AsyncClient:
        transport = httpx2.ASGITransport(app=create_app(self.services))
        return httpx2.AsyncClient(transport=transport, base_url="http://appliance.test")


def harness(**overrides: Any) -> Harness:
    keys = FakeKeys()
    keys.add(USER_KEY)
    admin = keys.add(ADMIN_KEY, name="root")
    keys.secrets[ADMIN_KEY] = dataclasses.replace(admin, admin=True)
    ledger = ListLedger()
    clock = [1000.0]
    overrides.setdefault("catalog", Catalog([Listing(CHAT_KIND, FakeChatEngine())]))
    services = Services(
        ledger=ledger, keys=keys, pricing=Pricing(per_request={"fake-chat": 0.25}),
        auth_failures=FailedAuthLimiter(max_failures=3, window_s=60.0, clock=lambda: clock[0]),
        **overrides)
    return Harness(services, ledger, clock)


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with harness().client() as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# -- /metrics --------------------------------------------------------------------------------

async def test_metrics_need_an_admin_key(http: httpx2.AsyncClient) -> None:
    assert (await http.get("/metrics")).status_code == 401
    refused = await http.get("/metrics", headers=bearer(USER_KEY))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_permissions"
    answer = await http.get("/metrics", headers=bearer(ADMIN_KEY))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")


async def test_metrics_can_be_public() -> None:
    async with harness(exposure=Exposure(metrics_public=True)).client() as client:
        assert (await client.get("/metrics")).status_code == 200


async def test_metrics_count_requests_latency_ttft_tokens_by_route_template(
        http: httpx2.AsyncClient) -> None:
    assert (await http.post("/v1/chat/completions", json=CHAT,
                            headers=bearer(USER_KEY))).status_code == 200
    assert (await http.get("/v1/models/no-such-model",
                           headers=bearer(USER_KEY))).status_code == 404
    text = (await http.get("/metrics", headers=bearer(ADMIN_KEY))).text
    chat = 'route="/v1/chat/completions",status="200"'
    assert f'appliance_requests_total{{model="fake-chat",outcome="ok",{chat}}} 1.0' in text
    assert ('appliance_requests_total{model="none",outcome="error",'
            'route="/v1/models/{model:path}",status="404"} 1.0') in text
    assert ('appliance_request_duration_seconds_count{model="fake-chat",'
            'route="/v1/chat/completions"} 1.0') in text
    assert 'appliance_generated_tokens_total{model="fake-chat"}' in text
    assert "no-such-model" not in text  # paths never become labels


def test_engine_errors_slots_and_ledger_lag() -> None:
    clock = [0.0]
    metrics = ApplianceMetrics(ledger_lag=lambda: 0.25, clock=lambda: clock[0])
    metrics.observe_step("fake-chat", busy_slots=3, waiting=2)
    assert _sample(metrics, "appliance_engine_slots_busy", model="fake-chat") == 3
    assert _sample(metrics, "appliance_engine_queue_depth", model="fake-chat") == 2
    clock[0] = 0.9
    assert _sample(metrics, "appliance_engine_slots_busy", model="fake-chat") == 3
    clock[0] = 6.0  # no step for a while: the scheduler is idle
    assert _sample(metrics, "appliance_engine_slots_busy", model="fake-chat") == 0
    metrics.observe_step("fake-chat", busy_slots=1, waiting=0)
    clock[0] = 8.0
    metrics.observe_step("fake-chat", busy_slots=1, waiting=0)  # steps 2 s apart (busy CPU)
    clock[0] = 13.0
    assert _sample(metrics, "appliance_engine_slots_busy", model="fake-chat") == 1
    clock[0] = 14.1
    assert _sample(metrics, "appliance_engine_slots_busy", model="fake-chat") == 0
    assert _sample(metrics, "appliance_ledger_write_lag_seconds") == 0.25


def test_worker_pool_occupancy_is_reported_as_it_changes_and_never_goes_stale() -> None:
    clock = [0.0]
    metrics = ApplianceMetrics(clock=lambda: clock[0])
    metrics.observe_occupancy("whisper", 2, 5)
    clock[0] = 600.0  # one long transcription: no change for minutes is not idleness
    assert _sample(metrics, "appliance_engine_slots_busy", model="whisper") == 2
    assert _sample(metrics, "appliance_engine_queue_depth", model="whisper") == 5
    metrics.observe_occupancy("whisper", 0, 0)
    assert _sample(metrics, "appliance_engine_slots_busy", model="whisper") == 0


async def test_a_failing_model_shows_in_ready_and_metrics_and_the_others_serve() -> None:
    broken = FakeChatEngine()
    setup = harness(catalog=Catalog([Listing(CHAT_KIND, broken),
                                      Listing(EMBEDDING, FakeEmbeddingEngine())]),
                    exposure=Exposure(metrics_public=True))
    async with setup.client() as client:
        ready = await client.get("/ready")
        assert ready.json()["status"] == "ready" and ready.json()["failing"] == {}
        broken.fail_after = 0  # the engine breaks: every generation raises
        for _ in range(2):
            failed = await client.post("/v1/chat/completions", json=CHAT,
                                       headers=bearer(USER_KEY))
            assert failed.status_code == 500
            assert failed.json()["error"]["type"] == "server_error"
        embedded = await client.post("/v1/embeddings", headers=bearer(USER_KEY),
                                     json={"model": "fake-embed", "input": "still here"})
        assert embedded.status_code == 200  # the other model is not taken down
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "degraded"
        assert ready.json()["failing"]["fake-chat"]["consecutive_failures"] == 2
        assert ready.json()["failing"]["fake-chat"]["last_error_code"] == "engine_error"
        text = (await client.get("/metrics")).text
        assert 'appliance_model_up{model="fake-chat"} 0.0' in text
        assert 'appliance_model_up{model="fake-embed"} 1.0' in text
        # A bad request says nothing about the engine; a success ends the failing run.
        assert (await client.post("/v1/chat/completions", headers=bearer(USER_KEY),
                                  json={**CHAT, "n": 0})).status_code == 400
        assert (await client.get("/ready")).json()["status"] == "degraded"
        broken.fail_after = None
        assert (await client.post("/v1/chat/completions", json=CHAT,
                                  headers=bearer(USER_KEY))).status_code == 200
        assert (await client.get("/ready")).json() == {
            "status": "ready", "models": ["fake-chat", "fake-embed"], "failing": {}}
        assert 'appliance_model_up{model="fake-chat"} 1.0' in (await client.get("/metrics")).text


def _sample(metrics: ApplianceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


# -- logs ------------------------------------------------------------------------------------

@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = log_handler("json", stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_json_lines_carry_the_request_id_and_one_access_line(
        http: httpx2.AsyncClient, json_log: io.StringIO) -> None:
    body = {**CHAT, "a_field_from_the_future": 1}  # logged as unknown: a line mid-request
    answer = await http.post("/v1/chat/completions", json=body, headers=bearer(USER_KEY))
    request_id = answer.headers["x-request-id"]
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    mine = [line for line in lines if line["request_id"] == request_id]
    assert len(mine) >= 2, lines
    assert not [line for line in lines if line["request_id"] is None
                and line["logger"].startswith("appliance.api")]
    access = [line for line in mine if line["logger"] == "appliance.access"]
    assert len(access) == 1
    assert access[0]["status"] == 200 and access[0]["path"] == "/v1/chat/completions"
    assert access[0]["model"] == "fake-chat"


async def test_keys_never_reach_the_logs(http: httpx2.AsyncClient, json_log: io.StringIO,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-secret-9876543210"
    await http.post("/v1/chat/completions", json=CHAT, headers=bearer(USER_KEY))
    await http.get("/v1/models", headers=bearer(wrong))
    await http.get("/metrics", headers=bearer(ADMIN_KEY))
    await http.get("/v1/models", headers={"Authorization": f"Basic {wrong}"})
    logged = json_log.getvalue() + caplog.text
    assert "appliance.access" in logged
    for secret in (USER_KEY, ADMIN_KEY, wrong):
        assert secret not in logged


# -- failed authentications ------------------------------------------------------------------

async def test_failed_authentications_are_limited_per_address() -> None:
    setup = harness()
    async with setup.client() as client:
        for _ in range(3):
            assert (await client.get("/v1/models", headers=bearer("sk-guess-1234567890"))
                    ).status_code == 401
        refused = await client.get("/v1/models", headers=bearer(USER_KEY))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after"]) == 60
        assert (await client.get("/metrics", headers=bearer(ADMIN_KEY))).status_code == 429
        setup.clock[0] += 61
        assert (await client.get("/v1/models", headers=bearer(USER_KEY))).status_code == 200


def test_the_allowance_is_per_address() -> None:
    limiter = FailedAuthLimiter(max_failures=1, window_s=10, clock=lambda: 0.0)
    limiter.failed("10.0.0.1")
    limiter.check("10.0.0.2")
    with pytest.raises(Exception, match="Too many failed authentications"):
        limiter.check("10.0.0.1")


# -- draining --------------------------------------------------------------------------------

async def test_a_draining_server_refuses_new_work_with_retry_after() -> None:
    setup = harness()
    async with setup.client() as client:
        assert (await client.get("/ready")).status_code == 200
        setup.services.drain.begin()
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "shutting_down"
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(USER_KEY))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.headers["x-request-id"]
        assert setup.ledger.rows[-1].http_status == 503
        assert setup.ledger.rows[-1].error_code == "shutting_down"
        assert (await client.get("/health")).status_code == 200
    assert setup.services.drain.in_flight == 0


# -- clients that leave ------------------------------------------------------------------------

@pytest.mark.parametrize(("path", "content_type", "partial"), [
    ("/v1/chat/completions", b"application/json", b'{"model": "fake-chat", "mess'),
    ("/v1/audio/transcriptions", b"multipart/form-data; boundary=XyZ",
     b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'),
])
async def test_a_client_that_leaves_mid_body_is_cancelled_not_a_server_error(
        path: str, content_type: bytes, partial: bytes, caplog: pytest.LogCaptureFixture) -> None:
    setup = harness()
    app = create_app(setup.services)
    arriving: list[Message] = [{"type": "http.request", "body": partial, "more_body": True}]
    sent: list[Message] = []

    async def receive() -> Message:
        return arriving.pop(0) if arriving else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "server": ("appliance.test", 80),
             "client": ("10.0.0.9", 5000),
             "headers": [(b"host", b"appliance.test"), (b"content-type", content_type),
                         (b"content-length", b"100000"),
                         (b"authorization", f"Bearer {USER_KEY}".encode())]}
    with caplog.at_level(logging.INFO):
        await app(scope, receive, send)
    assert [row.status for row in setup.ledger.rows] == ["cancelled"]
    assert not any(m.get("status", 0) >= 500 for m in sent)
    assert not any(record.levelno >= logging.ERROR for record in caplog.records)


# -- CORS ------------------------------------------------------------------------------------

PREFLIGHT = {"Origin": "http://lan.test:3000", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type"}


async def test_cors_is_off_by_default(http: httpx2.AsyncClient) -> None:
    answer = await http.options("/v1/chat/completions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in answer.headers


async def test_cors_allows_the_configured_origins() -> None:
    exposure = Exposure(cors_origins=("http://lan.test:3000",))
    async with harness(exposure=exposure).client() as client:
        preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://lan.test:3000"
        other = await client.options("/v1/chat/completions",
                                     headers={**PREFLIGHT, "Origin": "http://evil.test"})
        assert other.status_code == 400
        answer = await client.get("/v1/models", headers={
            **bearer(USER_KEY), "Origin": "http://lan.test:3000"})
        assert answer.headers["access-control-allow-origin"] == "http://lan.test:3000"
        assert "x-request-id" in answer.headers["access-control-expose-headers"]


async def test_draining_waits_for_in_flight_requests_at_most_the_grace_period() -> None:
    state = harness().services.drain
    request = asyncio.ensure_future(asyncio.sleep(60))
    state.entered(request)
    assert not await state.wait_idle(0.01)
    assert state.cut_all() == 1 and state.was_cut(request)
    with pytest.raises(asyncio.CancelledError):
        await request
    state.left(request)
    assert await state.wait_idle(0.01)
    assert state.in_flight == 0


def test_decode_steps_fill_the_step_time_and_prefill_histograms() -> None:
    metrics = ApplianceMetrics()
    metrics.observe_step("fake-chat", 2, 0, seconds=0.04, prefill_tokens=0)
    metrics.observe_step("fake-chat", 2, 0, seconds=0.09, prefill_tokens=24)
    assert _sample(metrics, "appliance_engine_step_seconds_count", model="fake-chat") == 2
    assert _sample(metrics, "appliance_engine_step_seconds_bucket", model="fake-chat",
                   le="0.05") == 1
    assert _sample(metrics, "appliance_engine_step_prefill_tokens_sum", model="fake-chat") == 24
    assert _sample(metrics, "appliance_engine_step_prefill_tokens_bucket", model="fake-chat",
                   le="32.0") == 2


@dataclasses.dataclass
class _BuggyEmbedder(FakeEmbeddingEngine):
    """Fails with a plain exception, as a bug would, not an engine's failure."""

    async def embed(self, *args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")


async def test_a_bug_is_an_internal_error_not_an_engines(
        caplog: pytest.LogCaptureFixture) -> None:
    setup = harness(catalog=Catalog([Listing(CHAT_KIND, FakeChatEngine()),
                                     Listing(EMBEDDING, _BuggyEmbedder())]))
    async with setup.client() as client:
        failed = await client.post("/v1/embeddings", headers=bearer(USER_KEY),
                                   json={"model": "fake-embed", "input": "x"})
    assert failed.status_code == 500
    assert failed.json()["error"] == {
        "message": "The server had an error while processing your request.",
        "type": "server_error", "param": None, "code": "internal_error"}
    assert setup.ledger.rows[-1].error_code == "internal_error"
    assert [r.getMessage() for r in caplog.records if r.exc_info] == [
        "unhandled error in POST /v1/embeddings"]
