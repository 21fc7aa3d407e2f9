"""Continuous batching for one model: sequence slots, one decode thread, one batch per step.

Every step builds a single llama_batch holding one token for each slot that is generating plus
a chunk of prompt tokens for slots still reading their prompt (chunked prefill: a long prompt
delays the other streams by at most one chunk per step). Each request samples with its own
chain. A new request starts from the longest cached prefix of its prompt (kv_reuse.py decides
where that comes from) and decodes only the rest. Cancelled requests free their slot at the
next step; requests beyond the slots wait in order and are never dropped. The choices of an
``n > 1`` request share the prompt: once the first choice has read it, the others copy its KV
sequence and only decode the prompt's last token themselves.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp

from appliance.engines.base import (
    CancelToken,
    ChatEvent,
    Finish,
    FinishReason,
    Sampling,
    TextDelta,
    TokenLogprob,
    Usage,
)
from appliance.engines.llm.batch import TokenBatch
from appliance.engines.llm.kv_reuse import PrefixReuse
from appliance.engines.llm.logprobs import token_logprob
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.sampling import SamplerChain
from appliance.engines.llm.textstream import TextAssembler
from appliance.engines.round_robin import RoundRobin
from appliance.errors import EngineFailure, InvalidRequest, Overloaded

log = logging.getLogger("appliance.engines.llm")
Emit = Callable[[ChatEvent | BaseException], None]


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
    prompt_ready_in: _Slot | None = None
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
class _Slot:
    sequence: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    last_used: float = 0.0
    request: GenerationRequest | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_token: int | None = None  # sampled, to be fed at the next step
    sampler: SamplerChain | None = None
    assembler: TextAssembler | None = None
    produced: int = 0
    reused: int = 0
    admitted: float = 0.0
    in_batch: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # tokens whose text is held
    logits_at: int | None = None


class Scheduler:
    def __init__(self, model: LoadedModel, *, model_id: str, slots: int, context_length: int,
                 threads: int, batch_size: int, stop_tokens: frozenset[int],
                 prompt_cache_bytes: int = 0,
                 on_step: Callable[[StepReport], None] | None = None):
        self._model = model
        self._on_step = on_step
        self._model_id = model_id
        self._context_length = context_length
        self._stop_tokens = stop_tokens
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = context_length * slots  # each slot may use a whole context_length
        params.n_batch = batch_size
        params.n_ubatch = batch_size
        params.n_seq_max = slots
        params.n_threads = threads
        params.n_threads_batch = threads
        # One KV stream per sequence: attention over a shared cache changes float sums with
        # the neighbours, so a batched answer could differ from the same request alone.
        params.kv_unified = False
        # Sliding-window models drop old KV; keeping it full lets prefixes be reused.
        params.swa_full = True
        params.no_perf = True
        self._context = llama_cpp.llama_init_from_model(model.handle, params)
        if self._context is None:
            raise EngineFailure(f"model {model_id}: llama.cpp could not create a context")
        self._memory = llama_cpp.llama_get_memory(self._context)
        # Writing zeros touches every page of every slot's KV now, at boot: otherwise the
        # first request to reach a slot pays the page faults (~0.2 s per 100 MB stream).
        llama_cpp.llama_memory_clear(self._memory, True)
        self._reuse = PrefixReuse(self._context, self._memory, prompt_cache_bytes)
        self._batch = TokenBatch(batch_size)
        self._slots = [_Slot(sequence=i) for i in range(slots)]
        self._inbox: deque[GenerationRequest] = deque()  # filled by submit, any thread
        self._queue: list[GenerationRequest] = []  # owned by the decode thread
        self._turns = RoundRobin()  # which key's request gets the next free slot
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"llm-{model_id}", daemon=True)
        self._thread.start()

    def submit(self, *requests: GenerationRequest) -> None:
        with self._wake:
            self._inbox.extend(requests)
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        for slot in self._slots:
            self._release(slot)
        self._batch.close()
        if self._context is not None:
            llama_cpp.llama_free(self._context)
            self._context = None

    # --- the decode thread ---

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._inbox or self._queue or self._busy()):
                    self._wake.wait()
                if self._stopping:
                    return
                self._queue.extend(self._inbox)
                self._inbox.clear()
            try:
                self._drop_cancelled()
                self._admit()
                self._step()
            except Exception as exc:  # a bug must fail its requests, not the process
                log.exception("scheduler step failed on model %s", self._model_id)
                for slot in self._slots:
                    if slot.request is not None:
                        self._fail(slot, EngineFailure(
                            f"Generation failed on model {self._model_id}: {exc}"))

    def _busy(self) -> bool:
        return any(slot.request is not None for slot in self._slots)

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            if slot.request is not None and slot.request.cancel.cancelled:
                self._release(slot)
            elif slot.request is not None and slot.request.enough.is_set():
                self._finish(slot, "stop")
            elif slot.request is not None and \
                    time.monotonic() - slot.admitted > slot.request.generate_for:
                self._finish(slot, "length")  # out of time: ends cleanly, as max_tokens does

    def waiting(self) -> int:
        """Requests submitted and not yet in a slot (read from any thread; approximate)."""
        with self._wake:
            return len(self._inbox) + len(self._queue)

    def _fair_order(self) -> list[GenerationRequest]:
        """The queue taken round-robin across owners (API keys), starting after the owner
        served last, each owner's requests in arrival order: one key's burst of 50 does not
        make another key's single request wait behind all of them."""
        by_owner: dict[str | None, deque[GenerationRequest]] = {}
        for request in self._queue:
            by_owner.setdefault(request.owner, deque()).append(request)
        owners = self._turns.rotation(by_owner)
        order: list[GenerationRequest] = []
        while by_owner:
            for owner in owners:
                pending = by_owner.get(owner)
                if pending:
                    order.append(pending.popleft())
                    if not pending:
                        del by_owner[owner]
        return order

    def _refuse_overdue(self) -> None:
        """Requests that waited past their deadline end before any work, with a retry hint."""
        now = time.monotonic()
        for request in self._queue:
            if request.wait_until < now and not request.cancel.cancelled:
                request.ended = True
                request.cancel.cancel()
                request.emit(Overloaded(
                    f"The request waited too long for a free slot on model {self._model_id}; "
                    "try again shortly.", retry_after=1.0))

    def _admit(self) -> None:
        """Fills free slots in fair order (see _fair_order); a sibling choice waits until it
        can copy its first choice's prompt."""
        self._refuse_overdue()
        self._queue = [r for r in self._queue if not r.cancel.cancelled]
        admitted: list[GenerationRequest] = []
        for request in self._fair_order():
            free = [slot for slot in self._slots if slot.request is None]
            if not free:
                break
            leader = request.leader
            if leader is not None and leader.prompt_ready_in is not None:
                slot, reuse = self._reuse.place_sibling(request.tokens, leader.prompt_ready_in,
                                                        free)
            elif leader is None or leader.ended:
                slot, reuse = self._reuse.place(request.tokens, free, self._slots)
            else:
                continue  # the first choice is still reading the prompt
            self._start(slot, request, reuse)
            admitted.append(request)
            self._turns.served(request.owner)
        if admitted:
            self._queue = [r for r in self._queue if r not in admitted]

    def _start(self, slot: _Slot, request: GenerationRequest, reuse: int) -> None:
        try:
            sampler = SamplerChain(request.sampling, self._model, self._context_length)
        except (EngineFailure, InvalidRequest) as error:
            request.ended = True
            request.emit(error)
            return
        tokens = request.tokens
        slot.request = request
        slot.sampler = sampler
        slot.pending = tokens[reuse:]
        slot.reused = reuse
        slot.produced = 0
        slot.next_token = None
        slot.admitted = time.monotonic()
        slot.assembler = TextAssembler(request.stop)

    def _step(self) -> None:
        batch = self._batch
        batch.clear()
        in_batch: list[_Slot] = []
        for slot in self._slots:
            if slot.request is not None and slot.next_token is not None:
                slot.in_batch = [slot.next_token]
                slot.logits_at = batch.add(slot.next_token, len(slot.cached), slot.sequence, True)
                in_batch.append(slot)
        prefilling = sorted((s for s in self._slots if s.request is not None and s.pending),
                            key=lambda s: s.admitted)
        for slot in prefilling:
            take = min(batch.free, len(slot.pending))
            if take == len(slot.pending) > 1:
                # The prompt's last token is decoded on its own, as it is when the rest of
                # the prompt comes from cache: its logits (so a seeded draw) then never depend
                # on whether the prefix was cached.
                take -= 1
            if take == 0:
                break
            chunk = slot.pending[:take]
            finishes_prompt = take == len(slot.pending)
            base = len(slot.cached)
            for offset, token in enumerate(chunk):
                last = finishes_prompt and offset == take - 1
                index = batch.add(token, base + offset, slot.sequence, last)
            slot.logits_at = index if finishes_prompt else None
            slot.in_batch = chunk
            in_batch.append(slot)
        if batch.size == 0:
            return
        started = time.perf_counter()
        generating = sum(1 for slot in in_batch if not slot.pending)
        status = llama_cpp.llama_decode(self._context, batch.handle)
        self._reuse.decoded()
        if status != 0:
            for slot in in_batch:
                self._reuse.forget(slot)
                self._fail(slot, EngineFailure(
                    f"llama_decode failed with status {status} on model {self._model_id}"))
            return
        for slot in in_batch:
            slot.cached.extend(slot.in_batch)
            if slot.pending:  # a prefill chunk (a generating slot has no pending prompt)
                del slot.pending[: len(slot.in_batch)]
                if not slot.pending and slot.request is not None:
                    slot.request.prompt_ready_in = slot
            if slot.logits_at is not None:
                assert slot.sampler is not None and slot.request is not None
                token = slot.sampler.sample(self._context, slot.logits_at)
                alternatives = slot.request.sampling.logprobs
                if alternatives is not None and not self._ends(token):
                    slot.logprobs.append(token_logprob(
                        self._context, slot.logits_at, self._model, token, alternatives))
                self._accept(slot, token)
        if self._on_step is not None:
            self._on_step(StepReport(
                generating=generating,
                prefill_tokens=batch.size - generating,
                prefilling=sum(1 for slot in self._slots if slot.request and slot.pending),
                waiting=len(self._queue),
                seconds=time.perf_counter() - started,
            ))

    def _accept(self, slot: _Slot, token: int) -> None:
        request = slot.request
        assert request is not None and slot.assembler is not None
        slot.next_token = None
        if self._ends(token):
            self._finish(slot, "stop")
            return
        slot.produced += 1
        piece = slot.assembler.push(self._model.piece(token, token in request.shown_specials))
        if piece.text:
            request.emit(TextDelta(piece.text, request.index, self._take_logprobs(slot)))
        if piece.stopped:
            self._finish(slot, "stop")
        elif slot.produced >= request.max_tokens or len(slot.cached) + 1 >= self._context_length:
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _ends(self, token: int) -> bool:
        return token in self._stop_tokens or self._model.is_end_of_generation(token)

    @staticmethod
    def _take_logprobs(slot: _Slot) -> tuple[TokenLogprob, ...]:
        taken = tuple(slot.logprobs)
        slot.logprobs.clear()
        return taken

    def _finish(self, slot: _Slot, reason: FinishReason) -> None:
        request = slot.request
        assert request is not None and slot.assembler is not None
        tail = slot.assembler.finish()
        if tail or (slot.logprobs and reason != "stop"):
            # Tokens that became a stop string are dropped with their text.
            request.emit(TextDelta(tail, request.index, self._take_logprobs(slot)))
        usage = Usage(len(request.tokens), slot.produced, slot.reused)
        request.emit(Finish(reason, usage, request.index))
        self._release(slot)

    def _fail(self, slot: _Slot, error: EngineFailure) -> None:
        if slot.request is not None:
            slot.request.emit(error)
        self._release(slot)

    def _release(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
        if slot.request is not None:
            slot.request.prompt_ready_in = None
            slot.request.ended = True
        slot.request = None
        slot.logprobs = []
        slot.sampler = None
        slot.assembler = None
        slot.pending = []
        slot.next_token = None
        slot.logits_at = None
        slot.last_used = time.monotonic()
