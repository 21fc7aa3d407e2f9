"""The time stretch behind speech faster than the voice's own pace (speech_tempo.Tempo):
a stream of pieces comes out 1 / factor as long in total, at the same pitch, whatever the
pieces' sizes; a factor of 1 is the audio itself."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.engines.speech_tempo import Tempo

RATE = 22_050


def tone(seconds: float, hertz: float = 220.0) -> np.ndarray:
    times = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * hertz * times)).astype(np.float32)


def stretched(tempo: Tempo, pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([*(tempo.feed(piece) for piece in pieces), tempo.end()])


def dominant_hertz(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / RATE)[int(np.argmax(spectrum))])


@pytest.mark.parametrize("factor", [1.25, 2.0, 3.0, 4.0])
def test_a_stream_of_pieces_comes_out_one_over_factor_as_long(factor: float) -> None:
    rng = np.random.default_rng(7)
    sizes = [int(n) for n in rng.integers(300, 40_000, size=12)]  # a word to 2 s each
    pieces = [rng.uniform(-0.5, 0.5, size).astype(np.float32) for size in sizes]
    out = stretched(Tempo(RATE, factor), pieces)
    assert out.dtype == np.float32
    # Within 25 ms of the exact length over the whole stream: no piece's edge adds up.
    assert abs(out.size - sum(sizes) / factor) < 0.025 * RATE


@pytest.mark.parametrize("factor", [1.5, 2.0, 4.0])
def test_the_pitch_is_kept(factor: float) -> None:
    out = stretched(Tempo(RATE, factor), [tone(1.0), tone(1.0)])
    assert abs(dominant_hertz(out) - 220.0) < 5.0  # resampling would give 220 x factor


def test_a_factor_of_one_is_the_audio_itself() -> None:
    audio = tone(0.3)
    tempo = Tempo(RATE, 1.0)
    assert tempo.feed(audio) is audio
    assert tempo.end().size == 0


def test_a_one_sample_first_piece_waits_for_the_next() -> None:
    # atempo itself fails on a one-sample first frame above factor 2 (ENOMEM).
    tempo = Tempo(RATE, 4.0)
    assert tempo.feed(np.ones(1, dtype=np.float32)).size == 0
    out = np.concatenate([tempo.feed(tone(1.0)), tempo.end()])
    assert abs(out.size - (RATE + 1) / 4) < 0.025 * RATE


@pytest.mark.parametrize("factor", [0.5, 0.99, 101.0])
def test_factors_outside_the_filter_are_refused(factor: float) -> None:
    with pytest.raises(ValueError, match="tempo factor"):
        Tempo(RATE, factor)


def test_an_ended_stream_takes_nothing_more() -> None:
    tempo = Tempo(RATE, 2.0)
    tempo.feed(tone(0.5))
    tempo.end()
    with pytest.raises(RuntimeError, match="ended"):
        tempo.feed(tone(0.5))
    with pytest.raises(RuntimeError, match="ended"):
        tempo.end()
