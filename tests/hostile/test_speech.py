"""Hostile speech requests against the real Piper voice: huge and odd inputs, control
characters and broken Unicode, thousands of sentences from a client that leaves, and bad
formats, speeds and voices. Each is a clean answer (a 400 naming the parameter, or audio for
what is really there), within the stated growth of memory, log and ledger."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2
import pytest

from devtools.server_harness import create_key
from tests.hostile.harness import Bounds, HostileServer

SPEECH = "/v1/audio/speech"


def growth(requests: int, seconds: float) -> Bounds:
    """As tests/hostile/test_media.py: a log line a request and the probe's lines; the ledger
    grows by WAL pages, some 60 KiB a commit: a request's "started" and final rows are two
    commits (or one, when the writer batches them), the harness's chat after it two more."""
    return Bounds(peak_rss_mib=60, log_kib=1 + 0.5 * requests + 1.2 * seconds,
                  ledger_kib=64 * (2 * requests + 2))


def speak(http: httpx2.Client, **fields: Any) -> httpx2.Response:
    return http.post(SPEECH, json={"model": "tts-1", "voice": "alloy",
                                   "response_format": "pcm", **fields})


@pytest.mark.parametrize(("name", "body", "param"), [
    ("a megabyte of input", {"input": "a" * 1_000_000}, "input"),
    ("4,097 characters", {"input": "é" * 4097}, "input"),
    ("only whitespace", {"input": " \n\t " * 100}, "input"),
    ("only punctuation", {"input": "?!.,;:" * 100}, "input"),
    ("a speed of 1e308", {"input": "Hi.", "speed": 1e308}, "speed"),
    ("a negative speed", {"input": "Hi.", "speed": -1}, "speed"),
    ("a speed as a string", {"input": "Hi.", "speed": "2"}, "speed"),
    ("a format as a list", {"input": "Hi.", "response_format": ["mp3"]}, "response_format"),
    ("a format FFmpeg knows", {"input": "Hi.", "response_format": "matroska"},
     "response_format"),
    ("a voice as a number", {"input": "Hi.", "voice": 7}, "voice"),
    ("a voice path", {"input": "Hi.", "voice": "../../etc/passwd"}, "voice"),
    ("a voice of 10,000 characters", {"input": "Hi.", "voice": "v" * 10_000}, "voice"),
    ("a custom voice with extras", {"input": "Hi.", "voice": {"id": "alloy", "x": 1}},
     "voice"),
    ("instructions of a megabyte", {"input": "Hi.", "instructions": "x" * 1_000_000},
     "instructions"),
])
def test_bad_requests_are_fast_400s_naming_the_param(hostile: HostileServer, name: str,
                                                     body: dict[str, Any], param: str) -> None:
    with hostile.attack(f"speech: {name}", growth(1, 2)), hostile.http() as http:
        response = speak(http, **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(("name", "text"), [
    ("control characters", "Bell\x07 escape\x1b[31m red\x00 null\x7f delete."),
    ("lone surrogates", "Broken \ud800 unicode \udfff here."),
    ("raw phoneme markup", "[[ ʃʃʃʃʃʃ ]] and [[ unclosed"),
    ("emoji and joiners", "👩‍👩‍👧‍👦 " * 50),
    ("right-to-left and mixed scripts", "שלום مرحبا 你好 hello Привет"),
    ("a thousand combining accents", "e" + "\u0301" * 1000),
    ("zero-width and bidi controls", "he\u200bl\u200dlo\u202e wor\u2066ld\ufeff."),
    ("SSML", "<speak><break time='100s'/>Hi</speak>"),
])
def test_odd_text_is_spoken_cleanly(hostile: HostileServer, name: str, text: str) -> None:
    # ONNX Runtime's arena is grown to a full-length piece at boot, but it extends in chunks
    # of its own choosing: a long odd text (emoji) moves the peak by 20-50 MiB, and in about
    # one run in six by 100-200 MiB, when the voice's random phoneme lengths make a piece
    # longer than the warm-up's and the arena takes a new chunk (seen at 9c9b126 as well).
    # The bound is for growth without end, not for that chunk.
    bounds = Bounds(peak_rss_mib=250, log_kib=growth(1, 30).log_kib,
                    ledger_kib=growth(1, 30).ledger_kib)
    with hostile.attack(f"speech: {name}", bounds), hostile.http(timeout=120) as http:
        # json.dumps keeps lone surrogates as \\ud800 escapes, as a hostile client sends them.
        response = http.post(SPEECH, content=json.dumps({
            "model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}),
            headers={"content-type": "application/json"})
    if response.status_code == 400:  # nothing in it to say
        assert response.json()["error"]["param"] == "input"
    else:
        assert response.status_code == 200, response.text
        assert len(response.content) % 2 == 0


@pytest.mark.parametrize(("text", "status"), [
    ("...", 400), ("?", 400), (",;:-", 400), ("\"'()[]{}", 400), ("- - -", 400),
    ("!!!???", 200), ("*", 200), ("#", 200), ("%", 200), ("😀", 200),
])
def test_what_espeak_does_not_say_is_refused(hostile: HostileServer, text: str,
                                             status: int) -> None:
    # As the README says: punctuation espeak-ng does not pronounce is nothing to say; a
    # symbol it has a name for ("asterisk", "exclamation") is spoken.
    with hostile.attack(f"speech: {text!r}", growth(1, 5)), hostile.http() as http:
        response = speak(http, input=text)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"]["param"] == "input"


def test_slow_speech_stays_within_the_warm_up(hostile: HostileServer) -> None:
    # The warm-up's text at speed 0.25 was one piece of four times the audio the warm-up
    # made, and grew ONNX Runtime's arena by some 470 MiB; cut by the speed, it adds little.
    text = " ".join(["ready"] * 36)
    with hostile.attack("speech: the warm-up text at speeds 0.5 and 0.25", growth(3, 60)), \
            hostile.http(timeout=300) as http:
        for speed in (0.5, 0.25, 0.25):
            response = speak(http, input=text, speed=speed)
            assert response.status_code == 200, response.text
            assert len(response.content) > 2 * 24_000 * 15  # all of it said, slowly


def test_one_word_of_4096_letters(hostile: HostileServer) -> None:
    with hostile.attack("speech: one 4,096-letter word", growth(1, 60)), \
            hostile.http(timeout=300) as http:
        response = speak(http, input="a" * 4096, speed=4.0)
    assert response.status_code == 200, response.text
    assert len(response.content) > 24_000  # cut into pieces, all of them said


@pytest.mark.parametrize("speed", [1.0001, 2.5, 4.0])
def test_many_tiny_sentences_sped_up_are_one_stream(hostile: HostileServer,
                                                    speed: float) -> None:
    # Faster speech is one atempo stream fed piece by piece: pieces of one short word each,
    # far below the filter's window when alone, still come out 1 / speed as long in total.
    text = "Go. " * 400
    with hostile.attack(f"speech: 400 one-word sentences at speed {speed}", growth(2, 60)), \
            hostile.http(timeout=300) as http:
        plain = speak(http, input=text)
        fast = speak(http, input=text, speed=speed)
    assert plain.status_code == fast.status_code == 200, fast.text
    ratio = len(fast.content) / len(plain.content)
    assert abs(ratio * speed - 1) < 0.1, ratio


def sentences_made(hostile: HostileServer, admin: str) -> float:
    with httpx2.Client(base_url=hostile.base_url, timeout=30,
                       headers={"Authorization": f"Bearer {admin}"}) as http:
        text = http.get("/metrics").text
    found = re.search(r'^appliance_speech_sentences_total\{model="piper-joe-medium"\} (\S+)$',
                      text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_thousand_sentences_from_a_client_that_leaves(hostile: HostileServer) -> None:
    admin = create_key(hostile.server.config, "hostile-speech-metrics", admin=True)
    before = sentences_made(hostile, admin)
    with hostile.attack("speech: 1,024 sentences, the client leaves", growth(3, 30)), \
            hostile.http(timeout=120) as http:
        with http.stream("POST", SPEECH, json={"model": "tts-1", "voice": "alloy",
                                               "input": "No. " * 1024}) as response:
            assert response.status_code == 200
            first = next(response.iter_bytes())
            assert first
        # Gone: the engine stops after the sentence it is on, and the next request is served.
        after = speak(http, input="Still here.")
        assert after.status_code == 200 and after.content
    made = sentences_made(hostile, admin) - before
    assert made < 200, made  # of 1,024 (+1 for "Still here."), at 2-3 sentences a second
