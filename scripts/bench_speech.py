"""Benchmark: text to speech through the appliance's HTTP path against the engine in-process.

Same text (five sentences, about 20 s of speech), same voice and settings: the in-process side
runs the appliance's own ``PiperSpeechEngine.synthesise`` (phonemize, then sentence by
sentence) on this process's threads; the HTTP side streams ``POST /v1/audio/speech`` from a
real server. Runs are interleaved so both see the same machine noise. Prints, per side and
format, the median time to the first audio byte (TTFB), the median total, and the real-time
factor (processing seconds / audio seconds; under 1 is faster than real time).

    .venv/bin/python scripts/bench_speech.py [--runs 5] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench_chat import start_server

from appliance.config import SpeechModelConfig
from appliance.engines.base import CancelToken, SpeechAudio, SpeechParams
from appliance.engines.speech import PiperSpeechEngine
from devtools import server_harness as harness
from devtools.server_harness import PIPER_JOE, create_key, free_port, toml_string

TEXT = ("The appliance loads every model at boot and serves them through one API. "
        "Teams run it on a workstation, on a shared server, or on a laptop without a network. "
        "Each request gets one row in the ledger with its flat price. "
        "Speech is synthesised sentence by sentence, and the audio streams back as it is ready. "
        "The quick brown fox jumps over the lazy dog, then rests in the shade of an old tree.")
FORMATS = ("pcm", "mp3")


def write_config(folder: Path, model: Path, port: int, device: str, threads: int | None) -> Path:
    lines = ["[[models]]", 'id = "bench-speech"', 'kind = "speech"',
             f"path = {toml_string(str(model))}", f'device = "{device}"']
    if threads is not None:
        lines.append(f"threads = {threads}")
    return harness.write_config(folder, port, "\n".join([*lines, ""]))


def in_process(engine: PiperSpeechEngine) -> tuple[float, float, float]:
    """(seconds to the first sentence's samples, seconds in all, seconds of audio)."""
    started = time.perf_counter()
    first, audio = None, 0.0
    for event in engine.synthesise(SpeechParams(text=TEXT, voice="joe"), CancelToken()):
        if isinstance(event, SpeechAudio):
            first = first if first is not None else time.perf_counter() - started
            audio += event.seconds
    assert first is not None
    return first, time.perf_counter() - started, audio


def over_http(http: httpx2.Client, response_format: str) -> tuple[float, float]:
    """(seconds to the first audio byte, seconds to the last)."""
    started = time.perf_counter()
    first = None
    size = 0
    with http.stream("POST", "/v1/audio/speech", json={
            "model": "bench-speech", "voice": "joe", "input": TEXT,
            "response_format": response_format}) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes():
            if chunk and first is None:
                first = time.perf_counter() - started
            size += len(chunk)
    assert first is not None and size > 0
    return first, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, default=PIPER_JOE)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    config = SpeechModelConfig(id="bench-speech", path=args.model.resolve(),
                               device=args.device, threads=args.threads)
    engine = PiperSpeechEngine.load(config)
    engine.warm_up()
    _, _, audio_s = in_process(engine)
    local: list[tuple[float, float]] = []
    remote: dict[str, list[tuple[float, float]]] = {f: [] for f in FORMATS}
    with tempfile.TemporaryDirectory(prefix="bench-speech-") as name:
        port = free_port()
        toml = write_config(Path(name), args.model.resolve(), port, args.device, args.threads)
        key = create_key(toml, "bench")
        server = start_server(toml, port)
        try:
            with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=600,
                               headers={"Authorization": f"Bearer {key}"}) as http:
                for response_format in FORMATS:
                    over_http(http, response_format)  # the first request's costs, once
                for _ in range(args.runs):
                    first, total, _ = in_process(engine)
                    local.append((first, total))
                    for response_format in FORMATS:
                        remote[response_format].append(over_http(http, response_format))
        finally:
            server.stop()
    engine.close()
    print(f"\ntext: {len(TEXT)} characters, {audio_s:.1f} s of speech; voice "
          f"{args.model.name} on {engine.device}; {args.runs} runs each, interleaved\n")
    print(f"{'path':34} {'TTFB s':>8} {'total s':>8} {'RTF':>7}")

    def row(label: str, runs: list[tuple[float, float]]) -> None:
        first = statistics.median(r[0] for r in runs)
        total = statistics.median(r[1] for r in runs)
        print(f"{label:34} {first:8.3f} {total:8.3f} {total / audio_s:7.3f}")

    row("engine in-process (samples)", local)
    for response_format in FORMATS:
        row(f"appliance over HTTP ({response_format})", remote[response_format])
    for response_format in FORMATS:
        ratio = statistics.median(r[1] / b[1] for r, b in
                                  zip(remote[response_format], local, strict=True))
        print(f"\nHTTP ({response_format}) / in-process, total (median ratio): {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
