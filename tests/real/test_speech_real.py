"""Text to speech on the real Piper voice, heard back by the appliance's own whisper model.

Speech made by ``POST /v1/audio/speech`` in every response format is transcribed by
whisper-tiny.en on the same server; the word error rate against the input is printed and held
under a loose bound (a tiny English whisper hears a medium Piper voice well, not perfectly).
A streamed multi-sentence request delivers its first audio while the engine is still
synthesising, shown by event order: when the first chunk arrives, /metrics' count of
synthesised sentences (the route counts each as the engine hands it over) is still short of
the whole text. SSE events validate against OpenAI's spec.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import sqlite3
import wave
from collections.abc import Iterator

import av
import httpx2
import pytest

from appliance.config import SpeechModelConfig
from appliance.engines.base import CancelToken, SpeechAudio, SpeechParams, SpeechStarted
from appliance.engines.speech import PiperSpeechEngine
from devtools.server_harness import PIPER_JOE, create_key
from devtools.word_error import word_error_rate, words
from tests.openapi_contract import validate
from tests.real.closed_engine import assert_refused_once_closed
from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
TEXT = ("The quick brown fox jumps over the lazy dog. "
        "A clear voice reads this sentence for the test.")
# Loose: whisper-tiny.en mishears a word or two of synthetic speech ("the" for "a").
MAX_WORD_ERROR_RATE = 0.35
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SUFFIXES = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}
SENTENCES = [f"This is sentence number {n}, which the voice says in full." for n in range(1, 13)]


def as_wav(pcm: bytes) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(24_000)
        wav.writeframes(pcm)
    return out.getvalue()


def heard(real_server: RealServer, audio: bytes, suffix: str) -> str:
    result = real_server.sdk.audio.transcriptions.create(
        model="whisper-1", file=(f"speech.{suffix}", audio), response_format="text")
    return str(result)


@pytest.fixture(scope="module")
def admin(real_server: RealServer) -> str:
    return create_key(real_server.server.config, "speech-metrics", admin=True)


@pytest.fixture(scope="module")
def http(real_server: RealServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=real_server.server.base_url, timeout=120,
                       headers={"Authorization": f"Bearer {real_server.key}"}) as client:
        yield client


@pytest.mark.parametrize("response_format", FORMATS)
def test_speech_is_heard_back_in_every_format(real_server: RealServer,
                                              response_format: str) -> None:
    response = real_server.sdk.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT,
        response_format=response_format)  # type: ignore[arg-type]
    audio = response.content
    if response_format == "pcm":
        assert len(audio) / 2 / 24_000 > 2.0  # seconds of 24 kHz 16-bit mono
        audio, suffix = as_wav(audio), "wav"
    else:
        suffix = SUFFIXES[response_format]
        with av.open(io.BytesIO(audio)) as container:
            stream = container.streams.audio[0]
            assert stream.codec_context.channels == 1
            assert stream.codec_context.sample_rate == (
                48_000 if response_format == "opus" else 24_000)
    text = heard(real_server, audio, suffix)
    rate = word_error_rate(TEXT, text)
    print(f"\n{response_format}: WER {rate:.2f}, heard {text.strip()!r}")
    assert rate <= MAX_WORD_ERROR_RATE, text


def test_speed_and_the_models_own_voice(real_server: RealServer) -> None:
    lengths = {}
    for speed in (0.5, 1.0, 2.0, 4.0):
        pcm = real_server.sdk.audio.speech.create(
            model="piper-joe-medium", voice="joe", input=TEXT, response_format="pcm",
            speed=speed).content
        lengths[speed] = len(pcm) / 2 / 24_000
    ratios = {speed: length / lengths[1.0] for speed, length in lengths.items()}
    # Slower is Piper's length scale, close to proportional (README, Text to speech); faster
    # is the voice's own pace stretched after, 1 / speed as long (give or take the voice's
    # own randomness in phoneme lengths, a few per cent from one synthesis to the next).
    assert 1.6 < ratios[0.5] < 2.2, ratios
    assert 0.46 < ratios[2.0] < 0.54, ratios
    assert 0.23 < ratios[4.0] < 0.27, ratios


def test_faster_speech_keeps_its_words(real_server: RealServer) -> None:
    pcm = real_server.sdk.audio.speech.create(
        model="piper-joe-medium", voice="joe", input=TEXT, response_format="pcm",
        speed=1.5).content
    text = heard(real_server, as_wav(pcm), "wav")
    rate = word_error_rate(TEXT, text)
    print(f"\nspeed 1.5: WER {rate:.2f}, heard {text.strip()!r}")
    assert rate <= MAX_WORD_ERROR_RATE, text


def sentences_made(http: httpx2.Client, admin: str) -> float:
    text = http.get("/metrics", headers={"Authorization": f"Bearer {admin}"}).text
    match = re.search(r'^appliance_speech_sentences_total\{model="piper-joe-medium"\} (\S+)$',
                      text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_the_first_audio_arrives_before_the_last_sentence_is_made(
        http: httpx2.Client, admin: str) -> None:
    before = sentences_made(http, admin)
    body = {"model": "tts-1", "voice": "echo", "input": " ".join(SENTENCES),
            "response_format": "mp3"}
    chunks: list[bytes] = []
    made_at_first_chunk = None
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/mpeg"
        assert response.headers.get("transfer-encoding") == "chunked"
        for chunk in response.iter_bytes():
            if chunk and made_at_first_chunk is None:
                made_at_first_chunk = sentences_made(http, admin) - before
            chunks.append(chunk)
    total = sentences_made(http, admin) - before
    print(f"\nsentences made when the first audio arrived: {made_at_first_chunk} of {total}")
    assert total == len(SENTENCES)
    assert made_at_first_chunk is not None and made_at_first_chunk < total
    with av.open(io.BytesIO(b"".join(chunks))) as container:
        seconds = sum(f.samples for f in container.decode(audio=0)) / 24_000
    assert seconds > len(SENTENCES) * 1.5


def test_sse_events_validate_and_carry_usage(http: httpx2.Client,
                                             real_server: RealServer) -> None:
    response = http.post("/v1/audio/speech", json={
        "model": "gpt-4o-mini-tts", "voice": "nova", "input": TEXT, "stream_format": "sse",
        "response_format": "pcm"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line.removeprefix("data: ")) for line in response.text.splitlines()
              if line.startswith("data: ")]
    for event in events:
        validate(event, "CreateSpeechResponseStreamEvent")
    *deltas, done = events
    assert len(deltas) >= 2 and {e["type"] for e in deltas} == {"speech.audio.delta"}
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["input_tokens"] > len(words(TEXT))  # phonemes
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    rate = word_error_rate(TEXT, heard(real_server, as_wav(pcm), "wav"))
    assert rate <= MAX_WORD_ERROR_RATE


@pytest.mark.parametrize(("change", "param"), [
    ({"voice": "nobody"}, "voice"),
    ({"response_format": "ogg"}, "response_format"),
    ({"speed": 5}, "speed"),
    ({"input": "x" * 4097}, "input"),
    ({"instructions": "Whisper it."}, "instructions"),
])
def test_bad_requests_are_400s_naming_the_param(http: httpx2.Client, change: dict[str, object],
                                                param: str) -> None:
    response = http.post("/v1/audio/speech",
                         json={"model": "tts-1", "voice": "alloy", "input": "Hi.", **change})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_ledger_row_counts_characters(real_server: RealServer) -> None:
    real_server.sdk.audio.speech.create(model="tts-1", voice="alloy", input="Count me.",
                                        response_format="wav")
    with sqlite3.connect(real_server.server.ledger_path) as db:
        row = db.execute("SELECT model, kind, status, characters, price FROM requests "
                         "WHERE endpoint = '/v1/audio/speech' AND characters = 9 "
                         "ORDER BY started_at DESC LIMIT 1").fetchone()
    assert row == ("piper-joe-medium", "speech", "ok", 9, 0.015)


@pytest.fixture
def engine() -> Iterator[PiperSpeechEngine]:
    """The voice in this process, with one worker, warmed up."""
    loaded = PiperSpeechEngine.load(SpeechModelConfig(id="piper", path=PIPER_JOE, workers=1))
    try:
        loaded.warm_up()
        yield loaded
    finally:
        loaded.close()


def test_another_keys_text_is_spoken_between_the_steps_of_a_long_one(
        engine: PiperSpeechEngine) -> None:
    voice = next(iter(engine.voices.values()))
    finished: list[str] = []

    async def say(text: str, owner: str) -> tuple[SpeechStarted, list[SpeechAudio]]:
        events = [event async for event in engine.speak(
            SpeechParams(text=text, voice=voice, owner=owner), CancelToken())]
        finished.append(owner)
        started, *audio = events
        assert isinstance(started, SpeechStarted)
        return started, [a for a in audio if isinstance(a, SpeechAudio)]

    async def run() -> tuple[list[SpeechAudio], list[SpeechAudio]]:
        first = asyncio.ensure_future(say(" ".join(SENTENCES * 2), "key_a"))
        while engine.occupancy.busy == 0:  # key_a's text holds the worker
            await asyncio.sleep(0.01)
        _, second = await say("Short and sweet.", "key_b")
        started, long = await first
        assert started.sentences == len(long)
        return long, second

    long, short = asyncio.run(run())
    engine.close()
    assert_refused_once_closed(lambda: engine.speak(
        SpeechParams(text="Too late.", voice=voice), CancelToken()))
    assert finished == ["key_b", "key_a"]  # key_b waited for a step, not the whole text
    assert [a.index for a in long] == list(range(2 * len(SENTENCES)))
    assert len(short) == 1 and short[0].seconds > 0.5


def test_a_client_that_stops_reading_holds_no_worker_beyond_one_step_ahead(
        engine: PiperSpeechEngine) -> None:
    voice = next(iter(engine.voices.values()))
    text = " ".join(SENTENCES * 4)  # some 7 s of synthesis here, alone

    async def read_slowly() -> tuple[int, int]:
        events = engine.speak(SpeechParams(text=text, voice=voice), CancelToken())
        await anext(events)  # SpeechStarted
        await anext(events)  # the first sentence
        # One step (about a second) runs ahead of the reader, then the worker stops.
        await asyncio.sleep(2.5)
        busy_while_unread = engine.occupancy.busy
        rest = [event async for event in events]
        return busy_while_unread, 1 + len(rest)

    busy_while_unread, sentences = asyncio.run(read_slowly())
    assert busy_while_unread == 0
    assert sentences == 4 * len(SENTENCES)  # and all of it said once the client reads on
