"""What the decode loop works on: requests for a generation, the slots that run them (and the
states a slot moves through), the order requests get slots in, and what each step did.

Plain data shared by the scheduler (which owns them on its thread) and the engine (which builds
requests); the scheduler's policy lives in scheduler.py.
"""

from __future__ import annotations

import enum
import math
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from appliance.engines.base import CancelToken, ChatEvent, Sampling, TokenLogprob
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.prompt_images import PromptImages
from appliance.engines.llm.reasoning import Reader, ReasoningPlan
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
    generate_for: float = math.inf  # seconds it may generate once seated; then "length"
    # Set by the consumer when it has read all it needs (the tool parser saw a repeat):
    # the choice then finishes as if it had stopped. One per choice, never shared.
    enough: threading.Event = field(default_factory=threading.Event)
    leader: GenerationRequest | None = None  # the sibling whose prompt KV this one copies
    # Set by the decode thread: the slot holding this request's fully read prompt, and
    # whether it has ended (then its slot's cache serves siblings by prefix reuse).
    prompt_ready_in: Slot | None = None
    ended: bool = False
    reasoning: ReasoningPlan | None = None  # a reasoning model's plan; None: plain output
    # The pictures' runs among ``tokens`` (shared by the choices); None: text only. Freed
    # when the request ends (images_released), whichever way it ends.
    images: PromptImages | None = None
    images_released: bool = False


@dataclass(frozen=True)
class StepReport:
    """What one decode step did: for metrics, and for tests of the batching policy."""

    generating: int  # slots that decoded one token each
    prefill_tokens: int  # prompt tokens decoded in this step
    prefilling: int  # slots still reading their prompt after this step
    waiting: int  # requests queued for a slot
    seconds: float  # the whole step: building the batch, decoding it, sampling
    decode_seconds: float = 0.0  # of which llama_decode
    prefill_share: int = 0  # prompt tokens the step budget offered this step
    image_tokens: int = 0  # evaluated from a picture in this step (at most one picture a step)


class SlotState(enum.Enum):
    FREE = "free"  # no request; its KV stays cached for the prefixes of later prompts
    PREFILLING = "prefilling"  # reading the rest of its prompt, a chunk per step
    DECODING = "decoding"  # the prompt is read: one sampled token per step
    FINISHING = "finishing"  # sending its last events; free once they are sent


# Every move a slot may make. Seating takes a free slot; a request ends from any busy state
# (finished, failed, cancelled), and ``clear`` on a free slot (closing) changes nothing.
MOVES: Mapping[SlotState, frozenset[SlotState]] = MappingProxyType({
    SlotState.FREE: frozenset({SlotState.PREFILLING, SlotState.FREE}),
    SlotState.PREFILLING: frozenset({SlotState.DECODING, SlotState.FINISHING, SlotState.FREE}),
    SlotState.DECODING: frozenset({SlotState.FINISHING, SlotState.FREE}),
    SlotState.FINISHING: frozenset({SlotState.FREE}),
})


@dataclass(eq=False)
class Slot:
    """One KV sequence of the context, and the request it runs. Its ``state`` changes only
    through the methods below, each of which checks the move and the fields the new state
    needs: a slot in an impossible state fails loudly (AssertionError) where it goes wrong,
    not steps later."""

    sequence: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    last_used: float = 0.0
    state: SlotState = SlotState.FREE
    request: GenerationRequest | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_token: int | None = None  # sampled, to be fed at the next step
    sampler: Sampler | None = None
    assembler: TextAssembler | None = None
    produced: int = 0
    reused: int = 0
    seated_at: float = 0.0
    in_batch: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # tokens whose text is held
    logits_at: int | None = None
    # A reasoning request's: its reader, the tokens it spent thinking, and the tokens the
    # engine writes into the output (the close of the thinking), fed without sampling.
    reader: Reader | None = None
    reasoning_tokens: int = 0
    forced: list[int] = field(default_factory=list)
    closed_thinking: bool = False  # the engine closed it once: never twice

    @property
    def busy(self) -> bool:
        return self.state is not SlotState.FREE

    def seat(self, request: GenerationRequest, sampler: Sampler, reused: int,
             now: float) -> None:
        """A free slot takes a request whose first ``reused`` tokens it holds already."""
        self._move(SlotState.PREFILLING)
        self.request = request
        self.sampler = sampler
        self.pending = request.tokens[reused:]
        self.reused = reused
        self.produced = 0
        self.next_token = None
        self.seated_at = now
        self.assembler = TextAssembler(request.stop)
        plan = request.reasoning
        self.reader = plan.reader(request.index) if plan is not None else None
        self.reasoning_tokens = 0
        self.forced = []
        self.closed_thinking = False
        self._check()

    def prompt_read(self) -> None:
        """The last chunk of the prompt was decoded: the slot generates from now on."""
        self._move(SlotState.DECODING)
        self._check()

    def swap_sampler(self, sampler: Sampler) -> Sampler | None:
        """The answer's sampler takes over (a reasoning model's grammar, armed after
        thinking); returns the one it replaces, for the caller to close."""
        assert self.state is SlotState.DECODING, f"slot {self.sequence}: swap while {self.state}"
        old, self.sampler = self.sampler, sampler
        return old

    def finishing(self) -> None:
        self._move(SlotState.FINISHING)
        self._check()

    def clear(self, now: float) -> Sampler | None:
        """Frees the slot (its KV stays); returns the request's sampler, for the caller to
        close. The request is marked ended, so its siblings stop waiting for its prompt."""
        self._move(SlotState.FREE)
        sampler, self.sampler = self.sampler, None
        if self.request is not None:
            self.request.prompt_ready_in = None
            self.request.ended = True
        self.request = None
        self.logprobs = []
        self.assembler = None
        self.pending = []
        self.next_token = None
        self.logits_at = None
        self.reader = None
        self.forced = []
        self.last_used = now
        self._check()
        return sampler

    def _move(self, to: SlotState) -> None:
        assert to in MOVES[self.state], \
            f"slot {self.sequence}: no move from {self.state.value} to {to.value}"
        self.state = to

    def _check(self) -> None:
        """The fields each state needs, and those it must not have."""
        if self.state is SlotState.FREE:
            assert self.request is None and self.sampler is None and self.assembler is None \
                and not self.pending and self.next_token is None and not self.forced, \
                f"slot {self.sequence}: free, yet holding a request's state"
            return
        assert self.request is not None and self.assembler is not None, \
            f"slot {self.sequence}: {self.state.value} without a request"
        if self.state is SlotState.PREFILLING:
            assert self.sampler is not None and self.pending and self.next_token is None, \
                f"slot {self.sequence}: prefilling with no prompt left to read"
        elif self.state is SlotState.DECODING:
            assert self.sampler is not None and not self.pending, \
                f"slot {self.sequence}: decoding with prompt tokens still unread"


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
