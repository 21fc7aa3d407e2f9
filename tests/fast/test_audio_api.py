"""The audio API over a fake engine: multipart parsing, every format, streams, errors."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import API_KEY, FastStack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
WAV = ("speech.wav", b"RIFF" + b"\0" * 200, "audio/wav")
AUTH = {"authorization": f"Bearer {API_KEY}"}


async def test_json_is_the_default_with_duration_usage(stack: FastStack) -> None:
    raw = await stack.client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=WAV)
    body = json.loads(raw.content)
    validate(body, "CreateTranscriptionResponseJson")
    assert body == {"text": "Hello there. General Kenobi.",
                    "usage": {"type": "duration", "seconds": 2.5}}
    row = stack.ledger.rows[-1]
    assert (row.model, row.audio_seconds, row.status) == ("fake-whisper", 2.5, "ok")
    assert row.endpoint == "/v1/audio/transcriptions"


async def test_verbose_json_with_words_and_segments(stack: FastStack) -> None:
    raw = await stack.client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=WAV, response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en", prompt="Kenobi",
        temperature=0.2)
    body = json.loads(raw.content)
    validate(body, "CreateTranscriptionResponseVerboseJson")
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert [s["text"] for s in body["segments"]] == [" Hello there.", " General Kenobi."]
    assert [w["word"] for w in body["words"]] == ["Hello", "there.", "General", "Kenobi."]


async def test_words_only_leave_segments_out(stack: FastStack) -> None:
    verbose = await stack.client.audio.transcriptions.create(
        model="whisper-1", file=WAV, response_format="verbose_json",
        timestamp_granularities=["word"])
    assert verbose.words and verbose.segments is None


@pytest.mark.parametrize(("response_format", "expected"), [
    ("text", "Hello there. General Kenobi.\n"),
    ("srt", "1\n00:00:00,000 --> 00:00:01,200\nHello there.\n\n"
            "2\n00:00:01,200 --> 00:00:02,500\nGeneral Kenobi.\n\n"),
    ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:01.200\nHello there.\n\n"
            "00:00:01.200 --> 00:00:02.500\nGeneral Kenobi.\n\n"),
])
async def test_text_formats(stack: FastStack, response_format: str, expected: str) -> None:
    response = await stack.http.post("/v1/audio/transcriptions", headers=AUTH,
                                     files={"file": WAV},
                                     data={"model": "whisper-1",
                                           "response_format": response_format})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == expected
    via_sdk = await stack.client.audio.transcriptions.create(
        model="whisper-1", file=WAV, response_format=response_format)  # type: ignore[call-overload]
    assert via_sdk == expected


async def test_stream_sends_deltas_then_done(stack: FastStack) -> None:
    events = [event async for event in await stack.client.audio.transcriptions.create(
        model="whisper-1", file=WAV, stream=True)]
    assert [e.type for e in events] == ["transcript.text.delta", "transcript.text.delta",
                                        "transcript.text.done"]
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert deltas == events[-1].text == "Hello there. General Kenobi."
    response = await stack.http.post("/v1/audio/transcriptions", headers=AUTH,
                                     files={"file": WAV},
                                     data={"model": "whisper-1", "stream": "true"})
    for line in response.text.splitlines():
        if line.startswith("data: "):
            payload: Any = json.loads(line.removeprefix("data: "))
            schema = "TranscriptTextDeltaEvent" if payload["type"].endswith("delta") \
                else "TranscriptTextDoneEvent"
            validate(payload, schema)
    assert stack.ledger.rows[-1].stream


async def test_translation_is_english_text_only(stack: FastStack) -> None:
    with pytest.warns(DeprecationWarning):  # the SDK marks translations deprecated
        raw = await stack.client.audio.translations.with_raw_response.create(
            model="whisper-1", file=WAV)
    body = json.loads(raw.content)
    validate(body, "CreateTranslationResponseJson")
    assert body == {"text": "Hello there. General Kenobi."}
    verbose = await stack.http.post("/v1/audio/translations", headers=AUTH, files={"file": WAV},
                                    data={"model": "whisper-1",
                                          "response_format": "verbose_json"})
    validate(verbose.json(), "CreateTranslationResponseVerboseJson")
    assert verbose.json()["language"] == "english"


async def test_timestamp_granularities_without_brackets_is_accepted(stack: FastStack) -> None:
    response = await stack.http.post(
        "/v1/audio/transcriptions", headers=AUTH, files={"file": WAV},
        data={"model": "whisper-1", "response_format": "verbose_json",
              "timestamp_granularities": "word"})
    assert response.status_code == 200 and "words" in response.json()


@pytest.mark.parametrize(("data", "param"), [
    ({"model": "whisper-1", "response_format": "yaml"}, "response_format"),
    ({"model": "whisper-1", "response_format": "verbose_json",
      "timestamp_granularities[]": "letter"}, "timestamp_granularities"),
    ({"model": "whisper-1", "timestamp_granularities[]": "word"}, "timestamp_granularities"),
    ({"model": "whisper-1", "temperature": "3"}, "temperature"),
    ({"model": "whisper-1", "stream": "maybe"}, "stream"),
    ({"model": "whisper-1", "stream": "true", "response_format": "srt"}, "stream"),
    ({"model": "whisper-1", "include[]": "logprobs"}, "include"),
    ({}, "model"),
    ({"model": "fake-chat"}, "model"),
])
async def test_bad_fields_are_400_naming_them(stack: FastStack, data: dict[str, str],
                                              param: str) -> None:
    response = await stack.http.post("/v1/audio/transcriptions", headers=AUTH,
                                     files={"file": WAV}, data=data)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(("data", "param"), [
    ({"language": "fr"}, "language"),
    ({"timestamp_granularities[]": "word", "response_format": "verbose_json"},
     "timestamp_granularities"),
    ({"stream": "true"}, "stream"),
])
async def test_translation_refuses_transcription_only_fields(stack: FastStack,
                                                             data: dict[str, str],
                                                             param: str) -> None:
    response = await stack.http.post("/v1/audio/translations", headers=AUTH,
                                     files={"file": WAV}, data={"model": "whisper-1", **data})
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert response.json()["error"]["code"] == "unsupported_parameter"


async def test_translation_takes_stream_false_as_what_it_does_anyway(stack: FastStack) -> None:
    response = await stack.http.post("/v1/audio/translations", headers=AUTH,
                                     files={"file": WAV},
                                     data={"model": "whisper-1", "stream": "false"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["text"], str)


async def test_missing_file_and_undecodable_audio(stack: FastStack) -> None:
    response = await stack.http.post("/v1/audio/transcriptions", headers=AUTH,
                                     files={"other": WAV}, data={"model": "whisper-1"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"
    with pytest.raises(openai.BadRequestError) as caught:
        await stack.client.audio.transcriptions.create(
            model="whisper-1", file=("notes.txt", b"just text", "text/plain"))
    assert caught.value.param == "file"
    json_body = await stack.http.post("/v1/audio/transcriptions", headers=AUTH,
                                      json={"model": "whisper-1"})
    assert json_body.status_code == 400 and json_body.json()["error"]["param"] == "file"


async def test_too_large_upload_is_413(stack: FastStack) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await stack.client.audio.transcriptions.create(
            model="whisper-1", file=("big.wav", b"RIFF" + b"\0" * 100_000, "audio/wav"))
    assert caught.value.status_code == 413
    assert stack.ledger.rows[-1].http_status == 413
    # Over the model's own limit but under the server's: still 413.
    with pytest.raises(openai.APIStatusError) as caught:
        await stack.client.audio.transcriptions.create(
            model="whisper-1", file=("big.wav", b"RIFF" + b"\0" * 2100, "audio/wav"))
    assert caught.value.status_code == 413


@pytest.mark.parametrize(("files", "data", "words"), [
    ([("file", WAV), ("file", WAV)], {"model": "whisper-1"}, "Too many files"),
    ([("file", WAV)], {f"x{i}": "1" for i in range(70)}, "Too many fields"),
    ([("file", ("a" * 8192 + ".wav", WAV[1], "audio/wav"))], {"model": "whisper-1"},
     "Invalid multipart data"),
])
@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
async def test_multipart_refusals_name_the_file(stack: FastStack, path: str, files: Any,
                                                data: dict[str, str], words: str) -> None:
    response = await stack.http.post(path, headers=AUTH, files=files, data=data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("file", "invalid_multipart")
    assert words in error["message"]


async def test_a_body_that_is_not_multipart_names_the_file(stack: FastStack) -> None:
    response = await stack.http.post(
        "/v1/audio/transcriptions", content=b"--b\r\nno headers end",
        headers={**AUTH, "content-type": "multipart/form-data"})  # and no boundary
    error = response.json()["error"]
    assert (response.status_code, error["param"], error["code"]) == (
        400, "file", "invalid_multipart")


def _form_with_prompt(prompt: bytes) -> bytes:
    return (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\nRIFF\r\n"
            b"--B\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n"
            + prompt + b"\r\n--B--\r\n")


@pytest.mark.parametrize("charset", ["utf-7", "punycode", "undefined", '"undefined"',
                                     "utf-8; charset=undefined", "no-such-codec",
                                     "x" * 5000])
async def test_a_charset_outside_the_four_is_a_400_before_the_form_is_read(
        stack: FastStack, charset: str) -> None:
    """Starlette decodes names and values with the codec the header names: UTF-7 wrote lone
    surrogates, 'undefined' raised past Starlette's fallback (a 500), and punycode decodes
    in quadratic time on the event loop (1 MB held it 17 s)."""
    body = _form_with_prompt(b"a +2AA- b")
    response = await stack.http.post("/v1/audio/transcriptions", content=body, headers={
        **AUTH, "content-type": f"multipart/form-data; boundary=B; charset={charset}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("file", "invalid_multipart")
    assert "is not supported" in error["message"] and "utf-8" in error["message"]
    assert len(error["message"]) < 300


@pytest.mark.parametrize("charset", ["utf-8", "UTF8", "us-ascii", "latin-1", "ISO-8859-1",
                                     "windows-1252"])
async def test_the_four_charsets_read_the_form(stack: FastStack, charset: str) -> None:
    body = _form_with_prompt("caf\u00e9".encode("latin-1" if "8859" in charset.upper() or
                                                 "latin" in charset or "1252" in charset
                                                 else "ascii", errors="replace"))
    response = await stack.http.post("/v1/audio/transcriptions", content=body, headers={
        **AUTH, "content-type": f"multipart/form-data; boundary=B; charset={charset}"})
    # The form is read; what is refused is the audio ("RIFF" alone is not a WAV file) or
    # the missing model, never the form.
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] != "invalid_multipart", response.text
