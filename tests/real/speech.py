"""Speech the audio tests synthesize: espeak-ng says a sentence, PyAV re-encodes it."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import av
import pytest

# (container format, codec, file suffix)
ENCODINGS = {
    "mp3": ("mp3", "libmp3lame", ".mp3"),
    "ogg": ("ogg", "libopus", ".ogg"),
    "flac": ("flac", "flac", ".flac"),
    "m4a": ("ipod", "aac", ".m4a"),
    "webm": ("webm", "libopus", ".webm"),
}


def speak(text: str, path: Path, voice: str = "en-us") -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: scripts/test installs it (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True,
                   capture_output=True)
    return path


def silence(path: Path, seconds: float = 2.0) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(b"\0\0" * int(16_000 * seconds))
    return path


def encode(wav: Path, kind: str) -> Path:
    """The same speech in another container and codec."""
    container_format, codec, suffix = ENCODINGS[kind]
    target = wav.with_suffix(suffix)
    rate = 48_000 if codec == "libopus" else 22_050
    with av.open(str(wav)) as source, av.open(str(target), "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=rate)
        resampler = av.AudioResampler(format=stream.codec_context.format or "s16",
                                      layout="mono", rate=rate)
        for frame in source.decode(audio=0):
            for resampled in resampler.resample(frame):
                for packet in stream.encode(resampled):
                    out.mux(packet)
        for resampled in resampler.resample(None):
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return target
