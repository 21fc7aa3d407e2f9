"""The app over fakes with a real SQLite state store, and two keys: what the stored-state tests
(tests/fast/test_state_api.py, tests/hostile/test_state.py) drive through the official SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai

from appliance.api.app import create_app
from appliance.api.services import Services
from appliance.engines.base import CHAT, Listing
from appliance.engines.catalog import Catalog
from appliance.ledger import KeyRecord
from appliance.store import SqliteStateStore, StoreBounds
from tests.fakes import FakeChatEngine, FakeKeys, ListLedger

ALICE_SECRET = "sk-app-alice-0123456789"
BOB_SECRET = "sk-app-bob-9876543210"


@dataclass
class StateStack:
    store: SqliteStateStore
    engine: FakeChatEngine
    ledger: ListLedger
    keys: FakeKeys
    http: httpx2.AsyncClient
    alice: KeyRecord
    bob: KeyRecord
    client: openai.AsyncOpenAI  # Alice's
    other: openai.AsyncOpenAI  # Bob's

    async def raw(self, method: str, path: str, *, secret: str = ALICE_SECRET,
                  **kwargs: Any) -> httpx2.Response:
        return await self.http.request(method, path,
                                       headers={"authorization": f"Bearer {secret}"}, **kwargs)


@asynccontextmanager
async def state_stack(tmp_path: Path, store_bounds: StoreBounds | None = None,
                      **services: Any) -> AsyncIterator[StateStack]:
    engine = FakeChatEngine()
    ledger = ListLedger()
    keys = FakeKeys()
    alice, bob = keys.add(ALICE_SECRET, "alice"), keys.add(BOB_SECRET, "bob")
    store = SqliteStateStore(tmp_path / "state.sqlite", retention_s=30 * 86_400.0,
                             sweep_interval_s=None, bounds=store_bounds)
    app = create_app(Services(catalog=Catalog([Listing(CHAT, engine, ("gpt-4o-mini",))]),
                              ledger=ledger, keys=keys, **{"state": store, **services}))
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app),
                              base_url="http://appliance.test")
    clients = [openai.AsyncOpenAI(base_url="http://appliance.test/v1", api_key=secret,
                                  http_client=http, max_retries=0)
               for secret in (ALICE_SECRET, BOB_SECRET)]
    try:
        yield StateStack(store, engine, ledger, keys, http, alice, bob, *clients)
    finally:
        for client in clients:
            await client.close()
        await http.aclose()
        store.close()
