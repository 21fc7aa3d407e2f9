"""Speech made faster with its pitch kept: ffmpeg's ``atempo`` filter, through PyAV.

Piper's length scale cannot make a voice much faster than it is: no phoneme lasts less than
one vocoder frame, so a length scale of 1/4 gives audio about half as long, not a quarter
(README, Text to speech). A request's ``speed`` above 1 is therefore synthesised at the
voice's own pace and then stretched here, by overlap-add of similar waveform pieces (WSOLA),
which keeps the pitch that resampling would raise.

One ``Tempo`` stretches one request's audio as a single stream, piece after piece: the
filter works in windows of tens of milliseconds, and a piece stretched alone would come out
up to a fifth off its length (a short word) and could not be stretched at all below a window.
A stream's pieces come out ``1 / factor`` as long in total; each piece's output holds what the
filter has finished, and the tail of the last comes with ``end``. Used by one thread at a time
(the worker running the request's current step).
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.error
import av.filter
import numpy as np
import numpy.typing as npt

# One atempo filter takes factors 0.5-100 (ffmpeg 4.3 on); speech asks for 1-4.
MAX_FACTOR = 100.0
# atempo fails on a one-sample first frame above factor 2 (ENOMEM): shorter input waits to be
# joined with the next (a piece of speech is hundreds of samples; this is a guard).
MIN_FRAME = 2
Samples = npt.NDArray[np.float32]


class Tempo:
    def __init__(self, sample_rate: int, factor: float):
        if not 1.0 <= factor <= MAX_FACTOR:
            raise ValueError(f"tempo factor {factor} is outside 1-{MAX_FACTOR:g}")
        self._sample_rate = sample_rate
        self._time_base = Fraction(1, sample_rate)
        self._fed = 0  # samples pushed so far: the next frame's timestamp
        self._held = np.zeros(0, dtype=np.float32)  # fed, too short to push yet
        self._graph = None if factor == 1.0 else self._build(factor)
        self._ended = False

    def _build(self, factor: float) -> av.filter.Graph:
        graph = av.filter.Graph()
        source = graph.add_abuffer(format="flt", sample_rate=self._sample_rate,
                                   layout="mono", time_base=self._time_base)
        tempo = graph.add("atempo", f"{factor:.6f}")
        sink = graph.add("abuffersink")
        source.link_to(tempo)
        tempo.link_to(sink)
        graph.configure()
        return graph

    def feed(self, audio: Samples) -> Samples:
        """The stretched audio ready after ``audio`` (mono float samples) joins the stream."""
        if self._ended:
            raise RuntimeError("the stream has ended")
        if self._graph is None:
            return audio
        audio = np.concatenate([self._held, np.asarray(audio, dtype=np.float32).reshape(-1)])
        if audio.size < MIN_FRAME:
            self._held = audio
            return np.zeros(0, dtype=np.float32)
        self._held = np.zeros(0, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self._sample_rate
        frame.time_base = self._time_base
        frame.pts = self._fed
        self._fed += audio.size
        self._graph.push(frame)
        return self._drain()

    def end(self) -> Samples:
        """The rest of the stream: what the filter still holds (a lone held sample is
        dropped). Nothing can be fed after."""
        if self._ended:
            raise RuntimeError("the stream has ended")
        self._ended = True
        if self._graph is None:
            return np.zeros(0, dtype=np.float32)
        self._graph.push(None)
        return self._drain()

    def _drain(self) -> Samples:
        assert self._graph is not None
        out: list[Samples] = []
        while True:
            try:
                stretched = self._graph.pull()
            except (av.error.EOFError, av.error.BlockingIOError):  # ended; needs more input
                break
            out.append(np.asarray(stretched.to_ndarray(), dtype=np.float32).reshape(-1))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
