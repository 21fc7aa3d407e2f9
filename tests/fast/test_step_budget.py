"""The step budget's arithmetic, fed step costs by hand (no model, no clock)."""

from __future__ import annotations

import pytest

from appliance.engines.llm.step_budget import (
    MIN_CHUNK,
    SMOOTHING,
    TRUSTED_AFTER,
    StepBudget,
)


def test_nobody_generating_reads_as_much_as_the_batch_holds() -> None:
    budget = StepBudget(0.075, capacity=512)
    assert budget.prefill_share(0) == 512


def test_before_any_measure_a_step_reads_the_minimum_chunk() -> None:
    budget = StepBudget(0.075, capacity=512)
    assert budget.prefill_share(4) == MIN_CHUNK


def test_the_share_fills_the_target_left_after_decoding() -> None:
    budget = StepBudget(0.100, capacity=512)
    budget.observe(generating=4, prefill_tokens=0, seconds=0.020)  # d(4) = 20 ms
    budget.observe(generating=4, prefill_tokens=100, seconds=0.220)  # 2 ms a prompt token
    assert budget.decode_seconds(4) == pytest.approx(0.020)
    assert budget.token_seconds() == pytest.approx(0.002)
    assert budget.prefill_share(4) == 40  # (100 ms - 20 ms) / 2 ms


def test_slow_hardware_still_gives_prompts_half_of_each_step() -> None:
    budget = StepBudget(0.050, capacity=512)
    budget.observe(generating=2, prefill_tokens=0, seconds=0.200)  # decoding alone: 200 ms
    budget.observe(generating=2, prefill_tokens=64, seconds=0.200 + 64 * 0.005)
    # The target becomes twice the decode step: 200 ms left for prompt tokens at 5 ms each.
    assert budget.prefill_share(2) == 40


def test_an_unmeasured_width_is_scaled_from_the_nearest_measured() -> None:
    budget = StepBudget(0.100, capacity=512)
    budget.observe(generating=2, prefill_tokens=0, seconds=0.010)
    assert budget.decode_seconds(4) == pytest.approx(0.020)
    assert budget.decode_seconds(1) == pytest.approx(0.005)


def test_the_share_never_exceeds_the_batch_nor_drops_under_the_minimum() -> None:
    fast = StepBudget(1.0, capacity=64)
    fast.observe(generating=1, prefill_tokens=0, seconds=0.001)
    fast.observe(generating=1, prefill_tokens=32, seconds=0.001 + 32e-5)
    assert fast.prefill_share(1) == 64
    slow = StepBudget(0.010, capacity=512)
    slow.observe(generating=1, prefill_tokens=0, seconds=0.009)
    slow.observe(generating=1, prefill_tokens=16, seconds=0.009 + 16 * 0.01)
    assert slow.prefill_share(1) == MIN_CHUNK


def test_means_follow_the_machine_as_it_changes() -> None:
    budget = StepBudget(0.100, capacity=512)
    budget.observe(generating=1, prefill_tokens=0, seconds=0.010)
    for _ in range(40):  # a neighbour takes half the CPU: steps now cost twice as much
        budget.observe(generating=1, prefill_tokens=0, seconds=0.020)
    assert budget.decode_seconds(1) == pytest.approx(0.020, rel=0.01)


def test_tiny_prompt_chunks_do_not_move_the_token_cost() -> None:
    budget = StepBudget(0.100, capacity=512)
    budget.observe(generating=1, prefill_tokens=0, seconds=0.010)
    budget.observe(generating=1, prefill_tokens=1, seconds=0.050)  # overhead, not tokens
    assert budget.token_seconds() is None


def test_a_target_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StepBudget(0.0, capacity=512)


def _read_at(budget: StepBudget, position: int, per_token: float, tokens: int = 8) -> None:
    """A step decoding one slot (10 ms) and reading ``tokens`` prompt tokens near
    ``position`` at ``per_token`` seconds each."""
    budget.observe(generating=1, prefill_tokens=tokens, seconds=0.010 + tokens * per_token,
                   position=position)


def test_later_tokens_of_a_document_are_budgeted_dearer() -> None:
    budget = StepBudget(0.100, capacity=512)
    budget.observe(generating=1, prefill_tokens=0, seconds=0.010)
    for _ in range(6):  # a short prompt's chunks near the start, a document's far in
        _read_at(budget, 50, 0.006)
        _read_at(budget, 1400, 0.020)
    assert budget.token_seconds(50) == pytest.approx(0.006, rel=0.05)
    assert budget.token_seconds(1400) == pytest.approx(0.020, rel=0.05)
    near, far = budget.prefill_share(1, position=50), budget.prefill_share(1, position=1400)
    assert near == pytest.approx(90 / 6.2, abs=1.5)  # 90 ms left after decoding
    assert far == MIN_CHUNK  # 90 ms holds 4 tokens at ~20 ms: the minimum, not 15 at 6 ms


def test_steps_near_one_position_fit_no_slope() -> None:
    budget = StepBudget(0.100, capacity=512)
    budget.observe(generating=1, prefill_tokens=0, seconds=0.010)
    for position in (400, 410, 420, 430):
        _read_at(budget, position, 0.010)
    assert budget.token_seconds(0) == pytest.approx(0.010)
    assert budget.token_seconds(4000) == pytest.approx(0.010)


def test_the_tokens_within_a_time_cost_no_more_than_it() -> None:
    budget = StepBudget(0.100, capacity=512)
    budget.observe(generating=1, prefill_tokens=0, seconds=0.010)
    for _ in range(4):
        _read_at(budget, 100, 0.005)
        _read_at(budget, 2000, 0.025)
    for seconds in (0.001, 0.03, 0.09, 0.5):
        for position in (0, 700, 3000):
            tokens = budget.tokens_within(seconds, position)
            assert budget.seconds_for(tokens, position) <= seconds + 1e-12
            if tokens < budget.capacity:
                assert budget.seconds_for(tokens + 1, position) > seconds


def test_one_slow_step_at_a_rare_width_does_not_set_its_cost() -> None:
    budget = StepBudget(0.075, capacity=512)
    for _ in range(20):
        budget.observe(generating=4, prefill_tokens=0, seconds=0.028)
        budget.observe(generating=1, prefill_tokens=0, seconds=0.013)
    budget.observe(generating=3, prefill_tokens=0, seconds=0.051)  # one step, a busy moment
    # Read off the line through the medians of widths 1 and 4, not that one step's 51 ms.
    assert budget.decode_seconds(3) == pytest.approx(0.023)
    for _ in range(TRUSTED_AFTER - 1):
        budget.observe(generating=3, prefill_tokens=0, seconds=0.026)
    # Seen often enough: that width's own median, which the slow step does not move.
    assert budget.decode_seconds(3) == pytest.approx(0.026)


def _read_document_beside_three_streams(budget: StepBudget, position: int,
                                        per_token: float) -> None:
    """60 steps of a document read from ``position`` beside three decoding streams (27 ms
    with the chunk's own pass), ``per_token`` seconds a prompt token: every share stays
    between the minimum chunk and an eighth of the batch."""
    for _ in range(60):
        share = budget.prefill_share(3, position)
        assert MIN_CHUNK <= share <= 512 // 8
        budget.observe(generating=3, prefill_tokens=share, seconds=0.027 + share * per_token,
                       position=position + share / 2,
                       estimated=budget.seconds_for(share, position))
        position += share


def test_stalls_among_the_first_steps_after_loading_do_not_set_decode_costs() -> None:
    # The real tier's failure on a noisy CI machine, replayed from its step reports: the
    # warm-up's first decode-only step stalled (823 ms against 7), then so did the first at
    # width 2. Running means of those few steps put d(1) and d(2) near half a second; the
    # first chunks beside them looked nearly free, the token line fell, and the document
    # was read in chunks of ~200 tokens, 0.7 s steps the three streams waited through.
    budget = StepBudget(0.001, capacity=512)  # as tight as test_batching_policy's
    for generating, prefill_tokens, ms in ((0, 30, 96), (0, 1, 8), (1, 0, 823), (1, 0, 7),
                                           (1, 0, 7), (0, 14, 43), (0, 1, 9), (1, 7, 41),
                                           (1, 1, 15), (2, 0, 626), (2, 7, 45), (2, 1, 18),
                                           (3, 0, 17)):
        budget.observe(generating, prefill_tokens, ms / 1000, position=20,
                       estimated=budget.seconds_for(prefill_tokens, 20))
    assert budget.decode_seconds(1) == pytest.approx(0.007)
    assert budget.decode_seconds(3) == pytest.approx(0.021)
    _read_document_beside_three_streams(budget, position=60, per_token=0.005)


def test_one_stall_before_a_document_does_not_make_its_tokens_look_cheap() -> None:
    # The flaky real-tier failure: a step over 300 ms stalled (a GC pause), then a document
    # was read beside the streams, with no decode-only step to bring d(3) back.
    budget = StepBudget(0.001, capacity=512)  # as tight as test_batching_policy's
    for _ in range(10):
        budget.observe(generating=3, prefill_tokens=0, seconds=0.020)
    budget.observe(generating=0, prefill_tokens=100, seconds=100 * 0.0045)
    budget.observe(generating=3, prefill_tokens=0, seconds=0.900)
    assert budget.decode_seconds(3) <= 0.020 * (1 + SMOOTHING)
    _read_document_beside_three_streams(budget, position=0, per_token=0.0045)


def test_steps_that_overrun_their_estimate_get_less_of_it() -> None:
    budget = StepBudget(0.075, capacity=512)
    for _ in range(TRUSTED_AFTER):
        budget.observe(generating=3, prefill_tokens=0, seconds=0.025)
    budget.observe(generating=0, prefill_tokens=400, seconds=400 * 0.004)  # read alone: cheap
    before = budget.allowance(3)
    assert before == pytest.approx(0.050)
    for _ in range(40):
        # Beside the streams, a chunk the estimate put at 50 ms takes 75 (its own pass).
        budget.observe(generating=3, prefill_tokens=12, seconds=0.025 + 0.075,
                       estimated=0.050)
    assert budget.correction == pytest.approx(1.5, rel=0.05)
    allowance = budget.allowance(3)
    assert allowance is not None and allowance == pytest.approx(before / 1.5, rel=0.05)
    # Steps read alone (nobody waits) leave the correction as it is.
    budget.observe(generating=0, prefill_tokens=400, seconds=400 * 0.004, estimated=0.0)
    assert budget.correction == pytest.approx(1.5, rel=0.05)


def test_steps_under_their_estimate_never_get_more_than_it() -> None:
    budget = StepBudget(0.075, capacity=512)
    for _ in range(TRUSTED_AFTER):
        budget.observe(generating=3, prefill_tokens=0, seconds=0.025)
    budget.observe(generating=0, prefill_tokens=400, seconds=400 * 0.004)
    for _ in range(40):  # the chunks cost half what was estimated
        budget.observe(generating=3, prefill_tokens=12, seconds=0.025 + 0.025,
                       estimated=0.050)
    assert budget.correction == 1.0  # the line learns the cheaper tokens; no bonus on top
    assert budget.allowance(3) == pytest.approx(0.050)
