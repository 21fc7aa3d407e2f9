"""Hostile media files, built here with PyAV and numpy (none is downloaded): audio that is
long for its size, headers that lie, odd rates and channel counts, too many streams."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np

FLAC_MAX_BLOCK = 65_535


def flac(path: Path, rate: int, seconds: float, *, block: int = 4096, tone: bool = False,
         layout: str = "mono") -> Path:
    """FLAC of silence (or a 440 Hz tone) in blocks of ``block`` samples: silence in the
    largest blocks is a few bytes per block, so an hour at 8 kHz is 14 KB. (Frames go in by
    the second's worth; the encoder cuts them into blocks.)"""
    channels = len(av.AudioLayout(layout).channels)
    total = int(rate * seconds)
    with av.open(str(path), "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout=layout)
        stream.codec_context.options = {"frame_size": str(block)}
        done = 0
        while done < total:
            count = min(max(block, 65_536), total - done)
            if tone:
                wave = 8000 * np.sin(2 * np.pi * 440 * np.arange(done, done + count) / rate)
                samples = np.repeat(wave.astype(np.int16), channels)[None, :]
            else:
                samples = np.zeros((1, count * channels), dtype=np.int16)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout=layout)
            frame.sample_rate = rate
            frame.pts = done
            for packet in stream.encode(frame):
                out.mux(packet)
            done += count
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def flac_claiming(path: Path, source: Path, samples: int) -> Path:
    """A copy of ``source`` whose STREAMINFO says it holds ``samples`` samples."""
    data = bytearray(source.read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # STREAMINFO comes first
    # Bytes 18..25: sample rate (20 bits), channels (3), bits per sample (5), samples (36).
    word = int.from_bytes(data[18:26], "big")
    word = (word & ~((1 << 36) - 1)) | samples
    data[18:26] = word.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def wav(path: Path, *, rate: int, channels: int = 1, data: bytes,
        declared: int | None = None, tag: int = 1, bits: int = 8) -> Path:
    """8-bit PCM WAV whose header says ``rate``, ``channels`` and ``declared`` data bytes
    (default: the truth), whatever ``data`` holds; ``tag`` (the format tag, 1 = PCM) and
    ``bits`` (per sample) can name an encoding no decoder reads."""
    size = len(data) if declared is None else declared
    header = b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, tag, channels, rate & 0xFFFFFFFF,
                                    (rate * channels) & 0xFFFFFFFF, channels, bits)
    header += b"data" + struct.pack("<I", size & 0xFFFFFFFF)
    path.write_bytes(header + data)
    return path


def silence_u8(rate: int, seconds: float) -> bytes:
    return bytes([128]) * int(rate * seconds)


def many_streams(path: Path, count: int) -> Path:
    """Matroska with ``count`` audio streams of one 20 ms packet each."""
    with av.open(str(path), "w", format="matroska") as out:
        streams = [out.add_stream("pcm_s16le", rate=8000, layout="mono") for _ in range(count)]
        for stream in streams:
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 160), dtype=np.int16),
                                               format="s16", layout="mono")
            frame.sample_rate = 8000
            frame.pts = 0
            for packet in [*stream.encode(frame), *stream.encode(None)]:
                out.mux(packet)
    return path
