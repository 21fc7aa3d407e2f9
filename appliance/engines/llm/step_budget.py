"""How many prompt tokens one decode step may read: sized so a step stays near a target time.

Every stream that is generating waits for the whole step, prompt chunks included, before its
next token. A step that reads 512 prompt tokens takes seconds on a CPU and freezes every stream
for that long; one that reads a handful keeps streams flowing but reads long prompts slowly.
The budget sizes each step's prompt share from what steps have cost on this machine, with
this model, lately:

- a decode-only step with n generating slots costs d(n): the lower median of that width's
  last DECODE_WINDOW decode-only steps once it has seen TRUSTED_AFTER of them, before that a
  line a + b*n fitted through the medians of the widths that have (through the origin while
  one width is all it knows). Medians, not means: a stall (a GC pause holding the GIL, a
  neighbour's burst) only ever adds time, and one at a width seen twice, or the first step
  after loading, would otherwise set that width's cost, and with it the target;
- a prompt token at position x costs p(x) = a + b*x: attention reads every earlier token,
  so a document's later tokens cost more than its first (on a 2-core CPU with SmolLM2, ~6 ms
  a token near the start, ~20 ms at 1,400). a and b are a running least-squares fit of each
  step's cost per prompt token against the mean position of the tokens it read.

A step may then spend ``target - d(n)`` on prompt tokens (``allowance``), where the target is
the model's ``max_step_ms`` but never less than twice d(n): on hardware too slow for the
target, prompts still get as much of each step as decoding does, so a long prompt is read at
no less than half speed. Each prompt being read gets the tokens that fit what is left of the
allowance at its own position (``tokens_within``); the first never fewer than MIN_CHUNK, so
prompts always progress. With nobody generating there is nobody to keep waiting, and a step
reads as much as the batch holds.

The estimates move as the machine does (a busy neighbour, longer contexts making attention
dearer): each new step counts for a fixed share (SMOOTHING) of the token line, and a width's
median moves once half its window has moved; a decode-only step counts as at most
OUTLIER_MULTIPLE times what its width was estimated to cost (one slow moment must not set
d(n) for a whole document's read, see there).

The per-token line alone runs steps long: a step that reads a chunk beside decoding streams
pays a pass over the weights for the chunk (llama.cpp cuts such a batch into one micro-batch
of a token per sequence and one of the chunk's rest), which a few tokens bear alone while a
prompt read with nobody generating spreads it over hundreds; and the line lags a document's
growing positions. So the budget also keeps how far its estimates of the prompt part fell
short in the steps where streams waited (``correction``: measured over estimated, a running
mean, never below 1) and gives each such step that much less estimated time: steps then
settle on the target instead of over it.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

MIN_CHUNK = 4  # prompt tokens a step reads at least, whatever the estimates say
SMOOTHING = 0.2  # weight of the newest step in each running mean
# Steps reading fewer prompt tokens than this say more about per-step overhead than about
# the cost of a token: they do not move the per-token mean.
MEASURED_FROM = 2
# A step's target is never below this many decode-only steps of the same width.
DECODE_MULTIPLE = 2.0
# Positions must spread over more than this (a standard deviation of ~64 tokens) before the
# fit trusts a slope: a few steps near one position say nothing of how the cost grows.
MIN_POSITION_SPREAD = 64.0 * 64.0
# Decode-only steps of a width seen before its own median is used for that width: the lower
# median of three ignores one stall among them.
TRUSTED_AFTER = 3
# The decode-only steps kept per width. Their lower median follows a real change of speed
# once half of them have seen it.
DECODE_WINDOW = 9
# A decode-only step counts as at most this many times what its width is estimated to cost.
# Only decode-only steps correct d(n), and none come while a document is being read: one
# slow moment just before (a GC pause holding the GIL, a neighbour's burst) would otherwise
# inflate d(n) for the whole read, and every step would then credit its tokens with less
# than they cost (seconds - d(n)), so the token line would fall and the shares grow far past
# the target. That is why d(n) errs low where it must err: a d(n) too low makes tokens look
# dearer and the shares smaller, which the next steps' measures correct; one too high feeds
# itself. A real change of speed still gets through: the window fills with it.
OUTLIER_MULTIPLE = 2.0
# The fitted cost of a token at position 0 is kept at no less than this share of the mean.
MIN_INTERCEPT_SHARE = 0.1
# The correction of the estimates (see above) is a running mean with this weight, slower
# than the estimates themselves so the two do not chase each other, and between these
# bounds. Never below 1: it only takes time away. Estimates that ran long are the line's to
# learn (it sees the same steps); running short beside streams is what the line cannot see,
# and a correction under 1 would also hand a step more than the estimates say fits.
CORRECTION_SMOOTHING = 0.1
CORRECTION_BOUNDS = (1.0, 3.0)
DEFAULT_CPU_STEP_S = 0.075
DEFAULT_GPU_STEP_S = 0.025


class StepBudget:
    """Owned by one scheduler's decode thread: not thread-safe, never shared."""

    def __init__(self, target_s: float, capacity: int, min_chunk: int = MIN_CHUNK):
        if target_s <= 0:
            raise ValueError("a step budget needs a positive target time")
        self.target_s = target_s
        self.capacity = capacity
        self.min_chunk = min(min_chunk, capacity)
        # generating slots -> that width's last decode-only steps, and their lower median
        self._decode_steps: dict[int, deque[float]] = {}
        self._decode_median: dict[int, float] = {}
        self._token_cost = _LineFit(MIN_POSITION_SPREAD)  # prompt token against its position
        self.correction = 1.0  # measured prompt seconds over estimated, in steps with streams

    def allowance(self, generating: int) -> float | None:
        """Seconds of prompt reading the next step may hold while ``generating`` slots
        decode in it, as the estimates count them (spend it with seconds_for): the time the
        target leaves after decoding, divided by the correction. None: nobody is generating,
        read as much as the batch holds."""
        if generating == 0:
            return None
        decode = self.decode_seconds(generating)
        return (max(self.target_s, DECODE_MULTIPLE * decode) - decode) / self.correction

    def tokens_within(self, seconds: float, position: int) -> int:
        """How many prompt tokens from ``position`` on cost at most ``seconds`` (0 before
        anything is measured), at most the batch's capacity."""
        line = self._token_cost.line()
        if line is None or seconds <= 0:
            return 0
        a, b = line
        if b <= 0:
            return min(self.capacity, int(seconds / a))
        # t*a + b*(t*position + t*(t-1)/2) <= seconds, solved for t
        linear = a + b * (position - 0.5)
        tokens = (-linear + math.sqrt(linear * linear + 2 * b * seconds)) / b
        return max(0, min(self.capacity, int(tokens)))

    def seconds_for(self, tokens: int, position: int) -> float:
        """The estimated cost of reading ``tokens`` prompt tokens from ``position`` on."""
        line = self._token_cost.line()
        if line is None or tokens <= 0:
            return 0.0
        a, b = line
        return tokens * a + b * (tokens * position + tokens * (tokens - 1) / 2)

    def prefill_share(self, generating: int, position: int = 0) -> int:
        """Prompt tokens the next step may read from ``position`` on while ``generating``
        slots decode in it."""
        allowance = self.allowance(generating)
        if allowance is None:
            return self.capacity
        return max(self.min_chunk, self.tokens_within(allowance, position))

    def decode_seconds(self, generating: int) -> float:
        """The estimated cost of a step that decodes ``generating`` tokens and reads none:
        that width's median once it is trusted, else the line through the widths' medians
        (0 before any)."""
        seen = self._decode_steps.get(generating)
        if seen is not None and len(seen) >= TRUSTED_AFTER:
            return self._decode_median[generating]
        return self._width_line(generating)

    def _width_line(self, generating: int) -> float:
        """d(n) read off a + b*n through the medians of the trusted widths (of every width
        seen while none is trusted), each weighing as many steps as it holds: b >= 0 and
        a >= 0, since a step never gets cheaper for decoding more."""
        trusted = [width for width, seen in self._decode_steps.items()
                   if len(seen) >= TRUSTED_AFTER]
        widths = trusted or list(self._decode_steps)
        if not widths:
            return 0.0
        # (width, its median, the steps behind it)
        points = [(width, self._decode_median[width], len(self._decode_steps[width]))
                  for width in widths]
        total = sum(weight for _, _, weight in points)
        mean_x = sum(weight * x for x, _, weight in points) / total
        mean_y = sum(weight * y for _, y, weight in points) / total
        spread = sum(weight * (x - mean_x) ** 2 for x, _, weight in points)
        through_origin = mean_y * generating / mean_x
        if spread == 0:  # one width known: its cost scales with the width
            return through_origin
        slope = max(0.0, sum(weight * (x - mean_x) * (y - mean_y)
                             for x, y, weight in points) / spread)
        intercept = mean_y - slope * mean_x
        # A negative a: the line through the origin and the widths' centre instead.
        return through_origin if intercept < 0 else intercept + slope * generating

    def token_seconds(self, position: int = 0) -> float | None:
        """The estimated cost of one prompt token at ``position`` (None: not measured)."""
        line = self._token_cost.line()
        return None if line is None else line[0] + line[1] * position

    def observe(self, generating: int, prefill_tokens: int, seconds: float,
                position: float = 0.0, estimated: float = 0.0) -> None:
        """What a finished step did and how long it took; ``position``: the mean position of
        the prompt tokens it read; ``estimated``: what seconds_for put on them, summed."""
        if prefill_tokens == 0:
            if generating > 0:
                expected = self.decode_seconds(generating)
                if expected > 0:
                    seconds = min(seconds, OUTLIER_MULTIPLE * expected)
                seen = self._decode_steps.setdefault(generating, deque(maxlen=DECODE_WINDOW))
                seen.append(seconds)
                self._decode_median[generating] = statistics.median_low(seen)
            return
        spent = seconds - (self.decode_seconds(generating) if generating else 0.0)
        if generating > 0 and estimated > 0:
            low, high = CORRECTION_BOUNDS
            shortfall = min(high, max(low, spent / estimated))
            self.correction += CORRECTION_SMOOTHING * (shortfall - self.correction)
        if prefill_tokens < MEASURED_FROM:
            return
        per_token = max(spent, seconds * 0.1) / prefill_tokens  # a noisy d(n) cannot zero it
        self._token_cost.add(position, per_token)


class _LineFit:
    """y = a + b*x by least squares over exponentially fading samples (each new one weighs
    SMOOTHING): the running means of x, y, x*x and x*y. Until the x seen spread over more
    than ``min_spread`` (their variance) no slope is fitted: the line is then flat."""

    def __init__(self, min_spread: float) -> None:
        self._min_spread = min_spread
        self._means: tuple[float, float, float, float] | None = None

    def add(self, x: float, y: float) -> None:
        if self._means is None:
            self._means = (x, y, x * x, x * y)
            return
        mx, my, mxx, mxy = self._means
        self._means = (_blend(mx, x), _blend(my, y), _blend(mxx, x * x), _blend(mxy, x * y))

    def line(self) -> tuple[float, float] | None:
        """(a, b), with b >= 0 (a token never gets cheaper further in) and a > 0; None
        before any sample."""
        if self._means is None:
            return None
        x, y, xx, xy = self._means
        spread = xx - x * x
        slope = max(0.0, (xy - x * y) / spread) if spread > self._min_spread else 0.0
        intercept = y - slope * x
        floor = y * MIN_INTERCEPT_SHARE
        if intercept < floor:  # a steep fit through far positions: keep tokens costing
            intercept = floor
            slope = (y - floor) / x if x > 0 else 0.0
        return intercept, slope


def _blend(mean: float | None, sample: float, weight: float = SMOOTHING) -> float:
    return sample if mean is None else mean + weight * (sample - mean)
