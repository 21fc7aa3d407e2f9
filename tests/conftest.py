"""Shared fixtures: an app over fakes, driven by the official SDK in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai
import pytest

from appliance.api.app import create_app
from appliance.api.bounds import RequestBounds
from appliance.api.image_files import ImageFiles
from appliance.api.services import Pricing, Services
from appliance.engines.base import CHAT, EMBEDDING, IMAGE, SPEECH, TRANSCRIPTION, Listing
from appliance.engines.catalog import Catalog
from tests.fake_audio import FakeTranscriptionEngine
from tests.fake_speech import FakeSpeechEngine
from tests.fakes import (
    FakeChatEngine,
    FakeEmbeddingEngine,
    FakeImageEngine,
    FakeKeys,
    ListLedger,
)
from tests.real.session_server import real_server  # noqa: F401  (the shared session fixture)

API_KEY = "sk-app-test-key-0123456789"


@dataclass
class FastStack:
    engine: FakeChatEngine
    ledger: ListLedger
    keys: FakeKeys
    client: openai.AsyncOpenAI
    http: httpx2.AsyncClient
    painter: FakeImageEngine
    image_files: ImageFiles


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[FastStack]:
    engine = FakeChatEngine()
    painter = FakeImageEngine()
    image_files = ImageFiles(tmp_path / "images")
    ledger = ListLedger()
    keys = FakeKeys()
    keys.add(API_KEY)
    services = Services(
        catalog=Catalog([Listing(CHAT, engine, ("gpt-4o-mini",)),
                         Listing(EMBEDDING, FakeEmbeddingEngine(), ("text-embedding-3-small",)),
                         Listing(TRANSCRIPTION, FakeTranscriptionEngine(), ("whisper-1",)),
                         Listing(IMAGE, painter, ("dall-e-2",)),
                         # A model that reasons, under the alias of one of OpenAI's.
                         Listing(CHAT, FakeChatEngine(model_id="fake-think", reasoning="think"),
                                 ("o4-mini",)),
                         Listing(SPEECH, FakeSpeechEngine(), ("tts-1", "gpt-4o-mini-tts"))]),
        ledger=ledger,
        keys=keys,
        pricing=Pricing(per_request={"fake-chat": 0.25, "fake-image": 0.04}, currency="USD"),
        bounds=RequestBounds(max_body_bytes=64 * 1024, max_upload_bytes=2048),
        image_files=image_files,
    )
    transport = httpx2.ASGITransport(app=create_app(services))
    http = httpx2.AsyncClient(transport=transport, base_url="http://appliance.test")
    client = openai.AsyncOpenAI(base_url="http://appliance.test/v1", api_key=API_KEY,
                                http_client=http, max_retries=0)
    try:
        yield FastStack(engine, ledger, keys, client, http, painter, image_files)
    finally:
        await client.close()
        await http.aclose()
