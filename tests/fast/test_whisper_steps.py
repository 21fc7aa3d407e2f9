"""One step of a transcription (``whisper._decode``) on a fake segment generator: where a
step ends. The real engine's turns are in tests/real/test_audio_real.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

from appliance.engines.base import CancelToken
from appliance.engines.runtime.worker_pool import STEP_S
from appliance.engines.whisper import _decode, _Progress

WINDOW = 3000  # faster-whisper's frames per 30-second window


def segments(seeks: list[int], pulled: list[int], cancel_after: int | None = None,
             cancel: CancelToken | None = None) -> Iterator[SimpleNamespace]:
    for number, seek in enumerate(seeks):
        pulled.append(seek)
        if cancel is not None and cancel_after == number:
            cancel.cancel()
        yield SimpleNamespace(seek=seek, start=seek / 100, end=seek / 100 + 1, text=f" s{number}",
                              tokens=[1, 2], temperature=0.0, avg_logprob=-0.1,
                              compression_ratio=1.0, no_speech_prob=0.0, words=None)


def progress_over(seeks: list[int], pulled: list[int], *, frames: int,
                  cancel_after: int | None = None) -> _Progress:
    cancel = CancelToken()
    return _Progress(segments(seeks, pulled, cancel_after, cancel), [], 0, over=False,
                     last_window=frames - WINDOW, cancel=cancel)


def test_a_step_within_its_second_takes_every_segment_and_ends_the_request() -> None:
    pulled: list[int] = []
    step = _decode(progress_over([0, 0, 3000], pulled, frames=6000))
    assert [s.id for s in step.decoded] == [0, 1, 2] and step.over
    assert pulled == [0, 0, 3000]


def test_a_step_past_its_second_ends_after_the_segment_in_hand() -> None:
    pulled: list[int] = []
    first = _decode(progress_over([0, 0, 3000, 6000], pulled, frames=9000),
                    started=time.monotonic() - 2 * STEP_S)
    assert [s.id for s in first.decoded] == [0] and not first.over
    following = _decode(first)  # a fresh second: the rest, numbered on
    assert [s.id for s in following.decoded] == [1, 2, 3] and following.over


def test_a_step_past_its_second_in_the_last_window_pulls_on_to_the_end() -> None:
    pulled: list[int] = []
    step = _decode(progress_over([6000, 6000, 6000], pulled, frames=9000),
                   started=time.monotonic() - 2 * STEP_S)
    assert len(step.decoded) == 3 and step.over  # nothing left to wait another turn for


def test_a_client_that_left_ends_the_step_before_the_next_window_is_decoded() -> None:
    pulled: list[int] = []
    step = _decode(progress_over([0, 3000, 6000], pulled, frames=9000, cancel_after=0))
    assert [s.text for s in step.decoded] == [" s0"] and not step.over
    assert pulled == [0]  # the window at 3000 was never asked for
