"""Hostile audio, embedding and image requests against the real server.

Audio that is long for its size, headers that lie, odd rates, thousands of streams and
truncated files (built in tests/media_files.py); an abandoned embedding of 48 long inputs;
inputs past the embedding bounds; image requests past n x steps x size and over-long prompts.
Each is answered cleanly (a 400 naming the parameter, or a 200 for what is really there),
fast, and within the stated growth of memory, log and ledger.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest

from devtools.server_harness import create_key
from tests.hostile.harness import Bounds, HostileServer
from tests.media_files import FLAC_MAX_BLOCK, flac, flac_claiming, many_streams, silence_u8, wav

WHISPER = "whisper-tiny.en"
EMBED = "smollm2-135m-embed"  # context 512
IMAGE = "tiny-random-sd"  # 2 steps at 64x64 by default
SENTENCE = "The quick brown fox jumps over the lazy dog. "  # 10 tokens


def growth(requests: int, seconds: float, peak_rss_mib: float = 30) -> Bounds:
    """What ``requests`` small requests may add in ``seconds``: an access line each, the
    /health probe's lines (about 1 KiB a second), and a ledger row each plus the harness's
    chat (the ledger grows by its WAL: some 50 KiB of pages per commit, whatever the row)."""
    return Bounds(peak_rss_mib=peak_rss_mib, log_kib=1 + 0.5 * requests + 1.2 * seconds,
                  ledger_kib=64 * (requests + 1))


def transcribe(hostile: HostileServer, path: Path, timeout: float = 60.0) -> httpx2.Response:
    with hostile.http(timeout=timeout) as http:
        return http.post("/v1/audio/transcriptions", data={
            "model": WHISPER, "response_format": "verbose_json"},
            files={"file": (path.name, path.read_bytes(), "application/octet-stream")})


def assert_400(response: httpx2.Response, param: str, code: str | None = None) -> str:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return str(error["message"])


# -- audio -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "hours", "why"), [
    (8000, 1, "audio_too_long"),  # 14 KB
    (8000, 3, "audio_too_long"),  # 42 KB
    (1000, 1, "invalid_audio"),  # the 9 KB file of the finding: 1 kHz is below any speech
])
def test_hours_of_flac_in_kilobytes_are_a_fast_400(hostile: HostileServer, tmp_path: Path,
                                                   rate: int, hours: int, why: str) -> None:
    hour = flac(tmp_path / "hours.flac", rate, hours * 3600, block=FLAC_MAX_BLOCK)
    assert hour.stat().st_size < 50_000
    # It used to decode all of it first: 874 MB and 17 s for the 1 kHz hour.
    with hostile.attack(f"{hours} h of FLAC at {rate} Hz in {hour.stat().st_size} bytes",
                        growth(1, 2)):
        started = time.monotonic()
        response = transcribe(hostile, hour)
        elapsed = time.monotonic() - started
    message = assert_400(response, "file", why)
    assert ("1800 seconds" if why == "audio_too_long" else "1000 Hz") in message
    assert elapsed < 2.0


def test_a_flac_header_claiming_one_second_over_three_hours(hostile: HostileServer,
                                                             tmp_path: Path) -> None:
    three_hours = flac(tmp_path / "3h.flac", 8000, 3 * 3600, block=FLAC_MAX_BLOCK)
    lying = flac_claiming(tmp_path / "lying.flac", three_hours, 8000)
    with hostile.attack("FLAC whose header says 1 s over 3 h of audio", growth(1, 2)):
        started = time.monotonic()
        response = transcribe(hostile, lying)
        elapsed = time.monotonic() - started
    assert "1800 seconds" in assert_400(response, "file", "audio_too_long")
    assert elapsed < 2.0


def test_a_wav_header_claiming_one_second_over_twenty_minutes(hostile: HostileServer,
                                                               tmp_path: Path) -> None:
    # A WAV's data chunk says how much of it is audio: the rest is not read, not decoded.
    lying = wav(tmp_path / "lying.wav", rate=8000, data=silence_u8(8000, 1200), declared=8000)
    with hostile.attack("WAV whose header says 1 s over 20 min of samples", growth(1, 5)):
        response = transcribe(hostile, lying)
    assert response.status_code == 200, response.text
    assert response.json()["duration"] == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "build", "words"), [
    ("1 Hz WAV", lambda d: wav(d / "a.wav", rate=1, data=silence_u8(8000, 60)), "1 Hz"),
    ("10 MHz WAV", lambda d: wav(d / "a.wav", rate=10_000_000, data=silence_u8(8000, 60)),
     "10000000 Hz"),
    ("65,535-channel WAV", lambda d: wav(d / "a.wav", rate=8000, channels=65_535,
                                         data=silence_u8(8000, 60)), "channels"),
    ("900 streams", lambda d: many_streams(d / "a.mkv", 900), "more than 16 streams"),
    # 500 packets a second: 200,000 in 400 s, past 100 a second of the 1800-second bound
    ("16-sample FLAC blocks", lambda d: flac(d / "a.flac", 8000, 400, block=16), "packets"),
    ("an unknown WAV format tag", lambda d: wav(d / "a.wav", rate=8000, tag=0x1234,
                                                data=silence_u8(8000, 1)), "cannot decode"),
    ("PCM of 0 bits a sample", lambda d: wav(d / "a.wav", rate=8000, bits=0,
                                             data=silence_u8(8000, 1)), "cannot decode"),
    ("a playlist", lambda d: _written(d / "a.m3u8", b"#EXTM3U\n#EXTINF:1,\n/etc/passwd\n"),
     "could not be decoded"),
])
def test_odd_audio_is_a_400_naming_file(hostile: HostileServer, tmp_path: Path, name: str,
                                        build: Any, words: str) -> None:
    path = build(tmp_path)
    with hostile.attack(f"audio: {name}", growth(1, 5)):
        started = time.monotonic()
        response = transcribe(hostile, path)
        elapsed = time.monotonic() - started
    assert words in assert_400(response, "file")
    assert elapsed < 5.0


def _written(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_a_truncated_file_is_transcribed_as_far_as_it_goes(hostile: HostileServer,
                                                             tmp_path: Path) -> None:
    whole = flac(tmp_path / "tone.flac", 16_000, 20, tone=True)
    cut = _written(tmp_path / "cut.flac", whole.read_bytes()[: whole.stat().st_size // 2])
    header = _written(tmp_path / "header.flac", whole.read_bytes()[:60])
    with hostile.attack("truncated FLAC", growth(2, 10)):
        response = transcribe(hostile, cut)
        nothing = transcribe(hostile, header)
    assert response.status_code == 200, response.text
    assert 1.0 < response.json()["duration"] < 20.0
    assert_400(nothing, "file", "invalid_audio")


# -- embeddings ------------------------------------------------------------------------------


def embed(hostile: HostileServer, body: dict[str, Any], timeout: float = 60.0) -> httpx2.Response:
    with hostile.http(timeout=timeout) as http:
        return http.post("/v1/embeddings", json={"model": EMBED, **body})


def test_an_abandoned_embedding_stops_and_the_next_is_answered(hostile: HostileServer) -> None:
    long_input = SENTENCE * 48  # 481 tokens; 48 of them are minutes of CPU here
    # The first batch of a full context allocates the context's compute and output buffers
    # (about 180 MiB for SmolLM2 at 512 tokens), whoever sends it.
    with hostile.attack("48 x 481-token embedding abandoned after 3 s",
                        growth(2, 20, peak_rss_mib=250)):
        with pytest.raises(httpx2.TimeoutException):
            embed(hostile, {"input": [long_input] * 48}, timeout=3.0)
        started = time.monotonic()
        answer = embed(hostile, {"input": "hello"})
        waited = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    # The abandoned request stops after the batch it was in (one 481-token decode); it used to
    # run all 48 inputs for nobody while the next request timed out behind it.
    assert waited < 15.0, waited


def test_embedding_inputs_past_their_bounds_are_a_400(hostile: HostileServer) -> None:
    with hostile.attack("embedding inputs past their bounds", growth(5, 10)):
        started = time.monotonic()
        too_many = embed(hostile, {"input": ["x"] * 2049})
        too_long = embed(hostile, {"input": ["fine", "word " * 2000]})
        megabyte = embed(hostile, {"input": ["a", " " * 1_000_000]})
        vocabulary = embed(hostile, {"input": [[1, 2, 3], [1, 2**40]]})
        ids = embed(hostile, {"input": [[7] * 513]})
        elapsed = time.monotonic() - started
    assert "2048" in assert_400(too_many, "input")
    assert "maximum context length is 512 tokens" in assert_400(too_long, "input[1]",
                                                                 "context_length_exceeded")
    assert "1000000 characters" in assert_400(megabyte, "input[1]", "context_length_exceeded")
    assert "vocabulary" in assert_400(vocabulary, "input[1]")
    assert "513 tokens" in assert_400(ids, "input[0]", "context_length_exceeded")
    assert elapsed < 10.0


def test_more_tokens_than_a_request_takes_is_a_400(hostile: HostileServer) -> None:
    with hostile.attack("embedding of 2,048 x 201 tokens", growth(1, 20)):
        started = time.monotonic()
        response = embed(hostile, {"input": [SENTENCE * 20] * 2048})
        elapsed = time.monotonic() - started
    assert "at most 300000 tokens per request" in assert_400(response, "input",
                                                            "max_tokens_per_request")
    assert elapsed < 20.0  # tokenizing stops at the bound; nothing is embedded


# -- images ----------------------------------------------------------------------------------


def generate(hostile: HostileServer, body: dict[str, Any]) -> httpx2.Response:
    with hostile.http() as http:
        return http.post("/v1/images/generations", json={
            "model": IMAGE, "response_format": "b64_json", **body})


def test_an_image_request_past_n_steps_and_size_is_a_400(hostile: HostileServer) -> None:
    with hostile.attack("images: n = 10 at 150 steps", growth(2, 30)):
        started = time.monotonic()
        response = generate(hostile, {"prompt": "a cat", "n": 10, "steps": 150})
        fits = generate(hostile, {"prompt": "a cat", "n": 5, "steps": 8})
        elapsed = time.monotonic() - started
    assert "at most 1 image(s) of 64x64 at 150 steps" in assert_400(response, "n")
    assert fits.status_code == 200, fits.text
    assert len(fits.json()["data"]) == 5
    assert elapsed < 30.0


def test_long_prompts_cost_little(hostile: HostileServer) -> None:
    with hostile.attack("images: a 1 MB prompt, then a 32,000-character one", growth(2, 30)):
        started = time.monotonic()
        megabyte = generate(hostile, {"prompt": "a cat " * 170_000})
        longest = generate(hostile, {"prompt": "a cat " * 5333,
                                     "negative_prompt": "a dog " * 5333})
        elapsed = time.monotonic() - started
    assert "32000" in assert_400(megabyte, "prompt")
    assert longest.status_code == 200, longest.text
    assert longest.json()["usage"]["input_tokens"] == 77  # what CLIP reads; the rest is cut
    assert elapsed < 30.0


def image_occupancy(hostile: HostileServer, admin: str) -> tuple[float, float]:
    with httpx2.Client(base_url=hostile.base_url, timeout=30,
                       headers={"Authorization": f"Bearer {admin}"}) as http:
        text = http.get("/metrics").text
    found = [re.search(rf'^{name}\{{model="{IMAGE}"\}} (\S+)$', text, re.MULTILINE)
             for name in ("appliance_engine_slots_busy", "appliance_engine_queue_depth")]
    busy, waiting = (float(match.group(1)) if match else -1.0 for match in found)
    return busy, waiting


def test_long_images_whose_clients_leave_give_every_turn_and_place_back(
        hostile: HostileServer) -> None:
    """Four keys' 150-step images take turns at the one worker (a key holds one place, so
    each has its own key); two clients give up after a second (while their request computes,
    waits for its turn or waits for a place). Nothing stays taken: a 2-step image is answered
    at once after, and the engine reports nobody busy or waiting."""
    admin = create_key(hostile.server.config, "hostile-images-metrics", admin=True)
    keys = [create_key(hostile.server.config, f"hostile-images-{n}") for n in range(4)]

    def long(key: str, leaves: bool) -> int | None:
        timeout = httpx2.Timeout(30.0, read=1.0 if leaves else 60.0)
        try:
            with httpx2.Client(base_url=hostile.base_url, timeout=timeout,
                               headers={"Authorization": f"Bearer {key}"}) as http:
                return http.post("/v1/images/generations", json={
                    "model": IMAGE, "prompt": "a fox", "steps": 150,
                    "response_format": "b64_json"}).status_code
        except httpx2.ReadTimeout:
            return None

    with hostile.attack("images: 4 x 150 steps in turns, 2 clients leave", growth(5, 40)):
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(long, keys, (False, True, False, True)))
        started = time.monotonic()
        quick = generate(hostile, {"prompt": "a cat"})
        quick_s = time.monotonic() - started
    assert outcomes == [200, None, 200, None]
    assert quick.status_code == 200, quick.text
    assert quick_s < 10.0  # no leaked turn or place to wait behind
    deadline = time.monotonic() + 10
    while image_occupancy(hostile, admin) != (0.0, 0.0) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert image_occupancy(hostile, admin) == (0.0, 0.0)
