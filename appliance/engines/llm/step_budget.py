"""How many prompt tokens one decode step may read: sized so a step stays near a target time.

Every stream that is generating waits for the whole step, prompt chunks included, before its
next token. A step that reads 512 prompt tokens takes seconds on a CPU and freezes every stream
for that long; one that reads a handful keeps streams flowing but reads long prompts slowly.
The budget sizes each step's prompt share from what steps have cost on this machine, with
this model, lately:

- a decode-only step with n generating slots costs d(n) (a running mean per n);
- each prompt token adds p seconds (a running mean over steps that read prompt tokens).

A step may then read ``(target - d(n)) / p`` prompt tokens, where the target is the model's
``max_step_ms`` but never less than twice d(n): on hardware too slow for the target, prompts
still get as much of each step as decoding does, so a long prompt is read at no less than
half speed. Never fewer than MIN_CHUNK tokens, so prompts always progress. With nobody
generating there is nobody to keep waiting, and a step reads as much as the batch holds.

The means move as the machine does (a busy neighbour, longer contexts making attention
dearer): each new step counts for a fixed share (SMOOTHING) of them.
"""

from __future__ import annotations

MIN_CHUNK = 4  # prompt tokens a step reads at least, whatever the estimates say
SMOOTHING = 0.2  # weight of the newest step in each running mean
# Steps reading fewer prompt tokens than this say more about per-step overhead than about
# the cost of a token: they do not move the per-token mean.
MEASURED_FROM = 2
# A step's target is never below this many decode-only steps of the same width.
DECODE_MULTIPLE = 2.0
DEFAULT_CPU_STEP_S = 0.075
DEFAULT_GPU_STEP_S = 0.025


class StepBudget:
    """Owned by one scheduler's decode thread: not thread-safe, never shared."""

    def __init__(self, target_s: float, capacity: int, min_chunk: int = MIN_CHUNK):
        if target_s <= 0:
            raise ValueError("a step budget needs a positive target time")
        self.target_s = target_s
        self._capacity = capacity
        self._min_chunk = min(min_chunk, capacity)
        self._decode_s: dict[int, float] = {}  # generating slots -> mean decode-only step
        self._token_s: float | None = None  # mean cost of one prompt token

    def prefill_share(self, generating: int) -> int:
        """Prompt tokens the next step may read while ``generating`` slots decode in it."""
        if generating == 0:
            return self._capacity
        if self._token_s is None:
            return self._min_chunk  # nothing measured yet: the smallest safe chunk
        decode = self.decode_seconds(generating)
        target = max(self.target_s, DECODE_MULTIPLE * decode)
        tokens = int((target - decode) / self._token_s)
        return max(self._min_chunk, min(self._capacity, tokens))

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

    def token_seconds(self) -> float | None:
        return self._token_s

    def observe(self, generating: int, prefill_tokens: int, seconds: float) -> None:
        """What a finished step did and how long it took."""
        if prefill_tokens == 0:
            if generating > 0:
                self._decode_s[generating] = _blend(self._decode_s.get(generating), seconds)
            return
        if prefill_tokens < MEASURED_FROM:
            return
        spent = seconds - (self.decode_seconds(generating) if generating else 0.0)
        per_token = max(spent, seconds * 0.1) / prefill_tokens  # a noisy d(n) cannot zero it
        self._token_s = _blend(self._token_s, per_token)


def _blend(mean: float | None, sample: float) -> float:
    return sample if mean is None else mean + SMOOTHING * (sample - mean)
