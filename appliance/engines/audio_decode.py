"""Decoding an uploaded audio file into 16 kHz mono float32 samples, within bounds.

A file's size says little about its length: 9 KB of FLAC holds an hour of silence at
1 kHz, and a header may claim one second while three hours follow. So nothing here trusts
a header, and nothing decodes before the file is known to fit:

1. ``probe`` opens the container (only demuxers of audio and video files, at most
   ``max_streams`` streams), checks the first audio stream's sample rate and channels, and
   reads its packets without decoding them, adding up their durations and counting them. It
   stops as soon as either passes its bound. Memory stays flat; time is a scan of the file.
2. ``decode`` decodes and resamples packet by packet into one buffer sized from the probe,
   counting seconds from each decoded frame before resampling it: a file whose packets
   lied about their durations is cut at the bound while decoding, so memory follows the
   bound, never the file's claims.

Both steps check ``cancelled`` every few packets, so a request whose client left stops
soon. Every refusal is an InvalidRequest naming ``file`` (code ``audio_too_long`` past the
duration bound, ``invalid_audio`` otherwise) with the bound in its message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import av
import av.error
import numpy as np
import numpy.typing as npt

from appliance.errors import InvalidRequest

SAMPLE_RATE = 16_000  # what whisper reads
# Demuxers of the files people transcribe (OpenAI takes flac, mp3, mp4, mpeg, mpga, m4a,
# ogg, wav, webm). Playlists (hls, concat) and other demuxers that open further files or
# URLs named inside an upload are never used.
DEMUXERS = ("aac,aiff,amr,amrnb,amrwb,asf,au,avi,caf,flac,matroska,mov,mp3,mpeg,mpegts,ogg,"
            "w64,wav,wv")
CHECK_EVERY = 64  # packets between two looks at the cancel flag
Samples = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AudioBounds:
    """What one uploaded file may hold; ``max_seconds`` is per model (models.toml
    ``max_audio_s``), the rest are the same for every model."""

    max_seconds: float
    max_streams: int = 16  # a film with a few audio tracks and subtitles fits
    min_sample_rate: int = 4_000  # below telephone quality (8 kHz) speech is gone
    max_sample_rate: int = 192_000  # the highest rate studios record at
    max_channels: int = 8  # 7.1
    # Every packet costs a Python round trip: 16-sample FLAC blocks decode at ~30,000 packets
    # a second, so a file may have at most this many per second of the duration bound (20 ms
    # Opus has 50, MP3 and AAC fewer than 50, FLAC and WAV about 10).
    packets_per_second: int = 100
    max_bad_packets: int = 100  # corrupt packets skipped before the file is refused

    @property
    def max_packets(self) -> int:
        return int(self.max_seconds * self.packets_per_second)


@dataclass(frozen=True)
class Probe:
    """What the packet scan found: the audio's length by its packets' durations (short of
    the truth where a container leaves them out)."""

    seconds: float


class Cancelled(Exception):
    """The request was cancelled while its audio was being read."""


def _refuse(message: str, code: str = "invalid_audio") -> InvalidRequest:
    return InvalidRequest(message, param="file", code=code)


def _too_long(bounds: AudioBounds, seconds: float) -> InvalidRequest:
    return _refuse(f"The audio is longer than the limit of {bounds.max_seconds:g} seconds for "
                   f"this model (it holds more than {seconds:.0f} s). Send a shorter file.",
                   code="audio_too_long")


@contextmanager
def _opened(source: Path | BinaryIO, bounds: AudioBounds) -> Iterator[Any]:
    if not isinstance(source, Path):
        source.seek(0)
    options = {"format_whitelist": DEMUXERS,
               # one more than allowed, so "too many" can be told apart from "just enough"
               "max_streams": str(bounds.max_streams + 1)}
    try:
        container = av.open(str(source) if isinstance(source, Path) else source, mode="r",
                            options=options, metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise _refuse(f"The file could not be decoded as audio ({why}). Send a file in a "
                      "format such as wav, mp3, m4a, ogg, webm or flac.") from None
    try:
        yield container
    finally:
        container.close()


def _audio_stream(container: Any, bounds: AudioBounds) -> Any:
    if len(container.streams) > bounds.max_streams:
        raise _refuse(f"The file holds more than {bounds.max_streams} streams; audio files "
                      "hold one.")
    if not container.streams.audio:
        raise _refuse("The file holds no audio stream.")
    stream = container.streams.audio[0]
    if stream.codec_context is None:
        # PyAV opens a stream it has no decoder for (a WAV format tag FFmpeg does not know,
        # PCM of 0 bits a sample) and leaves its codec context out.
        raise _refuse("The file's audio is in an encoding this server cannot decode. Send a "
                      "file in a format such as wav, mp3, m4a, ogg, webm or flac.")
    _check_format(stream.codec_context.sample_rate, stream.codec_context.channels, bounds)
    return stream


def _check_format(rate: int, channels: int, bounds: AudioBounds) -> None:
    if not bounds.min_sample_rate <= rate <= bounds.max_sample_rate:
        raise _refuse(f"The audio's sample rate ({rate} Hz) is outside "
                      f"{bounds.min_sample_rate}-{bounds.max_sample_rate} Hz.")
    if not 1 <= channels <= bounds.max_channels:
        raise _refuse(f"The audio has {channels} channels; 1 to {bounds.max_channels} are "
                      "accepted.")


def _too_many_packets(bounds: AudioBounds) -> InvalidRequest:
    return _refuse(f"The audio is cut into more than {bounds.max_packets} packets (at most "
                   f"{bounds.packets_per_second} per second of the {bounds.max_seconds:g}-second "
                   "limit). Re-encode it with larger frames.")


def probe(source: Path | BinaryIO, bounds: AudioBounds,
          cancelled: Callable[[], bool]) -> Probe:
    """Scans the audio packets without decoding them; raises InvalidRequest past a bound,
    Cancelled when ``cancelled`` turns true."""
    with _opened(source, bounds) as container:
        stream = _audio_stream(container, bounds)
        time_base = float(stream.time_base or 0)
        ticks = 0
        for packet in _packets(container, stream, bounds, cancelled):
            ticks += max(0, packet.duration or 0)  # a negative one must not buy room
            if ticks * time_base > bounds.max_seconds:
                raise _too_long(bounds, ticks * time_base)
        return Probe(ticks * time_base)


def _packets(container: Any, stream: Any, bounds: AudioBounds,
             cancelled: Callable[[], bool]) -> Iterator[Any]:
    """The stream's packets, at most ``max_packets``; a damaged container ends them early
    (as ffmpeg does: what came before still decodes)."""
    demuxed = container.demux(stream)
    number = 0
    while True:
        try:
            packet = next(demuxed)
        except (StopIteration, av.error.FFmpegError):
            return
        number += 1
        if number > bounds.max_packets:
            raise _too_many_packets(bounds)
        if number % CHECK_EVERY == 0 and cancelled():
            raise Cancelled
        yield packet


class _Buffer:
    """Resampled audio, in one array sized from the probe that grows (by halves) only for a
    file whose packets understated their length; never past ``limit`` samples."""

    def __init__(self, expected: int, limit: int):
        self._limit = limit
        self._data: Samples = np.empty(max(1, min(expected, limit)), dtype=np.float32)
        self._filled = 0

    def add(self, chunk: Samples) -> None:
        needed = self._filled + chunk.shape[0]
        if needed > self._data.shape[0]:
            if needed > self._limit:
                raise OverflowError
            grown: Samples = np.empty(min(self._limit, max(needed, self._data.shape[0] * 3 // 2)),
                                      dtype=np.float32)
            grown[:self._filled] = self._data[:self._filled]
            self._data = grown
        self._data[self._filled:needed] = chunk
        self._filled = needed

    def samples(self) -> Samples:
        # Shrunk in place (a realloc, no copy): nothing else holds the array.
        self._data.resize(self._filled, refcheck=False)
        return self._data


def decode(source: Path | BinaryIO, found: Probe, bounds: AudioBounds,
           cancelled: Callable[[], bool]) -> Samples:
    """The audio as 16 kHz mono float32; raises InvalidRequest past a bound (counted from the
    decoded frames themselves), Cancelled when ``cancelled`` turns true."""
    limit = int(bounds.max_seconds * SAMPLE_RATE) + SAMPLE_RATE  # + the resampler's delay
    out = _Buffer(int(found.seconds * SAMPLE_RATE) + SAMPLE_RATE, limit)
    seconds = 0.0
    bad = 0
    with _opened(source, bounds) as container:
        stream = _audio_stream(container, bounds)
        resampler = _Resampler()
        try:
            for packet in _packets(container, stream, bounds, cancelled):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    bad += 1  # as ffmpeg does: a corrupt packet is skipped
                    if bad > bounds.max_bad_packets:
                        raise _refuse(f"The file has more than {bounds.max_bad_packets} "
                                      "corrupt audio packets.") from None
                    continue
                for frame in frames:
                    _check_format(frame.sample_rate, frame.layout.nb_channels, bounds)
                    seconds += frame.samples / frame.sample_rate
                    if seconds > bounds.max_seconds:
                        raise _too_long(bounds, seconds)
                    for chunk in resampler.resample(frame):
                        out.add(chunk)
            for chunk in resampler.flush():
                out.add(chunk)
        except OverflowError:
            raise _too_long(bounds, bounds.max_seconds) from None
    samples = out.samples()
    if samples.shape[0] == 0:
        raise _refuse("The file holds no audio samples.")
    return samples


class _Resampler:
    """av's resampler takes one input format for its life; a stream that changes rate or
    layout midway gets a new one (after the old one gives up what it holds).

    It resamples to 16-bit samples and scales them, as faster-whisper's own decoder does:
    the same samples for the same file (a float resampler mixes stereo 3 dB louder)."""

    def __init__(self) -> None:
        self._resampler: Any = None
        self._shape: tuple[int, str, str] | None = None

    def resample(self, frame: Any) -> Iterator[Samples]:
        shape = (frame.sample_rate, frame.layout.name, frame.format.name)
        if shape != self._shape:
            yield from self.flush()
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._shape = shape
        for resampled in self._resampler.resample(frame):
            yield _scaled(resampled)

    def flush(self) -> Iterator[Samples]:
        if self._resampler is None:
            return
        for resampled in self._resampler.resample(None):
            yield _scaled(resampled)
        self._resampler = None
        self._shape = None


def _scaled(frame: Any) -> Samples:
    scaled: Samples = frame.to_ndarray()[0].astype(np.float32) / 32768.0
    return scaled


def load(source: Path | BinaryIO, bounds: AudioBounds,
         cancelled: Callable[[], bool]) -> Samples:
    """``probe`` then ``decode``."""
    return decode(source, probe(source, bounds, cancelled), bounds, cancelled)
