"""How long, and how well heard, speech at each `speed` is: the appliance's voice against
Piper's length scale alone, side by side in one run, no server.

For each speed, the README's test sentence pair is said --rounds times two ways, interleaved
round by round: by the appliance's engine (`PiperSpeechEngine.synthesise`: the length scale
below speed 1, the voice's own pace stretched by atempo above it) and by Piper alone with a
length scale of 1 / speed (what the engine did before). Each is transcribed by
whisper-tiny.en; the table gives the median length against speed 1's (the wanted ratio is
1 / speed) and the median word error rate. The voice varies its phoneme lengths from one
synthesis to the next, so ratios move by a few per cent between rounds.

Usage: scripts/probe-speech-speed [--rounds 3] [--speeds 0.5,1,1.5,2,3,4]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root

from faster_whisper import WhisperModel
from piper import SynthesisConfig

from appliance.config import SpeechModelConfig
from appliance.engines.base import CancelToken, SpeechAudio, SpeechParams
from appliance.engines.speech import PiperSpeechEngine
from devtools.server_harness import PIPER_JOE, WHISPER_TINY
from devtools.word_error import word_error_rate

TEXT = ("The quick brown fox jumps over the lazy dog. "
        "A clear voice reads this sentence for the test.")


def by_engine(engine: PiperSpeechEngine, speed: float) -> np.ndarray:
    params = SpeechParams(text=TEXT, voice=next(iter(engine.voices.values())), speed=speed)
    pcm = b"".join(event.pcm for event in engine.synthesise(params, CancelToken())
                   if isinstance(event, SpeechAudio))
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32767.0


def by_length_scale(engine: PiperSpeechEngine, speed: float) -> np.ndarray:
    voice = engine._voice  # the probe compares against the library itself
    synthesis = SynthesisConfig(length_scale=voice.config.length_scale / speed)
    pieces = [np.asarray(voice.phoneme_ids_to_audio(voice.phonemes_to_ids(sentence),
                                                    synthesis), dtype=np.float32)
              for sentence in voice.phonemize(TEXT)]
    audio = np.concatenate(pieces)
    return audio / max(1e-8, float(np.max(np.abs(audio))))


def heard(whisper: WhisperModel, audio: np.ndarray, sample_rate: int) -> str:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(np.clip(audio * 32767.0, -32767, 32767).astype("<i2").tobytes())
    out.seek(0)
    segments, _ = whisper.transcribe(out, beam_size=1, language="en")
    return " ".join(segment.text for segment in segments)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speeds", default="0.5,1,1.5,2,3,4")
    args = parser.parse_args()
    speeds = sorted({1.0, *(float(s) for s in args.speeds.split(","))})  # 1: the reference
    engine = PiperSpeechEngine.load(SpeechModelConfig(id="joe", path=PIPER_JOE))
    whisper = WhisperModel(str(WHISPER_TINY), device="cpu", compute_type="int8")
    makers = {"appliance": by_engine, "length scale": by_length_scale}
    seconds: dict[tuple[str, float], list[float]] = {}
    errors: dict[tuple[str, float], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for speed in speeds:
                for name, make in makers.items():
                    audio = make(engine, speed)
                    seconds.setdefault((name, speed), []).append(audio.size / engine.sample_rate)
                    errors.setdefault((name, speed), []).append(
                        word_error_rate(TEXT, heard(whisper, audio, engine.sample_rate)))
    finally:
        engine.close()
    print("| speed | wanted | appliance: length | WER | length scale alone: length | WER |")
    print("| --- | --- | --- | --- | --- | --- |")
    for speed in speeds:
        row = [f"{speed:g}", f"{1 / speed:.3f}"]
        for name in makers:
            plain = statistics.median(seconds[(name, 1.0)])
            row += [f"{statistics.median(seconds[(name, speed)]) / plain:.3f}",
                    f"{statistics.median(errors[(name, speed)]):.2f}"]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
