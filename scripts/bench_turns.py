"""Benchmark: how long one key's short request waits behind another key's long one.

The embedding model, whisper and the Piper voice run a request step by step in their worker
pool (a batch of inputs, a segment of audio, a sentence of speech), and the image model
computes a request in turns of denoising steps; another key's waiting request takes its turn
between two steps. In process, on the real engines with one worker
each, interleaved round by round:

- ``short alone``: the short request on an idle engine (the floor);
- ``long alone``: the long request on an idle engine: what the short one waited, on top of
  its own time, when a request held the worker from its first step to its last;
- ``short behind long``: the short request sent while the long one runs (another key).

Prints each median and the ratio of ``short behind long`` to ``long alone + short alone``.

    .venv/bin/python scripts/bench_turns.py [--rounds 3]
        [--kinds embedding,transcription,speech,image]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from appliance.config import (
    EmbeddingModelConfig,
    ImageModelConfig,
    SpeechModelConfig,
    TranscriptionModelConfig,
)
from appliance.engines.base import CancelToken, ImageParams, SpeechParams, TranscriptionParams
from appliance.engines.diffusion import DiffusionEngine
from appliance.engines.llm.embedder import LlamaEmbeddingEngine
from appliance.engines.speech import PiperSpeechEngine
from appliance.engines.whisper import WhisperEngine
from devtools.server_harness import PIPER_JOE, SMOLLM2, TINY_SD, WHISPER_TINY, build_tiny_sd

SENTENCE = "The quick brown fox jumps over the lazy dog. "
SHORT = SENTENCE
# No sentence twice in one 30-second window: whisper needs no temperature fallback (which
# samples, and makes the windows' times random).
STORY = ("The appliance loads every model at boot and serves them through one API. "
         "Teams run it on a workstation, on a shared server, or on a laptop without a network. "
         "Each request gets one row in the ledger with its flat price. "
         "Speech is transcribed window by window, and the text streams back as it is ready. "
         "The quick brown fox jumps over the lazy dog, then rests in the shade of an old tree. ")
Request = Callable[[str], Awaitable[Any]]


async def timed(request: Request, owner: str) -> float:
    started = time.perf_counter()
    await request(owner)
    return time.perf_counter() - started


async def behind(long: Request, short: Request, busy: Callable[[], int]) -> float:
    """The short request's time, sent once the long one holds the worker."""
    first = asyncio.ensure_future(long("key_a"))
    while busy() == 0:
        await asyncio.sleep(0.005)
    waited = await timed(short, "key_b")
    await first
    return waited


def measure(name: str, long: Request, short: Request, busy: Callable[[], int],
            rounds: int) -> list[str]:
    times: dict[str, list[float]] = {"short alone": [], "long alone": [],
                                     "short behind long": []}
    for _ in range(rounds):
        times["short alone"].append(asyncio.run(timed(short, "key_b")))
        times["long alone"].append(asyncio.run(timed(long, "key_a")))
        times["short behind long"].append(asyncio.run(behind(long, short, busy)))
    median = {case: statistics.median(values) for case, values in times.items()}
    whole = median["long alone"] + median["short alone"]
    return [f"| {name} | {median['short alone']:.2f} | {median['long alone']:.2f} | "
            f"{median['short behind long']:.2f} | {whole:.2f} | "
            f"{median['short behind long'] / whole:.2f} |"]


def embedding_rows(rounds: int) -> list[str]:
    engine = LlamaEmbeddingEngine.load(EmbeddingModelConfig(id="embed", path=SMOLLM2,
                                                            context_length=1024))
    engine.warm_up()
    # Inputs past half of a batch's 512 tokens: each its own decode (step).
    paragraphs = [f"Paragraph {i}. " + SENTENCE * 24 for i in range(8)]

    async def long(owner: str) -> None:
        await engine.embed(paragraphs, owner=owner)

    async def short(owner: str) -> None:
        await engine.embed(["A short question about the fox?"], owner=owner)

    try:
        return measure("embeddings: 8 inputs of ~270 tokens vs 1 short input", long, short,
                       lambda: engine.occupancy.busy, rounds)
    finally:
        engine.close()


def transcription_rows(rounds: int, folder: Path) -> list[str]:
    def speak(text: str, name: str) -> Path:
        wav = folder / name
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text],
                       check=True, capture_output=True)
        return wav

    long_audio = speak(STORY * 4, "long.wav")
    short_audio = speak(SHORT, "short.wav")
    engine = WhisperEngine.load(TranscriptionModelConfig(id="whisper", path=WHISPER_TINY,
                                                         workers=1))
    engine.warm_up()

    def request(audio: Path) -> Request:
        async def transcribe(owner: str) -> None:
            async for _ in engine.transcribe(TranscriptionParams(audio=audio, owner=owner),
                                             CancelToken()):
                pass
        return transcribe

    try:
        return measure("whisper-tiny.en: ~110 s of speech vs ~3 s", request(long_audio),
                       request(short_audio), lambda: engine.occupancy.busy, rounds)
    finally:
        engine.close()


def speech_rows(rounds: int) -> list[str]:
    engine = PiperSpeechEngine.load(SpeechModelConfig(id="piper", path=PIPER_JOE, workers=1))
    engine.warm_up()
    voice = next(iter(engine.voices.values()))

    def request(text: str) -> Request:
        async def speak(owner: str) -> None:
            async for _ in engine.speak(SpeechParams(text=text, voice=voice, owner=owner),
                                        CancelToken()):
                pass
        return speak

    try:
        return measure(f"piper joe-medium: {len(STORY * 4)} characters vs one sentence",
                       request(STORY * 4), request(SHORT), lambda: engine.occupancy.busy,
                       rounds)
    finally:
        engine.close()


def image_rows(rounds: int) -> list[str]:
    build_tiny_sd()
    engine = DiffusionEngine.load(ImageModelConfig(id="sd", path=TINY_SD, steps=2,
                                                   sizes=("64x64",), workers=1))
    engine.warm_up()

    def request(steps: int) -> Request:
        async def generate(owner: str) -> None:
            await engine.generate(ImageParams("a fox", width=64, height=64, steps=steps,
                                              owner=owner), CancelToken())
        return generate

    try:
        return measure("tiny random SD 64x64: 150 steps vs 2", request(150), request(2),
                       lambda: engine.occupancy.busy, rounds)
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="embedding,transcription,speech,image")
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    rows = ["| engine: long request vs short one | short alone s | long alone s | "
            "short behind long s | long + short s (one job a request) | ratio |",
            "|---|---|---|---|---|---|"]
    if "embedding" in kinds:
        rows += embedding_rows(args.rounds)
    if "transcription" in kinds:
        with tempfile.TemporaryDirectory() as folder:
            rows += transcription_rows(args.rounds, Path(folder))
    if "speech" in kinds:
        rows += speech_rows(args.rounds)
    if "image" in kinds:
        rows += image_rows(args.rounds)
    print(f"medians of {args.rounds} interleaved rounds, one worker each")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
