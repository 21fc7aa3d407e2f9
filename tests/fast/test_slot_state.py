"""A decode slot's explicit state: free -> prefilling -> decoding -> finishing -> free, each move
checked where it is made, so a scheduler bug fails loudly instead of leaving a slot that looks
busy and idle at once."""

from __future__ import annotations

import pytest

from appliance.engines.base import CancelToken, Sampling
from appliance.engines.llm.generation import GenerationRequest, Slot, SlotState


class _Sampler:
    def __init__(self) -> None:
        self.closed = False

    def sample(self, context: object, batch_index: int) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def _request(tokens: list[int]) -> GenerationRequest:
    return GenerationRequest(tokens=tokens, max_tokens=4, stop=(), sampling=Sampling(),
                             cancel=CancelToken(), emit=lambda event: None)


def test_a_request_moves_the_slot_through_its_states_and_back() -> None:
    slot, sampler, request = Slot(sequence=0), _Sampler(), _request([1, 2, 3])
    assert slot.state is SlotState.FREE and not slot.busy
    slot.seat(request, sampler, reused=1, now=5.0)
    assert (slot.state, slot.pending, slot.reused, slot.seated_at) == \
        (SlotState.PREFILLING, [2, 3], 1, 5.0)
    assert slot.busy and slot.request is request
    slot.pending.clear()  # the scheduler decoded the rest of the prompt
    slot.prompt_read()
    assert slot.state is SlotState.DECODING
    slot.finishing()
    assert slot.state is SlotState.FINISHING
    assert slot.clear(now=9.0) is sampler
    assert (slot.state, slot.request, slot.sampler, slot.last_used) == \
        (SlotState.FREE, None, None, 9.0)
    assert request.ended


def test_a_failed_request_frees_its_slot_from_any_busy_state() -> None:
    slot = Slot(sequence=0)
    slot.seat(_request([1, 2]), _Sampler(), reused=0, now=0.0)
    slot.clear(now=1.0)  # failed or cancelled while prefilling
    assert slot.state is SlotState.FREE
    slot.clear(now=2.0)  # closing clears free slots too: nothing changes
    assert slot.state is SlotState.FREE


def test_impossible_moves_fail_loudly() -> None:
    slot = Slot(sequence=3)
    with pytest.raises(AssertionError, match="slot 3: no move from free to decoding"):
        slot.prompt_read()
    with pytest.raises(AssertionError, match="from free to finishing"):
        slot.finishing()
    slot.seat(_request([1, 2]), _Sampler(), reused=0, now=0.0)
    with pytest.raises(AssertionError, match="from prefilling to prefilling"):
        slot.seat(_request([4, 5]), _Sampler(), reused=0, now=0.0)  # taken twice


def test_states_missing_what_they_need_fail_loudly() -> None:
    slot = Slot(sequence=1)
    slot.seat(_request([1, 2, 3]), _Sampler(), reused=0, now=0.0)
    with pytest.raises(AssertionError, match="decoding with prompt tokens still unread"):
        slot.prompt_read()
    empty = Slot(sequence=2)
    with pytest.raises(AssertionError, match="prefilling with no prompt left to read"):
        empty.seat(_request([1]), _Sampler(), reused=1, now=0.0)  # nothing left to decode
