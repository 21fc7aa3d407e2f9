"""Keys, limits, quotas and the durable ledger, through the official SDK over the ASGI app.

The app here runs on a real KeyStore and a real LedgerWriter in tmp_path (fake engines), so
what the tests count is what the ledger file holds.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from appliance.api.app import create_app
from appliance.api.middleware.key_rate import go_duration
from appliance.api.middleware.key_scope import KeyScopedCatalog
from appliance.api.services import Pricing, Services
from appliance.engines.base import CHAT as CHAT_KIND
from appliance.engines.base import EMBEDDING, CancelToken, ChatEvent, ChatParams, Listing
from appliance.engines.catalog import Catalog
from appliance.ledger import KeyLimits, KeyStore, LedgerReports, LedgerWriter, RequestRecord, money
from tests.fakes import FakeChatEngine, FakeEmbeddingEngine
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class GatedChatEngine(FakeChatEngine):
    """Holds every request at its start until ``release`` is set (for concurrency tests)."""

    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def chat(self, params: ChatParams,
                   cancel: CancelToken) -> AsyncGenerator[ChatEvent, None]:
        await self.release.wait()
        async for event in super().chat(params, cancel):
            yield event


@dataclass
class Appliance:
    path: Path
    keys: KeyStore
    ledger: LedgerWriter
    engine: GatedChatEngine
    clock: list[float]
    apps: list[tuple[httpx2.AsyncClient, list[openai.AsyncOpenAI]]] = field(default_factory=list)
    window: float = 60.0
    prices: dict[str, float] = field(default_factory=lambda: {"fake-chat": 0.25})

    def start(self) -> httpx2.AsyncClient:
        services = Services(
            catalog=Catalog([
                Listing(CHAT_KIND, self.engine, ("gpt-4o-mini",)),
                Listing(EMBEDDING, FakeEmbeddingEngine(), ("text-embedding-3-small",))]),
            ledger=self.ledger, keys=self.keys, key_admin=self.keys,
            reports=LedgerReports(self.path / "ledger.sqlite"),
            pricing=Pricing(per_request=self.prices, currency="USD"),
            rate_window_seconds=self.window, clock=lambda: self.clock[0],
        )
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(services)),
                                  base_url="http://appliance.test")
        self.apps.append((http, []))
        return http

    def client(self, secret: str, http: httpx2.AsyncClient | None = None,
               max_retries: int = 0) -> openai.AsyncOpenAI:
        if http is None:
            http = self.apps[-1][0] if self.apps else self.start()
        client = openai.AsyncOpenAI(base_url="http://appliance.test/v1", api_key=secret,
                                    http_client=http, max_retries=max_retries)
        next(clients for h, clients in self.apps if h is http).append(client)
        return client

    def key(self, name: str, admin: bool = False, **limits: Any) -> str:
        return self.keys.create(name, KeyLimits(**limits), admin=admin)[1]

    def rows(self) -> list[RequestRecord]:
        with closing(sqlite3.connect(self.path / "ledger.sqlite")) as conn:
            return [RequestRecord(*row) for row in
                    conn.execute("SELECT * FROM requests ORDER BY started_at")]


@pytest.fixture
async def appliance(tmp_path: Path) -> AsyncIterator[Appliance]:
    engine = GatedChatEngine()
    engine.release.set()
    with KeyStore(tmp_path / "keys.sqlite") as keys, \
            LedgerWriter(tmp_path / "ledger.sqlite") as ledger:
        stack = Appliance(tmp_path, keys, ledger, engine, [1000.0])
        try:
            yield stack
        finally:
            for http, clients in stack.apps:
                for client in clients:
                    await client.close()
                await http.aclose()


async def chat(client: openai.AsyncOpenAI) -> Any:
    return await client.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]


# -- who may call what ----------------------------------------------------------------------

async def test_a_model_outside_the_keys_list_does_not_exist(appliance: Appliance) -> None:
    client = appliance.client(appliance.key("alice", models=("fake-embed",)))
    with pytest.raises(openai.NotFoundError) as hidden:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(**{**CHAT, "model": "no-such-model"})  # type: ignore[call-overload]
    assert hidden.value.body == {**unknown.value.body, "message": unknown.value.body[  # type: ignore[index, dict-item]
        "message"].replace("no-such-model", "fake-chat")}
    assert hidden.value.code == "model_not_found" and hidden.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-4o-mini")
    listed = await client.models.list()
    assert sorted(m.id for m in listed.data) == ["fake-embed", "text-embedding-3-small"]
    assert (await client.embeddings.create(model="text-embedding-3-small", input="x")).data


def test_the_scoped_catalog_overrides_every_catalog_method() -> None:
    public = {name for name in vars(Catalog) if not name.startswith("_")}
    assert public <= set(vars(KeyScopedCatalog))


async def test_refused_keys_say_why(appliance: Appliance) -> None:
    expiring = appliance.key("temp", expires_at=1.0)  # long past
    gone = appliance.key("gone")
    appliance.keys.revoke("gone")
    with pytest.raises(openai.AuthenticationError) as expired:
        await appliance.client(expiring).models.list()
    assert "expired on 1970-01-01T00:00:01Z" in expired.value.message
    with pytest.raises(openai.AuthenticationError) as revoked:
        await appliance.client(gone).models.list()
    assert "was revoked on" in revoked.value.message
    for header in (b"Bearer", b"Bearer two words", b"Basic abc", "Bearer sk-\u00e9t\u00e9".encode(
            "latin-1"), b"bearer", b"Bearer \x01\x02"):
        response = await appliance.apps[-1][0].get("/v1/models",
                                                   headers={b"authorization": header})
        assert response.status_code == 401, header
        validate(response.json(), "ErrorResponse")
    assert {r.http_status for r in appliance.rows()} == {401}


async def test_admin_keys_and_model_keys_stay_apart(appliance: Appliance) -> None:
    admin = appliance.client(appliance.key("ops", admin=True))
    user = appliance.client(appliance.key("alice"))
    with pytest.raises(openai.PermissionDeniedError):
        await admin.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await user.get("/organization/api_keys", cast_to=object)
    assert "admin key" in denied.value.message


# -- rate, concurrency, quota ---------------------------------------------------------------

async def test_rate_limit_headers_on_every_response(appliance: Appliance) -> None:
    client = appliance.client(appliance.key("alice", rpm=3))
    first = await chat(client)
    assert (first.headers["x-ratelimit-limit-requests"],
            first.headers["x-ratelimit-remaining-requests"],
            first.headers["x-ratelimit-reset-requests"]) == ("3", "2", "1m0s")
    response = await appliance.apps[-1][0].get(
        "/v1/models/nope", headers={"authorization": f"Bearer {client.api_key}"})
    assert response.status_code == 404 and response.headers["x-ratelimit-remaining-requests"] == "1"
    appliance.clock[0] += 10.0
    await chat(client)
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    error = limited.value
    validate(error.body and {"error": error.body}, "ErrorResponse")
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    headers = error.response.headers
    assert headers["retry-after"] == "50" and headers["retry-after-ms"] == "50000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1m0s"
    assert "x-should-retry" not in headers


def test_go_durations() -> None:
    assert [go_duration(s) for s in (0.0, 0.0201, 1.5, 59.0, 60.0, 361.25)] == [
        "0ms", "21ms", "1.5s", "59s", "1m0s", "6m1.25s"]


async def test_sdk_retries_honour_retry_after_before_raising(appliance: Appliance) -> None:
    """The clock is frozen: every retry is refused, each after waiting what retry-after said."""
    appliance.window = 0.3
    secret = appliance.key("alice", rpm=1)
    client = appliance.client(secret, appliance.start(), max_retries=2)
    await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    refused = [r for r in appliance.rows() if r.http_status == 429]
    assert len(refused) == 3  # the request and the SDK's two retries, all seen by the server
    gaps = [b.started_at - a.started_at for a, b in itertools.pairwise(refused)]
    assert all(gap >= 0.3 for gap in gaps), gaps  # retry-after-ms said 300


async def test_sdk_retry_succeeds_once_the_window_moves(appliance: Appliance) -> None:
    appliance.window = 0.4
    appliance.clock = [0.0]
    started = time.monotonic()
    appliance.clock = _RealClock(started)  # type: ignore[assignment]
    secret = appliance.key("alice", rpm=1)
    client = appliance.client(secret, appliance.start(), max_retries=2)
    await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    rows = appliance.rows()
    assert [r.http_status for r in rows] == [200, 429, 200]
    assert rows[2].started_at - rows[0].started_at >= 0.4


class _RealClock(list[float]):
    """Looks like the tests' one-element clock list, reads time.monotonic."""

    def __init__(self, origin: float):
        super().__init__([0.0])
        self.origin = origin

    def __getitem__(self, index: Any) -> Any:
        return time.monotonic() - self.origin


async def test_max_concurrent(appliance: Appliance) -> None:
    appliance.engine.release.clear()
    client = appliance.client(appliance.key("alice", max_concurrent=2))
    running = [asyncio.create_task(client.chat.completions.create(**CHAT))  # type: ignore[call-overload]
               for _ in range(2)]
    while len(appliance.rows()) < 2:  # both admitted: their "started" rows are on disk
        await asyncio.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert refused.value.response.headers["retry-after"] == "1"
    assert "concurrent" in refused.value.message
    appliance.engine.release.set()
    await asyncio.gather(*running)
    await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]


async def test_monthly_requests_are_not_retried(appliance: Appliance) -> None:
    client = appliance.client(appliance.key("alice", monthly_requests=2), max_retries=3)
    for _ in range(2):
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as exhausted:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    error = exhausted.value
    assert error.code == "insufficient_quota" and error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    assert "renews on" in error.message
    assert [r.http_status for r in appliance.rows()] == [200, 200, 429]  # no retry came


async def test_monthly_budget_survives_a_restart(appliance: Appliance) -> None:
    secret = appliance.key("alice", monthly_budget=0.5)
    client = appliance.client(secret, max_retries=2)
    await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.NotFoundError):  # refused: price 0, spends nothing
        await client.chat.completions.create(**{**CHAT, "model": "nope"})  # type: ignore[call-overload]
    await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as spent:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert "monthly budget of 0.50 USD" in spent.value.message
    restarted = appliance.client(secret, appliance.start(), max_retries=2)  # a fresh app
    with pytest.raises(openai.RateLimitError) as still:
        await restarted.embeddings.create(model="fake-embed", input="x")
    assert still.value.code == "insufficient_quota"
    assert [r.price for r in appliance.rows()] == [0.25, 0.0, 0.25, 0.0, 0.0]


async def test_a_budget_is_spent_exactly_not_by_float_sums(appliance: Appliance) -> None:
    """25 x 0.0001 in floats is 0.0024999...: a 26th request got past a 0.0025 budget."""
    appliance.prices = {"fake-chat": 0.0001}
    client = appliance.client(appliance.key("alice", monthly_budget=0.0025))
    for _ in range(25):
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as spent:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert "monthly budget of 0.0025 USD (0.0025 spent)" in spent.value.message
    restarted = appliance.client(appliance.keys.create("bob", KeyLimits(
        monthly_budget=0.0025))[1], appliance.start())
    assert (await restarted.chat.completions.create(**CHAT)).choices  # type: ignore[call-overload]


async def test_the_month_counts_the_same_before_and_after_a_restart(
        appliance: Appliance) -> None:
    """The in-memory count skipped 403s (refused at the door) that the ledger's seed counted
    after a restart, which then refused a request the month still had."""
    secret = appliance.key("alice", monthly_requests=3)
    client = appliance.client(secret)
    for _ in range(2):
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    for _ in range(3):
        with pytest.raises(openai.PermissionDeniedError):
            await client.get("/organization/costs", cast_to=object,
                             options={"params": {"start_time": 0}})
    restarted = appliance.client(secret, appliance.start())
    await restarted.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as used:
        await restarted.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert used.value.code == "insufficient_quota" and "its 3 requests" in used.value.message


# -- the ledger -----------------------------------------------------------------------------

async def test_the_row_is_on_disk_before_the_response_ends(appliance: Appliance) -> None:
    client = appliance.client(appliance.key("alice"))
    raw = await chat(client)
    rows = appliance.rows()  # no flush: the response waited for the commit
    assert [(r.request_id, r.status, r.price) for r in rows] == [
        (raw.headers["x-request-id"], "ok", 0.25)]


async def test_exactly_one_row_per_request_under_load(appliance: Appliance) -> None:
    secrets = {name: appliance.key(name) for name in ("a", "b", "c", "d")}
    http = appliance.start()
    clients = {name: [appliance.client(secret, http) for _ in range(5)]
               for name, secret in secrets.items()}
    per_key = {"a": 80, "b": 50, "c": 40, "d": 30}

    async def send(client: openai.AsyncOpenAI, n: int) -> None:
        for i in range(n):
            if i % 3:
                await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            else:
                await client.embeddings.create(model="fake-embed", input="x")

    await asyncio.gather(*(send(c, per_key[name] // 5)
                           for name, group in clients.items() for c in group))
    rows = appliance.rows()
    assert len(rows) == len({r.request_id for r in rows}) == sum(per_key.values())
    ids = {name: appliance.keys.get(name).id for name in secrets}
    assert {name: sum(r.key_id == ids[name] for r in rows) for name in ids} == per_key
    assert {r.status for r in rows} == {"ok"}


# -- the admin API ---------------------------------------------------------------------------

async def test_admin_api_manages_keys(appliance: Appliance) -> None:
    admin = appliance.client(appliance.key("ops", admin=True))
    created: Any = await admin.post("/organization/api_keys", cast_to=object, body={
        "name": "bob", "models": ["gpt-4o-mini"], "rpm": 5, "monthly_budget": 2.5})
    validate({k: v for k, v in created.items() if k != "value"}, "ProjectApiKey")
    assert created["models"] == ["fake-chat"] and created["rpm"] == 5
    bob = appliance.client(created["value"])
    assert (await bob.chat.completions.create(**CHAT)).choices  # type: ignore[call-overload]
    listed: Any = await admin.get("/organization/api_keys", cast_to=object)
    validate(listed, "ProjectApiKeyListResponse")
    assert [k["name"] for k in listed["data"]] == ["ops", "bob"]
    updated: Any = await admin.post(f"/organization/api_keys/{created['id']}", cast_to=object,
                                    body={"rpm": None, "max_concurrent": 2})
    assert (updated["rpm"], updated["max_concurrent"], updated["monthly_budget"]) == (None, 2,
                                                                                      2.5)
    with pytest.raises(openai.BadRequestError) as bad:
        await admin.post("/organization/api_keys", cast_to=object,
                         body={"name": "x", "models": ["gpt-5"]})
    assert bad.value.param == "models[0]"
    with pytest.raises(openai.BadRequestError) as typo:
        await admin.post("/organization/api_keys", cast_to=object, body={"name": "x", "rmp": 1})
    assert typo.value.param == "rmp"
    with pytest.raises(openai.NotFoundError):
        await admin.get("/organization/api_keys/key_000000000000", cast_to=object)
    deleted: Any = await admin.delete(f"/organization/api_keys/{created['id']}", cast_to=object)
    validate(deleted, "ProjectApiKeyDeleteResponse")
    shown: Any = await admin.get(f"/organization/api_keys/{created['id']}", cast_to=object)
    assert shown["owner_project_access"] == "inactive" and shown["revoked_at"] is not None


@pytest.mark.parametrize(("body", "param"), [
    # json reads 1e400 as infinity: the key was stored, and no list could be answered again.
    (b'{"name": "x", "monthly_budget": 1e400}', "monthly_budget"),
    # datetime cannot write past year 9999: `appliance keys list` failed on every key.
    (b'{"name": "x", "expires_at": 9007199254740992}', "expires_at"),
    # Finite, but its spend in billionths overflowed: every request of the key was a 500.
    (b'{"name": "x", "monthly_budget": 1e300}', "monthly_budget"),
    (b'{"name": "x", "monthly_budget": 1e-10}', "monthly_budget"),  # rounds to 0 billionths
    (b'{"name": "sk-team"}', "name"),
    (b'{"name": "ops"}', "name"),  # an active key has that name
    (b'{"name": "n9", "admin": true, "models": ["gpt-4o-mini"]}', "models"),
    (b'{"name": "n9", "admin": true, "monthly_budget": 5}', "monthly_budget"),
    (b'{"name": "n9", "rpm": 0}', "rpm"),
])
async def test_limits_no_answer_or_terminal_could_show_are_refused(
        appliance: Appliance, body: bytes, param: str) -> None:
    http = appliance.start()
    answer = await http.post("/v1/organization/api_keys", content=body, headers={
        "Authorization": f"Bearer {appliance.key('ops', admin=True)}",
        "Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param, answer.text
    assert [k.name for k in appliance.keys.list()] == ["ops"]


async def test_an_id_names_its_key_whatever_others_are_called(appliance: Appliance) -> None:
    admin = appliance.client(appliance.key("ops", admin=True))
    victim = appliance.keys.create("victim")[0]
    with pytest.raises(openai.BadRequestError) as shaped:
        await admin.post("/organization/api_keys", cast_to=object, body={"name": victim.id})
    assert "shape of a key's id" in shaped.value.message
    with pytest.raises(ValueError, match="shape of a key's id"):
        appliance.keys.create("sk-app-decoy")
    decoy = appliance.keys.create("decoy")[0]  # a name from before the rule, as a database
    with closing(sqlite3.connect(appliance.path / "keys.sqlite")) as db, db:  # may hold
        db.execute("UPDATE api_keys SET name = ? WHERE id = ?", [victim.id, decoy.id])
    revoked: Any = await admin.delete(f"/organization/api_keys/{victim.id}", cast_to=object)
    assert revoked["id"] == victim.id
    assert appliance.keys.get(decoy.id).active and not appliance.keys.get(victim.id).active
    with pytest.raises(KeyError, match="not active"):
        appliance.keys.revoke(victim.id)


async def test_organization_usage_and_costs(appliance: Appliance) -> None:
    alice = appliance.client(appliance.key("alice"))
    bob = appliance.client(appliance.key("bob"))
    admin = appliance.client(appliance.key("ops", admin=True))
    for client in (alice, alice, bob):
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    await bob.embeddings.create(model="fake-embed", input="one two")
    with pytest.raises(openai.NotFoundError):
        await bob.chat.completions.create(**{**CHAT, "model": "nope"})  # type: ignore[call-overload]
    start = int(time.time()) - 120
    page: Any = await admin.get("/organization/usage/completions", cast_to=object, options={
        "params": {"start_time": start, "bucket_width": "1d", "group_by": ["api_key_id"]}})
    validate(page, "UsageResponse")
    results = [r for bucket in page["data"] for r in bucket["results"]]
    ids = {appliance.keys.get(n).id: n for n in ("alice", "bob")}
    assert sorted((ids[r["api_key_id"]], r["num_model_requests"], r["output_tokens"])
                  for r in results) == [("alice", 2, 14), ("bob", 1, 7)]
    embeddings: Any = await admin.get("/organization/usage/embeddings", cast_to=object,
                                      options={"params": {"start_time": start,
                                                          "group_by": "model"}})
    validate(embeddings, "UsageResponse")
    assert [r["model"] for b in embeddings["data"] for r in b["results"]] == ["fake-embed"]
    costs: Any = await admin.get("/organization/costs", cast_to=object, options={
        "params": {"start_time": start, "group_by": ["line_item"]}})
    validate(costs, "UsageResponse")
    amounts = [r["amount"] for b in costs["data"] for r in b["results"]]
    assert {"value": 0.75, "currency": "usd"} in amounts
    first: Any = await admin.get("/organization/usage/completions", cast_to=object, options={
        "params": {"start_time": start - 180, "bucket_width": "1m", "limit": 2}})
    validate(first, "UsageResponse")
    assert first["has_more"] and len(first["data"]) == 2
    second: Any = await admin.get("/organization/usage/completions", cast_to=object, options={
        "params": {"start_time": start - 180, "bucket_width": "1m", "limit": 2,
                   "page": first["next_page"]}})
    assert second["data"][0]["start_time"] == first["data"][-1]["end_time"]
    by_alias: Any = await admin.get("/organization/usage/completions", cast_to=object,
                                    options={"params": {"start_time": start,
                                                        "models": "gpt-4o-mini"}})
    assert sum(r["num_model_requests"] for b in by_alias["data"] for r in b["results"]) == 3
    for params, param in (({}, "start_time"), ({"start_time": start, "bucket_width": "1w"},
                                               "bucket_width"),
                          ({"start_time": -86_400}, "start_time"),
                          ({"start_time": start, "page": "page_\u00b2"}, "page"),
                          ({"start_time": start, "page": "page_" + "9" * 5000}, "page"),
                          ({"start_time": start, "group_by": "color"}, "group_by"),
                          ({"start_time": start, "project_ids": "p"}, "project_ids")):
        with pytest.raises(openai.BadRequestError) as bad:
            await admin.get("/organization/usage/completions", cast_to=object,
                            options={"params": params})
        assert bad.value.param == param



async def test_a_long_key_name_is_refused_without_being_quoted_back(
        appliance: Appliance) -> None:
    admin = appliance.client(appliance.key("ops", admin=True))
    with pytest.raises(openai.BadRequestError) as refused:
        await admin.post("/organization/api_keys", cast_to=object, body={"name": "n" * 100_000})
    assert "of 100000 characters" in refused.value.message
    assert len(refused.value.response.content) < 1000


@pytest.mark.parametrize(("amount", "written"), [
    (2.5, "2.50"), (0.0025, "0.0025"), (1e-9, "0.000000001"), (1e12, "1000000000000.00"),
    (1e15, "1000000000000000.00"), (0.1 + 0.2, "0.30")])
def test_money_is_written_as_people_write_it(amount: float, written: str) -> None:
    assert money(amount) == written
