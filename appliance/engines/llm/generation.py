"""What the decode loop works on: requests for a generation, the slots that run them, the
order requests get slots in, and what each step did.

Plain data shared by the scheduler (which owns them on its thread) and the engine (which builds
requests); the scheduler's policy lives in scheduler.py.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from appliance.engines.base import CancelToken, ChatEvent, Sampling, TokenLogprob
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.textstream import TextAssembler
from appliance.engines.runtime.round_robin import RoundRobin

Emit = Callable[[ChatEvent | BaseException], None]


class Sampler(Protocol):
    """What a slot draws its tokens with (SamplerChain; tests inject failing ones)."""

    def sample(self, context: object, batch_index: int) -> int: ...

    def close(self) -> None: ...


# (the request's sampling, the model, the penalty window) -> the request's sampler
SamplerFactory = Callable[[Sampling, LoadedModel, int], Sampler]


@dataclass(eq=False)
class GenerationRequest:
    tokens: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    sampling: Sampling
    cancel: CancelToken
    emit: Emit
    index: int = 0  # choice index, stamped on every event
    shown_specials: frozenset[int] = frozenset()  # control tokens whose text is output
    owner: str | None = None  # who asked (the API key): free slots go round-robin by owner
    wait_until: float = math.inf  # monotonic time after which it is refused, still queued
    generate_for: float = math.inf  # seconds it may generate once admitted; then "length"
    # Set by the consumer when it has read all it needs (the tool parser saw a repeat):
    # the choice then finishes as if it had stopped. One per choice, never shared.
    enough: threading.Event = field(default_factory=threading.Event)
    leader: GenerationRequest | None = None  # the sibling whose prompt KV this one copies
    # Set by the decode thread: the slot holding this request's fully read prompt, and
    # whether it has ended (then its slot's cache serves siblings by prefix reuse).
    prompt_ready_in: Slot | None = None
    ended: bool = False


@dataclass(frozen=True)
class StepReport:
    """What one decode step did: for metrics, and for tests of the batching policy."""

    generating: int  # slots that decoded one token each
    prefill_tokens: int  # prompt tokens decoded in this step
    prefilling: int  # slots still reading their prompt after this step
    waiting: int  # requests queued for a slot
    seconds: float


@dataclass
class Slot:
    sequence: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    last_used: float = 0.0
    request: GenerationRequest | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_token: int | None = None  # sampled, to be fed at the next step
    sampler: Sampler | None = None
    assembler: TextAssembler | None = None
    produced: int = 0
    reused: int = 0
    admitted: float = 0.0
    in_batch: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # tokens whose text is held
    logits_at: int | None = None


def fair_order(queue: list[GenerationRequest], turns: RoundRobin) -> list[GenerationRequest]:
    """The queue taken round-robin across owners (API keys), starting after the owner served
    last, each owner's requests in arrival order: one key's burst of 50 does not make another
    key's single request wait behind all of them."""
    by_owner: dict[str | None, deque[GenerationRequest]] = {}
    for request in queue:
        by_owner.setdefault(request.owner, deque()).append(request)
    owners = turns.rotation(by_owner)
    order: list[GenerationRequest] = []
    while by_owner:
        for owner in owners:
            pending = by_owner.get(owner)
            if pending:
                order.append(pending.popleft())
                if not pending:
                    del by_owner[owner]
    return order
