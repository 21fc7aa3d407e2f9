"""Speech to text on the real whisper models, through the official SDK, on synthesized speech."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

import faster_whisper.vad
import httpx2
import openai
import pytest

from appliance.config import TranscriptionModelConfig
from appliance.engines.base import CancelToken, Segment, TranscriptionParams
from appliance.engines.whisper import WhisperEngine
from devtools.server_harness import WHISPER_TINY
from tests.real.closed_engine import assert_refused_once_closed
from tests.real.conftest import RealServer
from tests.real.speech import ENCODINGS, encode, silence, speak
from tests.real.test_chat_real import ledger_row

pytestmark = pytest.mark.real
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speak(SENTENCE, tmp_path_factory.mktemp("speech") / "fox.wav")


def words_of(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split()}


def test_transcript_has_the_words_and_duration_usage(real_server: RealServer,
                                                     speech: Path) -> None:
    with speech.open("rb") as audio:
        result = real_server.sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    assert {"quick", "brown", "fox", "lazy", "dog"} <= words_of(result.text)
    assert result.usage is not None and result.usage.type == "duration"
    assert 2.0 < result.usage.seconds < 5.0  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", sorted(ENCODINGS))
def test_every_container_decodes(real_server: RealServer, speech: Path, kind: str) -> None:
    encoded = encode(speech, kind)
    with encoded.open("rb") as audio:
        text = real_server.sdk.audio.transcriptions.create(model="whisper-1", file=audio,
                                                           response_format="text")
    assert {"fox", "dog"} <= words_of(text)


def test_verbose_json_words_and_segments(real_server: RealServer, speech: Path) -> None:
    with speech.open("rb") as audio:
        verbose = real_server.sdk.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json",
            timestamp_granularities=["word", "segment"])
    assert verbose.language == "english"
    assert verbose.segments and verbose.words
    assert verbose.segments[0].start == 0.0 and verbose.segments[-1].end <= verbose.duration + 0.5
    starts = [w.start for w in verbose.words]
    assert starts == sorted(starts)
    assert any(w.word.lower().strip(".,") == "fox" for w in verbose.words)
    assert all(w.end >= w.start for w in verbose.words)


def test_srt_and_vtt(real_server: RealServer, speech: Path) -> None:
    for response_format, head in (("srt", "1\n00:00:00,000 --> "), ("vtt", "WEBVTT\n\n00:00")):
        with speech.open("rb") as audio:
            body = real_server.sdk.audio.transcriptions.create(
                model="whisper-1", file=audio, response_format=response_format)  # type: ignore[call-overload]
        assert body.startswith(head) and "fox" in body.lower()


def test_stream_events_add_up_to_the_text(real_server: RealServer, speech: Path) -> None:
    with speech.open("rb") as audio:
        events = list(real_server.sdk.audio.transcriptions.create(model="whisper-1", file=audio,
                                                                  stream=True))
    assert events[-1].type == "transcript.text.done"
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas == events[-1].text and "fox" in deltas.lower()


def test_translation_on_the_multilingual_model(real_server: RealServer, tmp_path: Path) -> None:
    german = speak("Ich habe einen kleinen Hund und eine schwarze Katze.", tmp_path / "de.wav",
                   voice="de")
    with german.open("rb") as audio, pytest.warns(DeprecationWarning):
        translated = real_server.sdk.audio.translations.create(model="whisper-base", file=audio)
    assert words_of(translated.text) & {"dog", "cat", "black", "small", "little"}
    with german.open("rb") as audio:
        verbose = real_server.sdk.audio.transcriptions.create(
            model="whisper-base", file=audio, response_format="verbose_json")
    assert verbose.language == "german"


def test_english_only_model_translates_english_to_itself(real_server: RealServer,
                                                          speech: Path) -> None:
    with speech.open("rb") as audio, pytest.warns(DeprecationWarning):
        translated = real_server.sdk.audio.translations.create(model="whisper-1", file=audio)
    assert {"fox", "dog"} <= words_of(translated.text)
    # stream=false asks for what a translation does anyway; stream=true is refused by name.
    def translate(stream: str) -> httpx2.Response:
        return httpx2.post(f"{real_server.server.base_url}/v1/audio/translations",
                           headers={"Authorization": f"Bearer {real_server.key}"},
                           files={"file": ("speech.wav", speech.read_bytes())},
                           data={"model": "whisper-1", "stream": stream}, timeout=120)

    whole, streamed = translate("false"), translate("true")
    assert whole.status_code == 200 and {"fox", "dog"} <= words_of(whole.json()["text"])
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"


@pytest.mark.parametrize("model", ["whisper-1", "whisper-base"])
def test_a_prompt_is_text_even_where_it_spells_control_tokens(real_server: RealServer,
                                                              speech: Path, model: str) -> None:
    """Read as whisper's own end-of-text token, this prompt emptied the transcript."""
    for prompt in ("<|endoftext|>" * 300, "<|startoftranscript|><|translate|><|nocaptions|>",
                   "Quick brown fox."):
        with speech.open("rb") as audio:
            text = real_server.sdk.audio.transcriptions.create(
                model=model, file=audio, prompt=prompt, response_format="text")
        assert {"fox", "dog"} <= words_of(text), (prompt[:40], text)


def test_silence_is_an_empty_transcript(real_server: RealServer, tmp_path: Path) -> None:
    with silence(tmp_path / "quiet.wav").open("rb") as audio:
        result = real_server.sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    assert result.text == ""


def test_bad_input(real_server: RealServer, tmp_path: Path) -> None:
    sdk = real_server.sdk
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1",
                                        file=("notes.mp3", b"this is not audio", "audio/mpeg"))
    assert caught.value.param == "file"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF"),
                                        response_format="docx")  # type: ignore[arg-type]
    assert caught.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF"),
                                        language="fr")
    assert caught.value.param == "language"  # whisper-tiny.en is English-only
    big = silence(tmp_path / "long.wav", seconds=40)  # 1.3 MB, over this model's 1 MB
    with big.open("rb") as audio, pytest.raises(openai.APIStatusError) as too_large:
        sdk.audio.transcriptions.create(model="whisper-1", file=audio)
    assert too_large.value.status_code == 413
    assert json.loads(too_large.value.response.text)["error"]["param"] == "file"


def test_ledger_rows_carry_audio_seconds_and_price(real_server: RealServer,
                                                   speech: Path) -> None:
    with speech.open("rb") as audio:
        raw = real_server.sdk.audio.transcriptions.with_raw_response.create(
            model="whisper-1", file=audio)
    request_id = raw.headers["x-request-id"]
    row = ledger_row(real_server, request_id)
    assert row["model"] == "whisper-tiny.en" and row["status"] == "ok"
    assert row["price"] == 0.125 and 2.0 < row["audio_seconds"] < 5.0


@pytest.fixture(scope="module")
def long_speech(speech: Path) -> Path:
    """The sentence said twelve times (as MP3: under the test model's 1 MB limit): long
    enough to still be transcribing when a chat request comes and goes."""
    return encode(speak(" ".join([SENTENCE] * 12), speech.with_name("long.wav")), "mp3")


def test_chat_streams_while_a_transcription_runs(real_server: RealServer,
                                                 long_speech: Path) -> None:
    finished: list[str] = []

    def transcribe() -> None:
        with long_speech.open("rb") as audio:
            real_server.sdk.audio.transcriptions.create(model="whisper-1", file=audio)
        finished.append("transcription")

    worker = threading.Thread(target=transcribe)
    worker.start()
    try:
        time.sleep(0.5)  # head start: the upload is in and decoding has begun
        chunks = list(real_server.sdk.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4, stream=True))
        finished.append("chat")
    finally:
        worker.join()
    assert len(chunks) >= 3
    assert finished == ["chat", "transcription"]


def test_client_that_gives_up_stops_the_transcription(real_server: RealServer,
                                                      long_speech: Path) -> None:
    impatient = openai.OpenAI(base_url=real_server.base_url, api_key=real_server.key,
                              max_retries=0, timeout=0.5)
    with impatient, long_speech.open("rb") as audio, pytest.raises(openai.APITimeoutError):
        impatient.audio.transcriptions.create(model="whisper-1", file=audio)
    deadline = time.monotonic() + 15
    status = None
    while time.monotonic() < deadline and status != "cancelled":
        status = _last_audio_status(real_server)
        time.sleep(0.1)
    assert status == "cancelled"


STORY = ("The appliance loads every model at boot and serves them through one API. "
         "Teams run it on a workstation, on a shared server, or on a laptop without a network. "
         "Each request gets one row in the ledger with its flat price. "
         "Speech is transcribed window by window, and the text streams back as it is ready. "
         "The quick brown fox jumps over the lazy dog, then rests in the shade of an old tree. ")


@pytest.fixture(scope="module")
def told_story(speech: Path) -> Path:
    """About 90 s of speech without a sentence repeated inside one 30-second window, so whisper
    needs no temperature fallback (which samples, and makes transcripts random)."""
    return speak(STORY * 3, speech.with_name("story.wav"))


def test_another_keys_file_is_transcribed_between_the_windows_of_a_long_one(
        speech: Path, told_story: Path) -> None:
    engine = WhisperEngine.load(TranscriptionModelConfig(id="whisper", path=WHISPER_TINY,
                                                         workers=1))
    engine.warm_up()
    finished: list[str] = []
    try:
        async def transcribe(audio: Path, owner: str) -> list[Segment]:
            events = engine.transcribe(TranscriptionParams(audio=audio, owner=owner),
                                       CancelToken())
            segments = [event async for event in events if isinstance(event, Segment)]
            finished.append(owner)
            return segments

        async def run() -> tuple[list[Segment], list[Segment]]:
            first = asyncio.ensure_future(transcribe(told_story, "key_a"))
            while engine.occupancy.busy == 0:  # key_a's file holds the worker
                await asyncio.sleep(0.01)
            second = await transcribe(speech, "key_b")
            return await first, second

        long, short = asyncio.run(run())
        engine.close()
        assert_refused_once_closed(lambda: engine.transcribe(
            TranscriptionParams(audio=speech, owner="key_c"), CancelToken()))
    finally:
        engine.close()
        # The voice-activity model is cached per process: forgotten, so that the warm-up
        # test later in this process still sees a first load.
        faster_whisper.vad.get_vad_model.cache_clear()
    assert finished == ["key_b", "key_a"]  # key_b waited for a step, not the whole file
    assert len(long) >= 6 and [s.id for s in long] == list(range(len(long)))
    assert long[-1].end > 60
    long_words = words_of(" ".join(s.text for s in long))
    assert {"ledger", "price", "laptop", "network", "tree"} <= long_words
    assert {"quick", "lazy", "dog"} <= words_of(" ".join(s.text for s in short))


def _last_audio_status(server: RealServer) -> str | None:
    with sqlite3.connect(f"file:{server.server.ledger_path}?mode=ro", uri=True) as db:
        found = db.execute("select status from requests where endpoint = "
                           "'/v1/audio/transcriptions' order by started_at desc "
                           "limit 1").fetchone()
    db.close()
    return None if found is None else str(found[0])
