"""The fast tier's stack for the Responses API: the app over the fake chat engine, with the
real SQLite state store in a temporary folder, driven through the official SDK in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx2
import openai

from appliance.api.app import create_app
from appliance.api.bounds import RequestBounds
from appliance.api.services import Pricing, Services
from appliance.engines.base import CHAT, Listing
from appliance.engines.catalog import Catalog
from appliance.store import SqliteStateStore, StoreBounds
from tests.fakes import FakeChatEngine, FakeKeys, ListLedger

API_KEY = "sk-app-responses-key-0123456789"
OTHER_KEY = "sk-app-responses-other-987654321"
DAY = 86_400.0


@dataclass
class ResponsesStack:
    engine: FakeChatEngine
    ledger: ListLedger
    client: openai.AsyncOpenAI
    other: openai.AsyncOpenAI  # a second key: it must see none of the first key's state
    http: httpx2.AsyncClient
    state: SqliteStateStore | None
    services: Services
    extra: dict[str, Any] = field(default_factory=dict)

    def auth(self, key: str = API_KEY) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}


@asynccontextmanager
async def responses_stack(tmp_path: Path, *, engine: FakeChatEngine | None = None,
                          with_state: bool = True, bounds: RequestBounds | None = None,
                          store_bounds: StoreBounds | None = None
                          ) -> AsyncIterator[ResponsesStack]:
    engine = engine or FakeChatEngine(context_length=256)
    ledger = ListLedger()
    keys = FakeKeys()
    keys.add(API_KEY, "first")
    keys.add(OTHER_KEY, "second")
    state = SqliteStateStore(tmp_path / "state.sqlite", retention_s=30 * DAY,
                             sweep_interval_s=None, bounds=store_bounds) if with_state else None
    services = Services(
        catalog=Catalog([Listing(CHAT, engine, ("gpt-4o-mini",))]),
        ledger=ledger, keys=keys,
        pricing=Pricing(per_request={"fake-chat": 0.25}, currency="USD"),
        bounds=bounds or replace(RequestBounds(), max_body_bytes=256 * 1024),
        state=state,
    )
    transport = httpx2.ASGITransport(app=create_app(services))
    http = httpx2.AsyncClient(transport=transport, base_url="http://appliance.test")
    client = openai.AsyncOpenAI(base_url="http://appliance.test/v1", api_key=API_KEY,
                                http_client=http, max_retries=0)
    other = openai.AsyncOpenAI(base_url="http://appliance.test/v1", api_key=OTHER_KEY,
                               http_client=http, max_retries=0)
    try:
        yield ResponsesStack(engine, ledger, client, other, http, state, services)
    finally:
        await client.close()
        await other.close()
        await http.aclose()
        if state is not None:
            state.close()
