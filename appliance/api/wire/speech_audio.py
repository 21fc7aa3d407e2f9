"""Speech PCM -> the bytes of OpenAI's speech formats, written as the audio arrives.

Every format is at 24 kHz mono, as OpenAI's are: the engine's samples (a Piper voice makes
22,050 Hz) are resampled once here, by FFmpeg's resampler through PyAV, whatever the format.
``pcm`` is the raw samples (signed 16-bit little-endian); ``wav`` is those samples behind a
44-byte header; ``mp3`` (MPEG-2 layer III), ``opus`` (Ogg Opus), ``aac`` (ADTS) and ``flac``
are encoded by FFmpeg and muxed into a byte sink as each sentence comes, so a stream is a
valid file from its first bytes: every one of these containers can be played before its end.

A stream cannot know its length when it starts. The WAV header then says 0xFFFFFFFF for the
RIFF and data sizes (what OpenAI's streamed WAV says, and what FFmpeg, browsers and Python's
``wave`` read as "until the end of the file"); FLAC's STREAMINFO says 0 samples ("unknown",
in the FLAC format). This encoder only ever streams: OpenAI's responses are chunked too.

PyAV is FFmpeg, not an ML library: the api may import it (pyproject's import contracts), and
the api is where wire formats live. Encoding is CPU work, so routes run ``feed`` and
``finish`` in a worker thread, a sentence at a time, never on the event loop.
"""

from __future__ import annotations

import struct
from typing import Literal

import av
import av.container

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
SPEECH_FORMATS: tuple[SpeechFormat, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")
SAMPLE_RATE = 24_000
CHANNELS = 1
SAMPLE_BYTES = 2
# OpenAI's content types for each response_format.
MEDIA_TYPES: dict[SpeechFormat, str] = {
    "mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
    "wav": "audio/wav", "pcm": "audio/pcm",
}
# (container, codec, encoder options). The bit rates are those OpenAI's files have.
_CODECS: dict[SpeechFormat, tuple[str, str, int]] = {
    "mp3": ("mp3", "libmp3lame", 64_000),
    "opus": ("ogg", "libopus", 32_000),
    "aac": ("adts", "aac", 64_000),
    "flac": ("flac", "flac", 0),
}
UNKNOWN_SIZE = 0xFFFFFFFF


def wav_header(data_bytes: int = UNKNOWN_SIZE) -> bytes:
    """RIFF/WAVE header of 16-bit mono PCM at 24 kHz; the default size says "unknown"."""
    riff = UNKNOWN_SIZE if data_bytes == UNKNOWN_SIZE else 36 + data_bytes
    rate = SAMPLE_RATE * CHANNELS * SAMPLE_BYTES
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, CHANNELS, SAMPLE_RATE, rate,
                                    CHANNELS * SAMPLE_BYTES, 8 * SAMPLE_BYTES)
            + b"data" + struct.pack("<I", data_bytes))


class _Sink:
    """A write-only file for the muxer: what it wrote since the last ``take``. It has no
    ``seek``, so muxers that would go back to patch a header (FLAC, MP3's Xing frame) write
    a streamable file instead."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class SpeechEncoder:
    """One response's encoder: ``feed`` each sentence's samples, then ``finish`` once; each
    returns the bytes ready to send (maybe none yet: encoders hold a frame or two)."""

    def __init__(self, response_format: SpeechFormat):
        self.format = response_format
        self._resampler: av.AudioResampler | None = None
        self._resampled_from = 0
        self._sink = _Sink()
        self._container: av.container.OutputContainer | None = None
        self._stream: av.AudioStream | None = None
        self._began = False
        if response_format in _CODECS:
            container, codec, bit_rate = _CODECS[response_format]
            # Ogg holds packets for a second by default before it writes a page: a sentence's
            # audio should leave when the sentence is done.
            options = {"page_duration": "20000"} if container == "ogg" else {}
            self._container = av.open(self._sink, mode="w", format=container,
                                      container_options=options)
            stream = self._container.add_stream(codec, rate=SAMPLE_RATE)
            assert isinstance(stream, av.AudioStream)
            stream.layout = "mono"
            if bit_rate:
                stream.bit_rate = bit_rate
            self._stream = stream

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def feed(self, pcm: bytes, sample_rate: int) -> bytes:
        """Samples (s16le mono at ``sample_rate``) -> the bytes they complete."""
        frames = self._resample(pcm, sample_rate)
        return self._out(frames)

    def finish(self) -> bytes:
        """The rest: what the resampler and the encoder held back, and the container's end."""
        frames = self._resampler.resample(None) if self._resampler is not None else []
        tail = self._out(frames)
        if self._container is not None and self._stream is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            return tail + self._sink.take()
        if self.format == "wav" and not self._began:
            return wav_header() + tail
        return tail

    def _resample(self, pcm: bytes, sample_rate: int) -> list[av.AudioFrame]:
        if not pcm:
            return []
        if self._resampler is None or sample_rate != self._resampled_from:
            # Frames of any size: PyAV re-cuts them to the encoder's fixed frame size.
            self._resampler = av.AudioResampler(format=self._sample_format(), layout="mono",
                                                rate=SAMPLE_RATE)
            self._resampled_from = sample_rate
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // SAMPLE_BYTES)
        frame.planes[0].update(pcm)
        frame.sample_rate = sample_rate
        return list(self._resampler.resample(frame))

    def _sample_format(self) -> str:
        if self._stream is None:
            return "s16"
        formats = self._stream.codec_context.codec.audio_formats or ()
        names = [f.name for f in formats]
        return "s16" if "s16" in names or not names else names[0]

    def _out(self, frames: list[av.AudioFrame]) -> bytes:
        if self._container is None or self._stream is None:
            raw = b"".join(bytes(frame.planes[0])[:frame.samples * SAMPLE_BYTES]
                           for frame in frames)
            if self.format == "wav" and not self._began:
                self._began = True
                return wav_header() + raw
            return raw
        self._began = True
        for frame in frames:
            frame.pts = None
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.take()
