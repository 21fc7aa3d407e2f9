"""How many prompt tokens one decode step may read: sized so a step stays near a target time.

Every stream that is generating waits for the whole step, prompt chunks included, before its
next token. A step that reads 512 prompt tokens takes seconds on a CPU and freezes every stream
for that long; one that reads a handful keeps streams flowing but reads long prompts slowly.
The budget sizes each step's prompt share from what steps have cost on this machine, with
this model, lately:

- a decode-only step with n generating slots costs d(n) (a running mean per n);
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
dearer): each new step counts for a fixed share (SMOOTHING) of them.
"""

from __future__ import annotations

import math

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
# The fitted cost of a token at position 0 is kept at no less than this share of the mean.
MIN_INTERCEPT_SHARE = 0.1
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
        self._decode_s: dict[int, float] = {}  # generating slots -> mean decode-only step
        self._token_cost = _LineFit()  # seconds per prompt token against its position

    def allowance(self, generating: int) -> float | None:
        """Seconds of prompt reading the next step may hold while ``generating`` slots
        decode in it; None: nobody is generating, read as much as the batch holds."""
        if generating == 0:
            return None
        decode = self.decode_seconds(generating)
        return max(self.target_s, DECODE_MULTIPLE * decode) - decode

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
        measured at that width, else scaled from the nearest width measured (0 if none)."""
        known = self._decode_s.get(generating)
        if known is not None:
            return known
        if not self._decode_s:
            return 0.0
        nearest = min(self._decode_s, key=lambda width: abs(width - generating))
        return self._decode_s[nearest] * generating / nearest

    def token_seconds(self, position: int = 0) -> float | None:
        """The estimated cost of one prompt token at ``position`` (None: not measured)."""
        line = self._token_cost.line()
        return None if line is None else line[0] + line[1] * position

    def observe(self, generating: int, prefill_tokens: int, seconds: float,
                position: float = 0.0) -> None:
        """What a finished step did and how long it took; ``position``: the mean position of
        the prompt tokens it read."""
        if prefill_tokens == 0:
            if generating > 0:
                self._decode_s[generating] = _blend(self._decode_s.get(generating), seconds)
            return
        if prefill_tokens < MEASURED_FROM:
            return
        spent = seconds - (self.decode_seconds(generating) if generating else 0.0)
        per_token = max(spent, seconds * 0.1) / prefill_tokens  # a noisy d(n) cannot zero it
        self._token_cost.add(position, per_token)


class _LineFit:
    """y = a + b*x by least squares over exponentially fading samples (each new one weighs
    SMOOTHING): the running means of x, y, x*x and x*y."""

    def __init__(self) -> None:
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
        slope = max(0.0, (xy - x * y) / spread) if spread > MIN_POSITION_SPREAD else 0.0
        intercept = y - slope * x
        floor = y * MIN_INTERCEPT_SHARE
        if intercept < floor:  # a steep fit through far positions: keep tokens costing
            intercept = floor
            slope = (y - floor) / x if x > 0 else 0.0
        return intercept, slope


def _blend(mean: float | None, sample: float) -> float:
    return sample if mean is None else mean + SMOOTHING * (sample - mean)
