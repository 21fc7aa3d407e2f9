"""Benchmark: speech to text through the appliance's HTTP path against faster-whisper in-process.

Same audio (espeak-ng speech, about 30 s), same model folder, same settings as the engine
(beam 5, VAD, temperature fallback, int8 on CPU), interleaved run by run so both sides see the
same machine noise. Prints the real-time factor (processing seconds / audio seconds) of each
side, their median ratio (target: HTTP costs under 5%), and 4 concurrent requests against 1.

    .venv/bin/python scripts/bench_audio.py [--runs 5] [--model models/whisper-tiny.en]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
from faster_whisper import WhisperModel, decode_audio

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench_chat import start_server

from appliance.engines.whisper import (  # the engine's own settings, not copies
    BEAM_SIZE,
    FALLBACK_TEMPERATURES,
    SAMPLE_RATE,
    VAD_FILTER,
    choose_compute_type,
    choose_device,
)
from devtools import server_harness as harness
from devtools.server_harness import WHISPER_TINY, create_key, free_port, toml_string

TEXT = ("The appliance loads every model at boot and serves them through one API. "
        "Teams run it on a workstation, on a shared server, or on a laptop without a network. "
        "Each request gets one row in the ledger with its flat price. "
        "Speech is transcribed segment by segment, and the text streams back as it is ready. "
        "The quick brown fox jumps over the lazy dog, then rests in the shade of an old tree.")


def speech(folder: Path) -> Path:
    wav = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(wav), TEXT], check=True)
    return wav


def write_config(folder: Path, model: Path, port: int, workers: int) -> Path:
    return harness.write_config(folder, port, "\n".join([
        "[[models]]", 'id = "bench-whisper"', 'kind = "transcription"',
        f"path = {toml_string(str(model))}", f"workers = {workers}", ""]))


def in_process(whisper: WhisperModel, wav: Path) -> float:
    started = time.perf_counter()
    audio = decode_audio(str(wav), sampling_rate=SAMPLE_RATE)
    segments, _ = whisper.transcribe(audio, beam_size=BEAM_SIZE,
                                     temperature=FALLBACK_TEMPERATURES, vad_filter=VAD_FILTER)
    text = "".join(s.text for s in segments)
    assert text.strip()
    return time.perf_counter() - started


def over_http(client: openai.OpenAI, wav: Path) -> float:
    started = time.perf_counter()
    with wav.open("rb") as audio:
        result = client.audio.transcriptions.create(model="bench-whisper", file=audio)
    assert result.text.strip()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, default=WHISPER_TINY)
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as name:
        folder = Path(name)
        wav = speech(folder)
        seconds = decode_audio(str(wav), sampling_rate=SAMPLE_RATE).shape[0] / SAMPLE_RATE
        device = choose_device("auto")
        whisper = WhisperModel(str(args.model), device=device, num_workers=4,
                               compute_type=choose_compute_type("auto", device))
        in_process(whisper, wav)  # warm, as the appliance warms at boot
        port = free_port()
        config = write_config(folder, args.model.resolve(), port, workers=4)
        key = create_key(config, "bench")
        server = start_server(config, port)
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                   max_retries=0, timeout=600)
            over_http(client, wav)
            local, remote = [], []
            for _ in range(args.runs):
                local.append(in_process(whisper, wav))
                remote.append(over_http(client, wav))
            concurrent: dict[int, float] = {}
            for width in (1, 4):
                with ThreadPoolExecutor(width) as pool:
                    started = time.perf_counter()
                    list(pool.map(lambda _: over_http(client, wav), range(width * 2)))
                    concurrent[width] = (time.perf_counter() - started) / (width * 2)
            client.close()
        finally:
            server.stop()
    base, http = statistics.median(local), statistics.median(remote)
    print(f"\naudio: {seconds:.1f} s of speech, model {args.model.name} on {device}, "
          f"{args.runs} runs each, interleaved\n")
    print(f"{'path':28} {'median s':>9} {'RTF':>7}")
    print(f"{'faster-whisper in-process':28} {base:9.3f} {base / seconds:7.3f}")
    print(f"{'appliance over HTTP':28} {http:9.3f} {http / seconds:7.3f}")
    ratio = statistics.median(r / b for r, b in zip(remote, local, strict=True))
    print(f"\nHTTP / in-process (median ratio): {ratio:.3f}")
    print(f"\n{'concurrent requests':28} {'s per request':>14} {'audio s per wall s':>19}")
    for width, per in concurrent.items():
        print(f"{width:<28d} {per:14.3f} {seconds / per:19.1f}")
    print(f"\n4 concurrent vs 1: throughput x{concurrent[1] / concurrent[4]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
