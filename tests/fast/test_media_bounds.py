"""Bounds on audio, embedding and image requests, checked before the work they guard.

Audio: the bounded decoder (appliance/engines/audio_decode.py) on hostile files built here.
Embeddings: the real embedding engine on SmolLM2-135M from models/ (no server), and the wire
bound on the number of inputs. Images: the fields the wire bounds, and the engine's bound on n.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faster_whisper import decode_audio

from appliance.config import EmbeddingModelConfig, load_config
from appliance.engines.audio_decode import SAMPLE_RATE, AudioBounds, Cancelled, Probe, decode, load
from appliance.engines.image_bounds import max_images
from appliance.engines.llm.embedder import LlamaEmbeddingEngine
from appliance.errors import ConfigError, InvalidRequest
from devtools.server_harness import SMOLLM2
from tests.conftest import API_KEY, FastStack
from tests.media_files import (
    FLAC_MAX_BLOCK,
    flac,
    flac_claiming,
    many_streams,
    silence_u8,
    wav,
)

AUTH = {"authorization": f"Bearer {API_KEY}"}
BOUNDS = AudioBounds(max_seconds=1800)
NEVER = lambda: False  # noqa: E731  (a cancel flag that stays down)


def refused(source: Path, bounds: AudioBounds = BOUNDS) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        load(source, bounds, NEVER)
    assert caught.value.param == "file"
    return caught.value


# -- audio -----------------------------------------------------------------------------------


def test_an_hour_in_14_kb_is_refused_by_its_packets_before_decoding(tmp_path: Path) -> None:
    hour = flac(tmp_path / "hour.flac", 8000, 3600, block=FLAC_MAX_BLOCK)
    assert hour.stat().st_size < 20_000
    tracemalloc.start()
    started = time.monotonic()
    error = refused(hour)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert error.code == "audio_too_long" and "1800 seconds" in str(error)
    assert elapsed < 1.0
    assert peak < 1_000_000  # nothing decoded: no sample buffer at all


def test_a_header_that_claims_one_second_is_not_believed(tmp_path: Path) -> None:
    three_hours = flac(tmp_path / "3h.flac", 8000, 3 * 3600, block=FLAC_MAX_BLOCK)
    lying = flac_claiming(tmp_path / "lying.flac", three_hours, 8000)  # "1 second"
    assert refused(lying).code == "audio_too_long"


def test_packets_that_understate_are_cut_while_decoding_in_bounded_memory(
        tmp_path: Path) -> None:
    three_hours = flac(tmp_path / "3h.flac", 8000, 3 * 3600, block=FLAC_MAX_BLOCK)
    bounds = AudioBounds(max_seconds=60)
    tracemalloc.start()
    with pytest.raises(InvalidRequest) as caught:  # as if the probe had found one second
        decode(three_hours, Probe(seconds=1.0), bounds, NEVER)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert caught.value.code == "audio_too_long" and "60 seconds" in str(caught.value)
    one_bound = 60 * SAMPLE_RATE * 4  # float32 samples of the bound: 3.8 MB, not 690 MB
    assert peak < 3 * one_bound


@pytest.mark.parametrize(("rate", "channels", "words"), [
    (1, 1, "sample rate (1 Hz)"),
    (10_000_000, 1, "sample rate (10000000 Hz)"),
    (1000, 1, "sample rate (1000 Hz)"),
    (8000, 65_535, "channels"),
])
def test_odd_rates_and_channel_counts_are_refused(tmp_path: Path, rate: int, channels: int,
                                                  words: str) -> None:
    odd = wav(tmp_path / "odd.wav", rate=rate, channels=channels, data=silence_u8(8000, 2))
    error = refused(odd)
    assert error.code == "invalid_audio" and words in str(error)


@pytest.mark.parametrize(("tag", "bits"), [(0x1234, 8), (1, 0)])
def test_an_encoding_without_a_decoder_is_refused(tmp_path: Path, tag: int, bits: int) -> None:
    # PyAV opens the stream but gives it no codec context: a 400, not an AttributeError.
    odd = wav(tmp_path / "odd.wav", rate=8000, data=silence_u8(8000, 1), tag=tag, bits=bits)
    error = refused(odd)
    assert error.code == "invalid_audio" and "cannot decode" in str(error)


def test_a_wav_header_that_understates_is_read_as_declared(tmp_path: Path) -> None:
    short = wav(tmp_path / "short.wav", rate=8000, data=silence_u8(8000, 600), declared=8000)
    assert load(short, BOUNDS, NEVER).shape[0] == SAMPLE_RATE  # one second, as declared
    unknown = wav(tmp_path / "unknown.wav", rate=8000, data=silence_u8(8000, 2),
                  declared=0xFFFFFFFF)  # "streaming" WAV: the length is what is there
    assert load(unknown, BOUNDS, NEVER).shape[0] == 2 * SAMPLE_RATE


def test_a_long_wav_is_refused_by_its_packets(tmp_path: Path) -> None:
    long = wav(tmp_path / "long.wav", rate=8000, data=silence_u8(8000, 1801))
    assert refused(long).code == "audio_too_long"


def test_thousands_of_streams_and_no_audio_are_refused(tmp_path: Path) -> None:
    assert "more than 16 streams" in str(refused(many_streams(tmp_path / "many.mkv", 900)))
    empty = wav(tmp_path / "empty.wav", rate=8000, data=b"")
    assert "no audio samples" in str(refused(empty))
    text = tmp_path / "playlist.m3u8"
    text.write_text("#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n")
    assert refused(text).code == "invalid_audio"  # playlists are never opened


def test_packets_too_small_are_refused_before_decoding(tmp_path: Path) -> None:
    # 16-sample FLAC blocks: 500 packets a second, each a Python round trip to decode.
    tiny = flac(tmp_path / "tiny.flac", 8000, 5, block=16)
    error = refused(tiny, AudioBounds(max_seconds=10))
    assert "1000 packets" in str(error)


def test_a_truncated_file_decodes_what_it_holds(tmp_path: Path) -> None:
    whole = flac(tmp_path / "tone.flac", 16_000, 4, tone=True)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    samples = load(cut, BOUNDS, NEVER)
    assert SAMPLE_RATE <= samples.shape[0] < 4 * SAMPLE_RATE
    header_only = tmp_path / "header.flac"
    header_only.write_bytes(whole.read_bytes()[:60])
    assert refused(header_only).code == "invalid_audio"


def test_samples_are_those_faster_whisper_decodes(tmp_path: Path) -> None:
    stereo = flac(tmp_path / "stereo.flac", 22_050, 2, tone=True, layout="stereo")
    with stereo.open("rb") as upload:  # as the api hands it over: an open file
        ours = load(upload, BOUNDS, NEVER)
    np.testing.assert_array_equal(ours, decode_audio(str(stereo), sampling_rate=SAMPLE_RATE))


def test_a_cancelled_read_stops(tmp_path: Path) -> None:
    long = flac(tmp_path / "long.flac", 8000, 600, block=1024)  # 4,688 packets
    with pytest.raises(Cancelled):
        load(long, BOUNDS, lambda: True)


# -- embeddings ------------------------------------------------------------------------------

SENTENCE = "The quick brown fox jumps over the lazy dog. "


@pytest.fixture(scope="module")
def embedder() -> Iterator[LlamaEmbeddingEngine]:
    engine = LlamaEmbeddingEngine.load(EmbeddingModelConfig(
        id="smollm2-embed", path=SMOLLM2, context_length=64, threads=1,
        max_request_tokens=3000))
    try:
        yield engine
    finally:
        engine.close()


async def _refusal(engine: LlamaEmbeddingEngine, inputs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        await engine.embed(inputs)
    return caught.value


@pytest.mark.anyio
async def test_an_abandoned_embedding_keeps_its_slot_until_its_thread_stops(
        embedder: LlamaEmbeddingEngine) -> None:
    text = SENTENCE * 6  # ~60 tokens: one decode per input at context 64
    abandoned = asyncio.ensure_future(embedder.embed([text] * 48))
    await asyncio.sleep(0.5)  # the worker is decoding
    abandoned.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await abandoned
    # The worker thread is still in its decode: the slot is still taken (it used to be given
    # back at once, and the next request then queued, unseen, behind all 48 inputs).
    assert embedder.occupancy.busy == 1
    started = time.monotonic()
    result = await embedder.embed(["hello"])
    assert time.monotonic() - started < 5.0  # one decode, not the 47 left (~30 s here)
    assert len(result.vectors) == 1
    assert embedder.occupancy.busy == 0


@pytest.mark.anyio
async def test_embedding_inputs_are_bounded_before_work(embedder: LlamaEmbeddingEngine) -> None:
    too_long = await _refusal(embedder, ["fine", SENTENCE * 20])
    assert (too_long.param, too_long.code) == ("input[1]", "context_length_exceeded")
    assert "maximum context length is 64 tokens" in str(too_long)
    started = time.monotonic()
    huge = await _refusal(embedder, ["ok", "ok", " " * 1_000_000])  # never tokenized
    assert time.monotonic() - started < 0.1
    assert huge.param == "input[2]" and "1000000 characters" in str(huge)
    ids = await _refusal(embedder, [[1, 2], [5] * 65])
    assert ids.param == "input[1]" and "65 tokens" in str(ids)
    vocabulary = await _refusal(embedder, [[1, 2], [3, 10**9]])
    assert vocabulary.param == "input[1]" and "vocabulary" in str(vocabulary)
    total = await _refusal(embedder, [SENTENCE * 5] * 70)  # 70 x ~50 tokens > 3000
    assert (total.param, total.code) == ("input", "max_tokens_per_request")
    assert "at most 3000 tokens per request" in str(total)
    assert embedder.occupancy.busy == 0


@pytest.mark.anyio
async def test_more_inputs_than_openai_takes_are_400(stack: FastStack) -> None:
    response = await stack.http.post("/v1/embeddings", headers=AUTH, json={
        "model": "fake-embed", "input": ["x"] * 2049})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"
    assert "2048" in response.json()["error"]["message"]


# -- images ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "value"), [
    ("prompt", "x" * 32_001),
    ("negative_prompt", "x" * 32_001),
    ("model", "m" * 257),
    ("user", "u" * 257),
    ("safety_identifier", "s" * 257),
])
async def test_image_text_fields_are_bounded(stack: FastStack, field: str, value: str) -> None:
    body = {"model": "fake-image", "prompt": "a cat", field: value}
    response = await stack.http.post("/v1/images/generations", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


def test_n_is_bounded_by_size_and_steps() -> None:
    default = ((512, 512), 50)
    assert max_images(*default, (512, 512), 50) == 10
    assert max_images(*default, (512, 512), 100) == 10  # quality "high"
    assert max_images(*default, (512, 512), 150) == 6
    assert max_images(*default, (1024, 1024), 50) == 2  # four times the pixels
    assert max_images(*default, (1024, 1024), 150) == 1  # one image is always allowed
    assert max_images((64, 64), 2, (64, 64), 8) == 5  # a model configured with 2 steps


# -- audio form fields ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("field", "value"), [("prompt", "p" * 16_001), ("model", "m" * 257)])
async def test_audio_text_fields_are_bounded(stack: FastStack, field: str, value: str) -> None:
    data = {"model": "fake-whisper", field: value}
    response = await stack.http.post("/v1/audio/transcriptions", headers=AUTH, data=data,
                                     files={"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


# -- models.toml keys ----------------------------------------------------------------------------


def _models(tmp_path: Path, table: str) -> Path:
    tmp_path.mkdir()
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    (tmp_path / "whisper").mkdir()
    config = tmp_path / "models.toml"
    config.write_text(f"[[models]]\n{table}\n", encoding="utf-8")
    return config


def test_max_audio_s_and_max_request_tokens_are_per_kind_keys(tmp_path: Path) -> None:
    whisper = load_config(_models(tmp_path / "a", 'id = "w"\nkind = "transcription"\n'
                                                  'path = "whisper"\nmax_audio_s = 600'))
    assert whisper.models[0].max_audio_s == 600.0
    embed = load_config(_models(tmp_path / "b", 'id = "e"\nkind = "embedding"\n'
                                                'path = "m.gguf"\nmax_request_tokens = 5000'))
    assert embed.models[0].max_request_tokens == 5000
    assert load_config(_models(tmp_path / "c", 'id = "w"\nkind = "transcription"\n'
                                               'path = "whisper"')).models[0].max_audio_s == 1800
    for table, key in [('id = "c"\npath = "m.gguf"\nmax_audio_s = 60', "max_audio_s"),
                       ('id = "c"\npath = "m.gguf"\nmax_request_tokens = 9', "max_request_tokens"),
                       ('id = "w"\nkind = "transcription"\npath = "whisper"\nmax_audio_s = 0',
                        "max_audio_s")]:
        folder = tmp_path / f"bad-{key}-{len(table)}"
        with pytest.raises(ConfigError, match=key):
            load_config(_models(folder, table))
