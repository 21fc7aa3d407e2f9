"""POST /v1/audio/speech over a fake engine, through the official SDK: every format's bytes
and content type, both stream formats, voices, speed, bounds, and what a leaving client
stops."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx2
import openai
import pytest

from appliance.api.app import create_app
from appliance.api.bounds import RequestBounds
from appliance.api.services import Pricing, Services
from appliance.engines.base import CHAT, SPEECH, Listing
from appliance.engines.catalog import Catalog
from appliance.ledger import KeyLimits, KeyStore, LedgerReports, LedgerWriter
from tests.fake_speech import SENTENCE_SECONDS, FakeSpeechEngine
from tests.fakes import FakeChatEngine, FakeKeys, ListLedger
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
KEY = "sk-app-speech-test-0123456789"
AUTH = {"authorization": f"Bearer {KEY}"}
TWO = "Hello there. General Kenobi."
MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac",
               "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}


@dataclass
class SpeechStack:
    engine: FakeSpeechEngine
    ledger: ListLedger
    app: Any
    client: openai.AsyncOpenAI
    http: httpx2.AsyncClient


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def speech(tmp_path: Path) -> AsyncIterator[SpeechStack]:
    engine = FakeSpeechEngine()
    keys = FakeKeys()
    keys.add(KEY)
    ledger = ListLedger()
    services = Services(
        catalog=Catalog([Listing(CHAT, FakeChatEngine(), ("gpt-4o-mini",)),
                         Listing(SPEECH, engine, ("tts-1", "gpt-4o-mini-tts"))]),
        ledger=ledger, keys=keys,
        pricing=Pricing(per_request={"fake-speech": 0.015}, currency="USD"),
        bounds=RequestBounds(max_body_bytes=64 * 1024))
    app = create_app(services)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app),
                              base_url="http://appliance.test")
    client = openai.AsyncOpenAI(base_url="http://appliance.test/v1", api_key=KEY,
                                http_client=http, max_retries=0)
    try:
        yield SpeechStack(engine, ledger, app, client, http)
    finally:
        await client.close()
        await http.aclose()


def decoded(data: bytes) -> tuple[str, int, int, float]:
    """(container, sample rate, channels, seconds) of an encoded file, as FFmpeg reads it."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        # Ogg Opus always decodes at 48 kHz; the stream header keeps the input rate.
        return (container.format.name, stream.codec_context.sample_rate,
                stream.codec_context.channels, samples / stream.codec_context.sample_rate)


async def test_the_sdk_speaks_mp3_by_default(speech: SpeechStack) -> None:
    response = await speech.client.audio.speech.create(model="tts-1", voice="alloy", input=TWO)
    assert response.response.headers["content-type"] == "audio/mpeg"
    container, rate, channels, seconds = decoded(response.content)
    assert (container, rate, channels) == ("mp3", 24_000, 1)
    assert seconds == pytest.approx(2 * SENTENCE_SECONDS, abs=0.1)
    [call] = speech.engine.calls
    assert (call.text, call.voice, call.speed) == (TWO, "amy", 1.0)
    row = speech.ledger.rows[-1]
    assert (row.model, row.kind, row.status, row.characters, row.price) == \
        ("fake-speech", "speech", "ok", len(TWO), 0.015)
    assert row.prompt_tokens == len(TWO) and row.completion_tokens > 0


@pytest.mark.parametrize("response_format", sorted(MEDIA_TYPES))
async def test_every_format_has_its_content_type_at_24_khz(speech: SpeechStack,
                                                          response_format: Any) -> None:
    response = await speech.client.audio.speech.create(
        model="gpt-4o-mini-tts", voice="echo", input=TWO, response_format=response_format)
    assert response.response.headers["content-type"] == MEDIA_TYPES[response_format]
    data = response.content
    if response_format == "pcm":  # 24 kHz 16-bit mono little-endian, no header
        assert len(data) % 2 == 0
        assert len(data) / 2 / 24_000 == pytest.approx(2 * SENTENCE_SECONDS, abs=0.01)
        return
    container, rate, channels, seconds = decoded(data)
    assert CONTAINERS[response_format] in container
    expected_rate = 48_000 if response_format == "opus" else 24_000
    assert (rate, channels) == (expected_rate, 1)
    assert seconds == pytest.approx(2 * SENTENCE_SECONDS, abs=0.1)


async def test_a_streamed_wav_says_its_length_is_unknown(speech: SpeechStack) -> None:
    response = await speech.client.audio.speech.create(model="tts-1", voice="alloy",
                                                       input=TWO, response_format="wav")
    data = response.content
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"
    assert data[36:40] == b"data" and data[40:44] == b"\xff\xff\xff\xff"
    with wave.open(io.BytesIO(data)) as wav:  # Python's wave reads it to the end
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24_000, 1, 2)
        assert len(wav.readframes(10**9)) == len(data) - 44


async def test_with_streaming_response_streams_to_a_file(speech: SpeechStack,
                                                         tmp_path: Path) -> None:
    target = tmp_path / "speech.flac"
    async with speech.client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=TWO, response_format="flac") as response:
        assert response.headers["content-type"] == "audio/flac"
        await response.stream_to_file(target)
    assert decoded(target.read_bytes())[:3] == ("flac", 24_000, 1)


async def test_sse_events_are_the_specs_with_usage(speech: SpeechStack) -> None:
    response = await speech.http.post("/v1/audio/speech", headers=AUTH, json={
        "model": "tts-1", "voice": "alloy", "input": TWO, "stream_format": "sse",
        "response_format": "pcm"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines()
              if line.startswith("data: ")]
    for event in events:
        validate(event, "CreateSpeechResponseStreamEvent")
    *deltas, done = events
    assert {e["type"] for e in deltas} == {"speech.audio.delta"} and len(deltas) >= 2
    assert done["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) / 2 / 24_000 == pytest.approx(2 * SENTENCE_SECONDS, abs=0.01)
    usage = done["usage"]
    assert usage["input_tokens"] == len(TWO) and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_voices_the_models_own_and_a_custom_voice_object(speech: SpeechStack) -> None:
    for voice in ("bob", {"id": "bob"}):
        response = await speech.http.post("/v1/audio/speech", headers=AUTH, json={
            "model": "tts-1", "voice": voice, "input": "Hi.", "response_format": "pcm"})
        assert response.status_code == 200, response.text
    assert [c.voice for c in speech.engine.calls] == ["bob", "bob"]


async def test_speed_shortens_the_audio(speech: SpeechStack) -> None:
    lengths = {}
    for speed in (1.0, 2.0, 0.5):
        response = await speech.client.audio.speech.create(
            model="tts-1", voice="alloy", input="One sentence.", response_format="pcm",
            speed=speed)
        lengths[speed] = len(response.content) / 2 / 24_000
    assert lengths[2.0] == pytest.approx(lengths[1.0] / 2, abs=0.01)
    assert lengths[0.5] == pytest.approx(lengths[1.0] * 2, abs=0.01)
    assert [c.speed for c in speech.engine.calls] == [1.0, 2.0, 0.5]


@pytest.mark.parametrize(("change", "param", "says"), [
    ({"input": "x" * 4097}, "input", "4096"),
    ({"input": ""}, "input", "empty"),
    ({"input": "   \n"}, "input", "empty"),
    ({"input": "... !!! ???"}, "input", "nothing to say"),
    ({"input": 7}, "input", "string"),
    ({"speed": 0.2}, "speed", "0.25"),
    ({"speed": 4.5}, "speed", "4"),
    ({"speed": "fast"}, "speed", "number"),
    ({"response_format": "ogg"}, "response_format", "mp3"),
    ({"stream_format": "chunks"}, "stream_format", "sse"),
    ({"voice": "nobody"}, "voice", "alloy, amy, ash"),
    ({"voice": {"id": "nobody"}}, "voice", "valid voices"),
    ({"voice": "v" * 300}, "voice", "256"),
    ({"voice": {"id": "v" * 300}}, "voice", "256"),
    ({"model": "m" * 300}, "model", "256"),
    ({"instructions": "Speak like a pirate."}, "instructions", "instructions"),
    ({"instructions": "x" * 4097}, "instructions", "4096"),
    ({"model": "gpt-4o-mini"}, "model", "speech"),
])
async def test_bad_fields_are_400s_naming_them(speech: SpeechStack, change: dict[str, Any],
                                              param: str, says: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello.", **change}
    response = await speech.http.post("/v1/audio/speech", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert says in error["message"]


async def test_missing_fields_and_unknown_model(speech: SpeechStack) -> None:
    for missing in ("model", "input", "voice"):
        body = {"model": "tts-1", "voice": "alloy", "input": "Hello."}
        del body[missing]
        response = await speech.http.post("/v1/audio/speech", headers=AUTH, json=body)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == missing
    with pytest.raises(openai.NotFoundError):
        await speech.client.audio.speech.create(model="tts-9", voice="alloy", input="Hi.")


async def test_a_full_queue_is_a_503(speech: SpeechStack) -> None:
    speech.engine.overloaded = True
    with pytest.raises(openai.InternalServerError) as raised:
        await speech.client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    assert raised.value.status_code == 503


async def _drive(app: Any, body: dict[str, Any], after_first_chunk: str,
                 log: list[str]) -> list[dict[str, Any]]:
    """The request through the ASGI app by hand, so the test sees each message the moment
    the server sends it. ``after_first_chunk``: "stay" reads on, "leave" disconnects."""
    payload = json.dumps(body).encode()
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/audio/speech", "raw_path": b"/v1/audio/speech", "query_string": b"",
             "root_path": "", "headers": [(b"host", b"appliance.test"),
                                          (b"content-type", b"application/json"),
                                          (b"authorization", AUTH["authorization"].encode())],
             "client": ("127.0.0.1", 5000), "server": ("appliance.test", 80)}
    sent: list[dict[str, Any]] = []
    body_sent = False
    first_chunk = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        if after_first_chunk == "leave":
            await first_chunk.wait()
            return {"type": "http.disconnect"}
        await asyncio.Event().wait()  # a client that stays never says more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            log.append("sent")
            if not first_chunk.is_set():
                first_chunk.set()
                if after_first_chunk == "leave":
                    await asyncio.sleep(0.05)  # the disconnect is seen before the next send
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return sent


async def test_the_first_audio_leaves_before_the_last_sentence_is_made(
        speech: SpeechStack) -> None:
    text = " ".join(f"Sentence number {n}." for n in range(6))
    await _drive(speech.app, {"model": "tts-1", "voice": "alloy", "input": text,
                              "response_format": "pcm"}, "stay", speech.engine.log)
    log = speech.engine.log
    assert log.index("sent") < log.index("made 5")
    # Sentence by sentence: each is sent before the next is made.
    assert log[:4] == ["made 0", "sent", "made 1", "sent"]


async def test_a_client_that_leaves_stops_the_synthesis(speech: SpeechStack) -> None:
    text = " ".join(f"Sentence number {n}." for n in range(40))
    await _drive(speech.app, {"model": "tts-1", "voice": "alloy", "input": text,
                              "response_format": "mp3"}, "leave", speech.engine.log)
    # Stopped by the time the response is over: not left to the loop's finaliser.
    made = [entry for entry in speech.engine.log if entry.startswith("made")]
    assert 1 <= len(made) < 40
    assert len(speech.engine.stopped) == 1
    assert speech.ledger.rows[-1].status in ("cancelled", "ok")


async def test_the_usage_report_counts_characters(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "keys.sqlite") as keys, \
            LedgerWriter(tmp_path / "ledger.sqlite") as ledger:
        services = Services(
            catalog=Catalog([Listing(SPEECH, FakeSpeechEngine(), ("tts-1",))]),
            ledger=ledger, keys=keys, key_admin=keys,
            reports=LedgerReports(tmp_path / "ledger.sqlite"),
            pricing=Pricing(per_request={"fake-speech": 0.015}, currency="USD"))
        user = keys.create("user", KeyLimits())[1]
        admin = keys.create("admin", KeyLimits(), admin=True)[1]
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(services)),
                                      base_url="http://appliance.test") as http:
            for text in ("Hello there.", "General Kenobi."):
                spoken = await http.post("/v1/audio/speech", headers=bearer(user), json={
                    "model": "tts-1", "voice": "alloy", "input": text})
                assert spoken.status_code == 200
            for _ in range(100):  # the ledger writer commits on its own thread
                page = (await http.get(
                    "/v1/organization/usage/audio_speeches", headers=bearer(admin),
                    params={"start_time": int(time.time()) - 60, "group_by": "model"})).json()
                results = [r for bucket in page["data"] for r in bucket["results"]]
                if results and results[0]["num_model_requests"] == 2:
                    break
                await asyncio.sleep(0.02)
    validate(page, "UsageResponse")
    assert results == [{"object": "organization.usage.audio_speeches.result",
                        "characters": len("Hello there.") + len("General Kenobi."),
                        "num_model_requests": 2, "project_id": None, "user_id": None,
                        "api_key_id": None, "model": "fake-speech"}]


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}
