"""The warm-ups leave nothing for the first request to pay, told by counts, not timers.

Embeddings: llama.cpp touches the pages of its buffers only when a decode first needs them
(and grows its output buffer to the most outputs a decode has had so far), so a first request
larger than the warm-up's faults in memory that later ones find ready. A minor page fault is
a count the kernel keeps per process (getrusage): the test holds whatever the machine's speed.

Transcription: the first request used to import PyAV modules for its upload and load
faster-whisper's voice-activity model (both once per process); after the warm-up it does
neither.
"""

from __future__ import annotations

import asyncio
import io
import resource
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import faster_whisper.vad
import pytest

from appliance.config import EmbeddingModelConfig, TranscriptionModelConfig
from appliance.engines.base import CancelToken, Segment, TranscriptionParams
from appliance.engines.llm.embedder import MAX_BATCH_TOKENS, MAX_SEQUENCES, LlamaEmbeddingEngine
from appliance.engines.whisper import WhisperEngine
from devtools.server_harness import SMOLLM2, WHISPER_TINY

pytestmark = pytest.mark.real
# Without the full-batch warm-up the first 60-token input took ~6,400 faults (25 MB) and the
# first full batch ~25,000; after it both take a handful (Python's own allocations).
FEW_FAULTS = 1500


def faults(work: Callable[[list[list[int]]], None], inputs: list[list[int]]) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    work(inputs)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.fixture(scope="module")
def embedder() -> Iterator[LlamaEmbeddingEngine]:
    engine = LlamaEmbeddingEngine.load(EmbeddingModelConfig(
        id="smollm2-embed", path=SMOLLM2, context_length=1024))
    try:
        engine.warm_up()
        yield engine
    finally:
        engine.close()


def test_after_the_warm_up_no_request_up_to_a_full_batch_faults_in_memory(
        embedder: LlamaEmbeddingEngine) -> None:
    def embed(inputs: list[list[int]]) -> None:
        result = embedder._embed_all(inputs, CancelToken())
        assert len(result.vectors) == len(inputs)

    each = MAX_BATCH_TOKENS // MAX_SEQUENCES
    cases = {
        "one input of 60 tokens": [list(range(1000, 1060))],
        f"one input of {MAX_BATCH_TOKENS} tokens": [list(range(1000, 1000 + MAX_BATCH_TOKENS))],
        "a full batch": [list(range(2000 + each * i, 2000 + each * (i + 1)))
                         for i in range(MAX_SEQUENCES)],
    }
    counted = {name: faults(embed, inputs) for name, inputs in cases.items()}
    assert all(count < FEW_FAULTS for count in counted.values()), counted


def test_after_the_warm_up_a_transcription_imports_and_loads_nothing(tmp_path: Path) -> None:
    # Loaded here, not in a fixture, so nothing else in this process loaded the filter first.
    if faster_whisper.vad.get_vad_model.cache_info().currsize:
        pytest.skip("faster-whisper's voice-activity model was loaded before this test")
    engine = WhisperEngine.load(TranscriptionModelConfig(id="whisper", path=WHISPER_TINY))
    try:
        engine.warm_up()
        assert faster_whisper.vad.get_vad_model.cache_info().currsize == 1
        speech = tmp_path / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(speech), "The first request pays nothing."],
                       check=True, timeout=60)

        async def transcribe() -> str:
            params = TranscriptionParams(audio=io.BytesIO(speech.read_bytes()))
            return "".join([event.text async for event in engine.transcribe(
                params, CancelToken()) if isinstance(event, Segment)])

        modules = set(sys.modules)
        text = asyncio.run(transcribe())
        assert "request" in text.lower()
        assert set(sys.modules) - modules == set()
        assert faster_whisper.vad.get_vad_model.cache_info().misses == 1  # loaded once
    finally:
        engine.close()
