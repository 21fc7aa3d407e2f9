"""Every operation in our own ``/openapi.json``, fuzzed by schemathesis: valid requests
(positive) and requests that break the documented schema (negative) never get a 5xx, and
every error is OpenAI's envelope.

schemathesis only generates the cases (``operation.as_strategy``) and checks the answers
(``case.validate_response``); requests travel through ``httpx2.ASGITransport`` like the rest
of the fast tier. Its own ASGI transport would run the app on a process-wide portal thread
whose lifespan outlives the test. The test is synchronous and drives the app through one
``asyncio.Runner`` per test: under anyio's pytest plugin, a hypothesis ``StopTest`` raised by
a draw inside the coroutine broke the plugin's runner task.

The app has a real state store (SQLite in the test's folder) holding a conversation with
items, a stored chat completion and a stored response of the fuzzing key, made through the API
itself; half the cases of the stored-state routes name those ids (``draw_case``'s ``ids``), so
that they reach the stored rows instead of a 404, and a case that deleted one makes them anew.

Its conformance checks are not run, only ``not_a_server_error`` and the envelope: the
documented shapes are OpenAI's, and the appliance rightly answers 400 to much that OpenAI's
schema allows (an empty ``model``, parameters it cannot honour, filters by projects it does
not have) and returns base64 embeddings as a string where OpenAI's schema says array.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx2
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from appliance.api.app import create_app
from appliance.api.bounds import RequestBounds
from appliance.api.image_files import ImageFiles
from appliance.api.services import Pricing, Services
from appliance.engines.base import CHAT, EMBEDDING, IMAGE, SPEECH, TRANSCRIPTION, Listing
from appliance.engines.catalog import Catalog
from appliance.ledger import KeyStore, LedgerReports, LedgerWriter
from appliance.store import SqliteStateStore
from devtools.openapi_cases import draw_case, modes, needs_admin, openai_error_envelope, prepare
from tests.fake_audio import FakeTranscriptionEngine
from tests.fake_speech import FakeSpeechEngine
from tests.fakes import FakeChatEngine, FakeEmbeddingEngine, FakeImageEngine

BASE_URL = "http://appliance.test"
# What GET /openapi.json serves
DOCUMENT = resources.files("appliance.api.routes").joinpath("openapi_served.json")
SCHEMA = schemathesis.openapi.from_dict(json.loads(DOCUMENT.read_text(encoding="utf-8")))
OPERATIONS = {result.ok().label: result.ok() for result in SCHEMA.get_all_operations()}
# Served names, so that generated requests also get past the model lookup to the engines.
MODELS = {"/v1/chat/completions": "gpt-4o-mini", "/v1/completions": "fake-chat",
          "/v1/responses": "gpt-4o-mini", "/v1/responses/input_tokens": "fake-chat",
          "/v1/embeddings": "text-embedding-3-small", "/v1/audio/transcriptions": "whisper-1",
          "/v1/audio/translations": "whisper-1", "/v1/images/generations": "dall-e-2"}
# The stored-state routes, by the path parameters that name what they reach.
STATE_PARAMETERS = ("conversation_id", "item_id", "completion_id", "response_id")
EXAMPLES = 30  # per operation and mode: the whole file stays under ~40 s on 2 cores


@dataclass
class Served:
    loop: asyncio.Runner
    http: httpx2.AsyncClient
    user: str
    admin: str
    ids: dict[str, str]  # path parameter -> the id of stored state the user key owns

    def send(self, kwargs: dict[str, Any]) -> httpx2.Response:
        return self.loop.run(_send(self.http, kwargs))

    def seed(self) -> None:
        """A conversation with items, a stored completion and a stored response, made through
        the API (so they are what the routes make), their ids in ``ids``."""
        self.ids.update(self.loop.run(_seed(self.http, self.user)))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with KeyStore(tmp_path / "keys.sqlite") as keys, \
            LedgerWriter(tmp_path / "ledger.sqlite") as ledger, \
            SqliteStateStore(tmp_path / "state.sqlite", retention_s=86_400.0,
                             sweep_interval_s=None) as state, asyncio.Runner() as loop:
        services = Services(
            catalog=Catalog([
                Listing(CHAT, FakeChatEngine(), ("gpt-4o-mini",)),
                Listing(EMBEDDING, FakeEmbeddingEngine(), ("text-embedding-3-small",)),
                Listing(TRANSCRIPTION, FakeTranscriptionEngine(), ("whisper-1",)),
                Listing(IMAGE, FakeImageEngine(), ("dall-e-2",)),
                # tts-1: one of the model names the spec's enum offers the fuzzer.
                Listing(SPEECH, FakeSpeechEngine(), ("tts-1", "gpt-4o-mini-tts"))]),
            ledger=ledger, keys=keys, key_admin=keys,
            reports=LedgerReports(tmp_path / "ledger.sqlite"),
            pricing=Pricing(per_request={"fake-chat": 0.25}, currency="USD"),
            bounds=RequestBounds(max_body_bytes=256 * 1024, max_upload_bytes=64 * 1024),
            commit_wait_seconds=0.5,
            image_files=ImageFiles(tmp_path / "images"),
            state=state,
        )
        user = keys.create("fuzz")[1]
        admin = keys.create("fuzz-admin", admin=True)[1]
        http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(services)),
                                  base_url=BASE_URL)
        try:
            served = Served(loop, http, user, admin, {})
            served.seed()
            yield served
        finally:
            loop.run(http.aclose())


async def _seed(http: httpx2.AsyncClient, key: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}

    async def made(path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await http.post(path, json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        made_body: dict[str, Any] = answer.json()
        return made_body

    message = {"type": "message", "role": "user", "content": "Hi"}
    conversation = await made("/v1/conversations", {"items": [message, message]})
    items = await http.get(f"/v1/conversations/{conversation['id']}/items", headers=headers)
    completion = await made("/v1/chat/completions", {
        "model": "fake-chat", "store": True, "metadata": {"k": "v"},
        "messages": [{"role": "user", "content": "Hi"}]})
    response = await made("/v1/responses", {"model": "fake-chat", "input": "Hi"})
    return {"conversation_id": conversation["id"], "item_id": items.json()["data"][0]["id"],
            "completion_id": completion["id"], "response_id": response["id"]}


async def _send(http: httpx2.AsyncClient, kwargs: dict[str, Any]) -> httpx2.Response:
    wire = prepare(kwargs)
    return await http.request(wire.method, wire.url, headers=wire.headers, content=wire.body)


def _cases() -> list[Any]:
    sign = {GenerationMode.POSITIVE: "+", GenerationMode.NEGATIVE: "-"}
    return [pytest.param(label, mode, id=f"{label} {sign[mode]}")
            for label, operation in OPERATIONS.items() for mode in modes(operation)]


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
@given(data=st.data())
@pytest.mark.parametrize(("label", "mode"), _cases())
def test_operation_never_fails_the_server(served: Served, label: str, mode: GenerationMode,
                                          data: st.DataObject) -> None:
    operation = OPERATIONS[label]
    key = served.admin if needs_admin(operation) else served.user
    case = draw_case(data, operation, mode, key, MODELS, served.ids)
    kwargs = case.as_transport_kwargs(base_url=BASE_URL)
    response = served.send(kwargs)
    if case.method.upper() == "DELETE" and response.status_code == 200:
        served.seed()  # what it deleted may be what the next cases name
    case.validate_response(response, checks=[not_a_server_error, openai_error_envelope],
                           transport_kwargs=kwargs)


def test_the_fuzzed_document_has_the_stored_state_routes(served: Served) -> None:
    # What the app serves is the document fuzzed here.
    answer = served.send({"method": "GET", "url": BASE_URL + "/openapi.json"})
    assert answer.json() == json.loads(DOCUMENT.read_text(encoding="utf-8"))
    reached = {name for operation in OPERATIONS.values()
               for name in (p.name for p in operation.iter_parameters())
               if name in STATE_PARAMETERS}
    assert reached == set(STATE_PARAMETERS)
    for label in ("GET /v1/chat/completions", "POST /v1/conversations",
                  "GET /v1/conversations/{conversation_id}/items",
                  "DELETE /v1/conversations/{conversation_id}/items/{item_id}",
                  "POST /v1/chat/completions/{completion_id}",
                  "GET /v1/responses/{response_id}/input_items",
                  "DELETE /v1/responses/{response_id}"):
        assert label in OPERATIONS, label


def test_the_seeded_ids_reach_stored_state(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.user}"}
    ids = served.ids
    for path in (f"/v1/conversations/{ids['conversation_id']}/items/{ids['item_id']}",
                 f"/v1/chat/completions/{ids['completion_id']}/messages",
                 f"/v1/responses/{ids['response_id']}/input_items"):
        answer = served.send({"method": "GET", "url": BASE_URL + path, "headers": headers})
        assert answer.status_code == 200, (path, answer.text)


# Regressions the fuzzing found: integers past SQLite's 64 bits were 500s.
HUGE = 2**70


@pytest.mark.parametrize(("path", "params", "param"), [
    ("/v1/organization/usage/completions", {"start_time": -HUGE}, "start_time"),
    ("/v1/organization/usage/images", {"start_time": HUGE, "end_time": HUGE + 1}, "start_time"),
    ("/v1/organization/costs", {"start_time": 0, "end_time": HUGE}, "end_time"),
])
def test_huge_usage_times_are_a_400_naming_the_param(served: Served, path: str,
                                                     params: dict[str, int], param: str) -> None:
    response = served.send({"method": "GET", "url": BASE_URL + path, "params": params,
                            "headers": {"Authorization": f"Bearer {served.admin}"}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("field", ["rpm", "max_concurrent", "monthly_requests", "expires_at"])
def test_huge_key_limits_are_a_400_naming_the_param(served: Served, field: str) -> None:
    headers = {"Authorization": f"Bearer {served.admin}"}
    created = served.send({"method": "POST", "url": BASE_URL + "/v1/organization/api_keys",
                           "headers": headers, "json": {"name": "big", field: HUGE}})
    assert created.status_code == 400, created.text
    assert created.json()["error"]["param"] == field
    listed = served.send({"method": "GET", "url": BASE_URL + "/v1/organization/api_keys",
                          "headers": headers}).json()
    key_id = listed["data"][0]["id"]
    updated = served.send({"method": "POST", "headers": headers, "json": {field: HUGE},
                           "url": f"{BASE_URL}/v1/organization/api_keys/{key_id}"})
    assert updated.status_code == 400, updated.text
    assert updated.json()["error"]["param"] == field
