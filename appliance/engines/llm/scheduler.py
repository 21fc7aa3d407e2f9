"""Continuous batching for one model: sequence slots, one decode thread, one batch per step.

Every step builds a single llama_batch holding one token for each slot that is generating plus
a chunk of prompt tokens for slots still reading their prompt (chunked prefill: a long prompt
delays the other streams by at most one chunk per step). How many prompt tokens a step reads
is the step budget's (step_budget.py: sized from measured costs so a step stays near
``max_step_ms``); the prompts share it shortest-remaining first, so a short request starts
soon even while a document is being read, and a prompt's rank improves the longer it has
been reading, so no prompt starves. Each request samples with its own chain. A new request
starts from the longest cached prefix of its prompt (kv_reuse.py decides where that comes
from) and decodes only the rest. Cancelled requests free their slot at the
next step; requests beyond the slots wait in order, dropped only to make room in a full
queue for a key with fewer waiting (``RoomAsked``). The choices of an
``n > 1`` request share the prompt: once the first choice has read it, the others copy its KV
sequence and only decode the prompt's last token themselves.

An exception while seating, stepping or finishing one request fails that request alone (an
EngineFailure, logged once with its traceback) and the loop goes on with the others; only a
fault in the loop itself fails everything in flight, so that no state can be retried forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import llama_cpp

from appliance.engines.base import (
    ChatEvent,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    Usage,
)
from appliance.engines.llm.batch import TokenBatch
from appliance.engines.llm.generation import (
    Emit,
    GenerationRequest,
    Sampler,
    SamplerFactory,
    Slot,
    SlotState,
    StepReport,
    fair_order,
)
from appliance.engines.llm.kv_reuse import PrefixReuse
from appliance.engines.llm.logprobs import token_logprob
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.reasoning import Phase, Read
from appliance.engines.llm.sampling import SamplerChain
from appliance.engines.llm.step_budget import StepBudget
from appliance.engines.runtime.round_robin import RoundRobin
from appliance.errors import ApplianceError, EngineFailure, Overloaded

__all__ = ["Emit", "GenerationRequest", "Sampler", "SamplerFactory", "Scheduler", "StepReport"]
log = logging.getLogger("appliance.engines.llm")


def context_params(slots: int, context_length: int, threads: int,
                   batch_size: int) -> llama_cpp.llama_context_params:
    """The llama.cpp context a scheduler decodes in (scripts/probe-steps measures the same)."""
    params: llama_cpp.llama_context_params = llama_cpp.llama_context_default_params()
    params.n_ctx = context_length * slots  # each slot may use a whole context_length
    params.n_batch = batch_size
    params.n_ubatch = batch_size
    params.n_seq_max = slots
    params.n_threads = threads
    params.n_threads_batch = threads
    # One KV stream per sequence: attention over a shared cache changes float sums with
    # the neighbours even for short prompts (a unified cache failed the 16-concurrent test).
    # Per-sequence streams keep short requests exact; past 64 prompt or 256 context tokens
    # llama.cpp's CPU attention picks kernels by micro-batch shape (scripts/probe-invariance).
    params.kv_unified = False
    # Sliding-window models drop old KV; keeping it full lets prefixes be reused.
    params.swa_full = True
    params.no_perf = True
    return params


@dataclass(frozen=True)
class RoomAsked:
    """A request arriving at a full queue asks the decode thread, which owns the queue, for a
    place. ``answer`` is called once from the decode thread (or from ``close``): True when
    there is room now -- freed meanwhile, or made by refusing the newest request of the key
    with the most choices waiting, if that key has more than ``owner`` -- False otherwise.
    ``preparing``: the requests each key has still being tokenized (counted as waiting)."""

    owner: str | None
    queue_limit: int
    preparing: Mapping[str | None, int]
    answer: Callable[[bool], None] = field(compare=False)


class Scheduler:
    def __init__(self, model: LoadedModel, *, model_id: str, slots: int, context_length: int,
                 threads: int, batch_size: int, stop_tokens: frozenset[int],
                 prompt_cache_bytes: int = 0,
                 on_step: Callable[[StepReport], None] | None = None,
                 samplers: SamplerFactory = SamplerChain,
                 step_budget: StepBudget | None = None):
        """``step_budget``: None reads prompts as fast as the batch allows (a step may then
        take as long as ``batch_size`` prompt tokens do)."""
        self._model = model
        self._budget = step_budget
        self._on_step = on_step
        self._on_step_failed = False  # a broken metrics hook is logged once, not every step
        self._samplers = samplers
        self._model_id = model_id
        self._context_length = context_length
        self._stop_tokens = stop_tokens
        self._context = llama_cpp.llama_init_from_model(
            model.handle, context_params(slots, context_length, threads, batch_size))
        if self._context is None:
            raise EngineFailure(f"model {model_id}: llama.cpp could not create a context")
        self._memory = llama_cpp.llama_get_memory(self._context)
        # Writing zeros touches every page of every slot's KV now, at boot: otherwise the
        # first request to reach a slot pays the page faults (~0.2 s per 100 MB stream).
        llama_cpp.llama_memory_clear(self._memory, True)
        self._reuse = PrefixReuse(self._context, self._memory, prompt_cache_bytes)
        self._batch = TokenBatch(batch_size)
        self._slots = [Slot(sequence=i) for i in range(slots)]
        self._inbox: deque[GenerationRequest] = deque()  # filled by submit, any thread
        self._room_asked: deque[RoomAsked] = deque()  # filled by ask_room, any thread
        self._queue: list[GenerationRequest] = []  # owned by the decode thread
        self._turns = RoundRobin()  # which key's request gets the next free slot
        self._wake = threading.Condition()
        self._stopping = False
        self._dead = False  # the decode thread ended without being asked to
        self._thread = threading.Thread(target=self._run, name=f"llm-{model_id}", daemon=True)
        self._thread.start()

    def submit(self, *requests: GenerationRequest) -> None:
        with self._wake:
            if self._dead:
                raise EngineFailure(f"The decode loop of model {self._model_id} has stopped.")
            self._inbox.extend(requests)
            self._wake.notify()

    def ask_room(self, asked: RoomAsked) -> None:
        """Asks for a place in the full queue (see RoomAsked); answered at the next round."""
        with self._wake:
            if not (self._dead or self._stopping):
                self._room_asked.append(asked)
                self._wake.notify()
                return
        asked.answer(False)

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=30)
        with self._wake:
            unanswered = list(self._room_asked)
            self._room_asked.clear()
        for asked in unanswered:  # asked while the thread was stopping
            asked.answer(False)
        for slot in self._slots:
            self._release(slot)
        with self._wake:
            left = [*self._queue, *self._inbox]
        for request in left:  # never seated: nobody will answer them now
            self._let_go(request)
        self._batch.close()
        if self._context is not None:
            llama_cpp.llama_free(self._context)
            self._context = None

    # --- the decode thread ---

    def _run(self) -> None:
        try:
            while self._next_round():
                try:
                    self._drop_cancelled()
                    self._seat_queued()
                    self._step()
                except Exception:
                    # Each stage fails the request at fault itself (see _fail, _reject); this
                    # is a fault of the loop. Everything in flight fails with it, the queue
                    # too: retrying the same state would fail the same way, forever.
                    log.exception("the decode loop of model %s failed", self._model_id)
                    self._fail_everything()
        finally:
            with self._wake:
                self._dead = not self._stopping
            if self._dead:  # a BaseException ended the thread: nobody would answer them
                self._fail_everything()

    def _next_round(self) -> bool:
        """Waits for work; False once asked to stop."""
        with self._wake:
            while not (self._stopping or self._inbox or self._queue or self._room_asked
                       or self._busy()):
                self._wake.wait()
            if self._stopping:
                return False
            self._queue.extend(self._inbox)
            self._inbox.clear()
            asked = list(self._room_asked)
            self._room_asked.clear()
        admitted: dict[str | None, int] = {}  # let in this round, not yet preparing
        for one in asked:
            if self._answer(one, admitted):
                admitted[one.owner] = admitted.get(one.owner, 0) + 1
        return True

    def _answer(self, asked: RoomAsked, admitted: Mapping[str | None, int]) -> bool:
        """Room in the full queue for ``asked.owner`` (see RoomAsked); answers and returns
        whether it was given."""
        queued = [r for r in self._queue if not r.cancel.cancelled and not r.ended]
        waiting: dict[str | None, int] = dict(asked.preparing)
        for owner, count in admitted.items():
            waiting[owner] = waiting.get(owner, 0) + count
        for request in queued:
            waiting[request.owner] = waiting.get(request.owner, 0) + 1
        if sum(waiting.values()) < asked.queue_limit:
            asked.answer(True)  # freed since the request looked
            return True
        mine = waiting.get(asked.owner, 0)
        # Only a request whose first choice is still queued can go: none of it has run.
        leaders = [r for r in queued if r.leader is None and r.owner != asked.owner]
        fullest = max(leaders, key=lambda r: waiting[r.owner], default=None)
        if fullest is None or waiting[fullest.owner] <= mine:
            asked.answer(False)
            return False
        newest = next(r for r in reversed(leaders) if r.owner == fullest.owner)
        refused = Overloaded(f"The model `{self._model_id}` has {asked.queue_limit} requests "
                             "waiting, as many of them this key's as any other's; try again "
                             "shortly.", retry_after=1.0)
        for request in queued:
            if request is newest or request.leader is newest:
                request.ended = True
                request.cancel.cancel()  # taken out of the queue by _seat_queued
                self._emit(request, refused)
        asked.answer(True)
        return True

    def _fail_everything(self) -> None:
        with self._wake:
            self._queue.extend(self._inbox)
            self._inbox.clear()
            unanswered = list(self._room_asked)
            self._room_asked.clear()
        for asked in unanswered:  # nobody else would answer them if the thread ends
            asked.answer(False)
        for slot in self._slots:
            if slot.busy:
                if slot.request is not None:
                    self._reject(slot.request, None, "generating")
                self._release(slot, forget=True)
        for request in self._queue:
            self._reject(request, None, "queueing")
        self._queue = []

    def _busy(self) -> bool:
        return any(slot.busy for slot in self._slots)

    def _drop_cancelled(self) -> None:
        for slot in self._slots:
            request = slot.request
            if not slot.busy or request is None:
                continue
            try:
                if request.cancel.cancelled:
                    self._release(slot)
                elif request.enough.is_set():
                    self._finish(slot, "stop")
                elif time.monotonic() - slot.seated_at > request.generate_for:
                    self._finish(slot, "length")  # out of time: ends cleanly, as max_tokens does
            except Exception as exc:
                self._fail(slot, exc, "finishing")

    def waiting(self) -> int:
        """Requests submitted and not yet in a slot (read from any thread; approximate)."""
        with self._wake:
            return len(self._inbox) + len(self._queue)

    def _refuse_overdue(self) -> None:
        """Requests that waited past their deadline end before any work, with a retry hint."""
        now = time.monotonic()
        for request in self._queue:
            if request.wait_until < now and not request.cancel.cancelled:
                request.ended = True
                request.cancel.cancel()
                self._emit(request, Overloaded(
                    f"The request waited too long for a free slot on model {self._model_id}; "
                    "try again shortly.", retry_after=1.0))

    def _seat_queued(self) -> None:
        """Fills free slots in fair order (see fair_order); a sibling choice waits until it
        can copy its first choice's prompt. A request that cannot be set up fails alone."""
        self._refuse_overdue()
        for request in self._queue:
            if request.cancel.cancelled:
                self._let_go(request)
        self._queue = [r for r in self._queue if not r.cancel.cancelled]
        done: list[GenerationRequest] = []
        for request in fair_order(self._queue, self._turns):
            free = [slot for slot in self._slots if not slot.busy]
            if not free:
                break
            leader = request.leader
            if leader is not None and leader.prompt_ready_in is None and not leader.ended:
                continue  # the first choice is still reading the prompt
            done.append(request)
            self._turns.served(request.owner)
            if not request.tokens:
                self._reject(request, EngineFailure("The prompt holds no tokens."), "seating")
                continue
            try:
                sampler = self._samplers(request.sampling, self._model, self._context_length)
            except Exception as exc:
                self._reject(request, exc, "setting up sampling for")
                continue
            try:
                if leader is not None and leader.prompt_ready_in is not None:
                    slot, reuse = self._reuse.place_sibling(
                        request.tokens, leader.prompt_ready_in, free, self._slots)
                else:
                    slot, reuse = self._reuse.place(request.tokens, free, self._slots)
            except Exception as exc:
                sampler.close()
                self._reject(request, exc, "placing")
                for unsure in free:  # a KV move may have stopped halfway: start those clean
                    self._forget(unsure)
                continue
            slot.seat(request, sampler, reuse, time.monotonic())
        if done:
            self._queue = [r for r in self._queue if r not in done]

    def _step(self) -> None:
        started = time.perf_counter()
        batch = self._batch
        batch.clear()
        # What each slot decodes this step: its tokens and whether the last one's logits
        # are wanted. Planned first, then written in sequence order (see _write_batch).
        planned: dict[Slot, bool] = {}
        room = batch.capacity
        for slot in self._slots:
            if slot.state is not SlotState.DECODING:
                continue
            if slot.forced:
                wants = self._plan_forced(slot, room)
                if wants is not None:
                    planned[slot] = wants
                    room -= len(slot.in_batch)
            elif slot.next_token is not None and room > 0:
                slot.in_batch = [slot.next_token]
                planned[slot] = True
                room -= 1
        budget = self._budget
        # Seconds of prompt reading this step may hold (None: as many tokens as fit).
        allowance = None if budget is None else budget.allowance(len(planned))
        share = room  # prompt tokens the batch still holds
        # Reported: what the budget offered the step (at its first prompt's position).
        offered = room if budget is None else min(room, budget.prefill_share(len(planned)))
        positions = 0  # the sum of the positions of the prompt tokens read, for the budget
        estimated = 0.0  # what the budget put on them
        picture: Slot | None = None  # the one slot whose next picture this step evaluates
        for slot in self._prefill_order():
            ahead = self._text_ahead(slot)
            if ahead == 0:
                # Its next tokens are a picture's: one picture per step, across all slots,
                # so that the streams' next tokens never wait for more than one.
                if picture is None:
                    picture = slot
                continue
            take = min(share, ahead)  # a chunk stops before a picture
            if budget is not None and allowance is not None:
                # What fits the rest of the allowance at this prompt's own position (a
                # document's later tokens cost more); the step's first chunk never fewer
                # than the minimum, so prompts always progress.
                fits = budget.tokens_within(allowance, len(slot.cached))
                if share == room:  # the step's first chunk
                    fits = max(fits, budget.min_chunk)
                    offered = min(room, fits)
                take = min(take, fits)
            if take == len(slot.pending) > 1:
                # The prompt's last token is decoded on its own, as it is when the rest of
                # the prompt comes from cache: its logits (so a seeded draw) then do not
                # depend on whether the prefix was cached (within the shapes llama.cpp's
                # kernels agree on: see scripts/probe-invariance).
                take -= 1
            if take == 0:
                if share == 0 and picture is not None:
                    break
                continue  # only its last token is left, and it waits for the next step
            share -= take
            start = len(slot.cached)
            positions += take * start + take * (take - 1) // 2
            if budget is not None and allowance is not None:
                cost = budget.seconds_for(take, start)
                allowance -= cost
                estimated += cost
            slot.in_batch = slot.pending[:take]
            planned[slot] = take == len(slot.pending)  # logits once the prompt is all read
        in_batch = self._write_batch(planned)
        for slot in self._slots:
            if slot.state is SlotState.DECODING and slot not in in_batch and not slot.forced:
                # Busy with nothing to decode would keep the loop awake for ever.
                self._fail(slot, EngineFailure("The slot had nothing to decode."), "stepping")
        if batch.size == 0 and picture is None:
            return
        image_started = time.perf_counter()
        image_tokens = 0 if picture is None else self._evaluate_picture(picture)
        image_seconds = time.perf_counter() - image_started
        generating = sum(1 for slot in in_batch if not slot.pending)
        decode_seconds = 0.0
        if batch.size:
            decoded = self._decode_batch(in_batch)
            if decoded is None:
                return
            decode_seconds = decoded
        for slot in in_batch:
            slot.cached.extend(slot.in_batch)
            if slot.state is SlotState.PREFILLING:  # a chunk of the prompt
                del slot.pending[: len(slot.in_batch)]
                if not slot.pending and slot.request is not None:
                    slot.prompt_read()
                    slot.request.prompt_ready_in = slot
        for slot in in_batch:
            if slot.logits_at is not None and slot.state is SlotState.DECODING:
                try:
                    self._sample(slot, slot.logits_at)
                except Exception as exc:
                    self._fail(slot, exc, "sampling")
        seconds = time.perf_counter() - started
        prefill_tokens = batch.size - generating
        if budget is not None:
            # A picture's cost is its own: counted in, it would read as dear prompt tokens.
            budget.observe(generating, prefill_tokens, seconds - image_seconds,
                           positions / max(1, prefill_tokens), estimated)
        self._report(StepReport(
            generating=generating,
            prefill_tokens=prefill_tokens,
            prefilling=sum(1 for slot in self._slots if slot.state is SlotState.PREFILLING),
            waiting=len(self._queue),
            seconds=seconds,
            decode_seconds=decode_seconds,
            prefill_share=offered,
            image_tokens=image_tokens,
        ))

    def _decode_batch(self, in_batch: list[Slot]) -> float | None:
        """llama_decode of the step's batch: the seconds it took, or None when it failed
        (every slot in it has then failed: they all lose this step's KV)."""
        decode_started = time.perf_counter()
        fault: Exception | None = None
        try:
            status = llama_cpp.llama_decode(self._context, self._batch.handle)
        except Exception as exc:  # the binding refused the call: nothing was decoded
            status, fault = -1, exc
        decode_seconds = time.perf_counter() - decode_started
        self._reuse.decoded()
        if status != 0:
            for slot in in_batch:
                self._fail(slot, fault or EngineFailure(
                    f"llama_decode failed with status {status} on model {self._model_id}"),
                    "decoding", forget=True)
            return None
        return decode_seconds

    @staticmethod
    def _text_ahead(slot: Slot) -> int:
        """Prompt tokens the slot may read before its next picture (all it has left when no
        picture is ahead); 0: a picture is next."""
        request = slot.request
        images = None if request is None else request.images
        start = None if images is None else images.next_start(len(slot.cached))
        return len(slot.pending) if start is None else start - len(slot.cached)

    def _evaluate_picture(self, slot: Slot) -> int:
        """The picture the slot's prompt holds next, encoded and decoded into its sequence
        in a call of its own (libmtmd's, beside this step's batch); its placeholders join the
        slot's cache. Returns its image tokens; 0 when it failed, which fails that request
        alone (its sequence's KV past the cache is then unknown: forgotten)."""
        request = slot.request
        assert request is not None and request.images is not None
        position = len(slot.cached)
        run = request.images.run_at(position)
        try:
            if run is None:
                raise EngineFailure("A picture's placeholders had no image run behind them.")
            run.evaluate(self._context, slot.sequence, position)
        except Exception as exc:
            self._fail(slot, exc, "evaluating a picture of", forget=True)
            return 0
        slot.cached.extend(slot.pending[:run.tokens])
        del slot.pending[:run.tokens]
        return run.tokens

    def _prefill_order(self) -> list[Slot]:
        """Slots reading their prompt, the one with the least left first (a short request
        then waits for a few chunks, not for a document), each rank divided by one plus the
        seconds the slot has been reading: a long prompt overtakes fresh short ones after a
        while, so it cannot starve. A prompt mostly cached has little left and goes early."""
        now = time.monotonic()
        reading = [slot for slot in self._slots if slot.state is SlotState.PREFILLING]
        return sorted(reading, key=lambda slot: (
            len(slot.pending) / (1.0 + max(0.0, now - slot.seated_at)), slot.seated_at))

    def _write_batch(self, planned: dict[Slot, bool]) -> list[Slot]:
        """Writes the planned tokens into the batch slot by slot in sequence order, and
        notes where each slot's logits will be. The order matters for speed: with a KV
        stream per sequence, llama.cpp splits a batch into micro-batches of consecutive
        sequence ids with as many tokens each, and every micro-batch is a pass over the
        whole model. In sequence order one pass takes a token from every slot, and only
        the rest of a prompt chunk needs another; listing the decode tokens first and the
        chunks after would cut the first pass at every slot that reads a prompt."""
        batch = self._batch
        in_batch = sorted(planned, key=lambda slot: slot.sequence)
        for slot in in_batch:
            base = len(slot.cached)
            last = len(slot.in_batch) - 1
            index = 0
            for offset, token in enumerate(slot.in_batch):
                index = batch.add(token, base + offset, slot.sequence,
                                  planned[slot] and offset == last)
            slot.logits_at = index if planned[slot] else None
        return in_batch

    def _plan_forced(self, slot: Slot, room: int) -> bool | None:
        """The tokens the engine writes into a choice's output (the close of its thinking),
        after the token sampled last, are planned like a chunk of prompt: logits only at the
        last, which the answer is then sampled from. What does not fit the ``room`` left in
        the batch waits for the next step. Returns whether the last one's logits are wanted;
        None: nothing fits."""
        feed = ([] if slot.next_token is None else [slot.next_token]) + slot.forced
        take = min(len(feed), room)
        if take == 0:
            return None
        slot.in_batch = feed[:take]
        slot.next_token = None
        slot.forced = feed[take:]
        return not slot.forced

    def _sample(self, slot: Slot, logits_at: int) -> None:
        assert slot.sampler is not None and slot.request is not None
        token = slot.sampler.sample(self._context, logits_at)
        alternatives = slot.request.sampling.logprobs
        if alternatives is not None and not self._ends(token):
            slot.logprobs.append(token_logprob(
                self._context, logits_at, self._model, token, alternatives))
        self._accept(slot, token)

    def _report(self, report: StepReport) -> None:
        if self._on_step is None:
            return
        try:
            self._on_step(report)
        except Exception:
            if not self._on_step_failed:
                log.exception("the step observer of model %s failed", self._model_id)
            self._on_step_failed = True

    def _accept(self, slot: Slot, token: int) -> None:
        request = slot.request
        assert request is not None and slot.assembler is not None
        slot.next_token = None
        reader = slot.reader
        if self._ends(token):
            if reader is not None and reader.phase is not Phase.ANSWERING \
                    and request.reasoning is not None and request.reasoning.must_answer \
                    and self._close_thinking(slot):
                return  # the answer is owed: the close is fed next, then the answer sampled
            self._finish(slot, "stop")
            return
        slot.produced += 1
        data = self._model.piece(token, token in request.shown_specials)
        if reader is None:
            piece = slot.assembler.push(data)
            if piece.text:
                self._emit(request, TextDelta(piece.text, request.index,
                                              self._take_logprobs(slot)))
            stopped = piece.stopped
        else:
            stopped = self._read(slot, data)
        if stopped:
            self._finish(slot, "stop")
        elif slot.produced >= request.max_tokens \
                or len(slot.cached) + 1 + len(slot.forced) >= self._context_length:
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _read(self, slot: Slot, data: bytes) -> bool:
        """A reasoning choice's token: its text split by the reader, the thinking counted and
        closed at the budget, the answer's grammar armed as the answer begins. True: a stop
        string ended the answer."""
        request, reader = slot.request, slot.reader
        assert request is not None and reader is not None and request.reasoning is not None
        before = reader.phase
        read = reader.push(data)
        if Phase.THINKING in (before, reader.phase):
            slot.reasoning_tokens += 1
            slot.logprobs.clear()  # reasoning tokens report none, as OpenAI's do not
        if before is not Phase.ANSWERING and reader.phase is Phase.ANSWERING \
                and not self._answer_begins(slot, read.content):
            read = replace(read, content="")  # refused by the answer's grammar: see prime
            slot.logprobs.clear()
        stopped = self._deliver(slot, read)
        budget = request.reasoning.budget
        if reader.phase is Phase.THINKING and budget is not None \
                and slot.reasoning_tokens >= budget:
            self._close_thinking(slot)
        return stopped

    def _deliver(self, slot: Slot, read: Read) -> bool:
        """A reader's output as events; stop strings apply to the answer only."""
        request = slot.request
        assert request is not None and slot.assembler is not None
        if read.reasoning:
            self._emit(request, ReasoningDelta(read.reasoning, request.index))
        for call in read.calls:
            self._emit(request, call)
        if not read.content:
            return False
        piece = slot.assembler.push(read.content.encode())
        if piece.text:
            self._emit(request, TextDelta(piece.text, request.index, self._take_logprobs(slot)))
        return piece.stopped

    def _close_thinking(self, slot: Slot) -> bool:
        """The engine ends the choice's thinking itself: the close is tokenized, counted as
        completion tokens and fed at the next step without sampling. Only once, and only if
        the close and a token of answer still fit max_tokens and the context."""
        request, reader = slot.request, slot.reader
        assert request is not None and reader is not None
        if slot.closed_thinking:
            return False
        tokens = self._model.tokenize(reader.closing_text(), add_bos=False, special=True)
        room = min(request.max_tokens - slot.produced,
                   self._context_length - len(slot.cached) - 1
                   - (slot.next_token is not None))
        if len(tokens) >= room:
            return False  # it goes on thinking until max_tokens or the context ends it
        self._deliver(slot, reader.close()[1])
        slot.closed_thinking = True
        slot.forced = tokens
        slot.produced += len(tokens)
        self._answer_begins(slot, "")
        return True

    def _answer_begins(self, slot: Slot, answer: str) -> bool:
        """The grammar of a response_format or tool call holds from the answer on: its
        sampler takes over, told the answer's text so far. False: the grammar refused that
        text, which is then no part of the answer."""
        request = slot.request
        assert request is not None and request.reasoning is not None
        sampling = request.reasoning.answer_sampling
        if sampling is None:
            return True
        sampler = self._samplers(sampling, self._model, self._context_length)
        kept = True
        if isinstance(sampler, SamplerChain):
            try:
                kept = sampler.prime(answer)
            except BaseException:
                sampler.close()
                raise
        old = slot.swap_sampler(sampler)
        if old is not None:
            old.close()
        return kept

    def _ends(self, token: int) -> bool:
        return token in self._stop_tokens or self._model.is_end_of_generation(token)

    @staticmethod
    def _take_logprobs(slot: Slot) -> tuple[TokenLogprob, ...]:
        taken = tuple(slot.logprobs)
        slot.logprobs.clear()
        return taken

    def _finish(self, slot: Slot, reason: FinishReason) -> None:
        slot.finishing()
        request = slot.request
        assert request is not None and slot.assembler is not None
        if slot.reader is not None:
            self._deliver(slot, slot.reader.finish())
            if slot.reader.calls and reason == "stop":
                reason = "tool_calls"  # harmony: the reader read the calls
        tail = slot.assembler.finish()
        if tail or (slot.logprobs and reason != "stop"):
            # Tokens that became a stop string are dropped with their text.
            self._emit(request, TextDelta(tail, request.index, self._take_logprobs(slot)))
        usage = Usage(len(request.tokens), slot.produced, slot.reused, slot.reasoning_tokens,
                      0 if request.images is None else request.images.tokens)
        self._let_go(request)  # before the Finish: whoever reads it finds the chunks freed
        self._emit(request, Finish(reason, usage, request.index))
        self._release(slot)

    def _fail(self, slot: Slot, error: BaseException, doing: str,
              forget: bool = False) -> None:
        """Fails the slot's request alone and frees the slot; ``forget`` drops its KV too
        (when the KV may no longer match the tokens the slot lists)."""
        if slot.request is not None:
            self._reject(slot.request, error, doing)
        self._release(slot, forget=forget)

    def _reject(self, request: GenerationRequest, error: BaseException | None,
                doing: str) -> None:
        """Ends one request with an error: logged once, here, and never retried. A sibling
        choice shares the request's cancel token, so the other choices end with it."""
        request.ended = True
        self._let_go(request)
        if request.cancel.cancelled:
            # Already answered (a sibling choice failed first) or nobody is waiting.
            log.debug("model %s: a cancelled request failed while %s it", self._model_id, doing)
            return
        request.cancel.cancel()
        if isinstance(error, ApplianceError):
            log.info("model %s: request failed while %s it: %s", self._model_id, doing,
                     error.message)
            answer: ApplianceError = error
        else:
            if error is not None:
                log.error("model %s: request failed while %s it", self._model_id, doing,
                          exc_info=error)
            answer = EngineFailure(f"The engine failed while {doing} this request on model "
                                   f"{self._model_id}.")
        self._emit(request, answer)

    def _emit(self, request: GenerationRequest, event: ChatEvent | BaseException) -> None:
        """Hands an event to the request's consumer; a consumer that cannot take it is
        dropped at the next step, and nobody else notices."""
        try:
            request.emit(event)
        except Exception:
            if not request.cancel.cancelled:
                log.exception("model %s: a request's consumer refused an event", self._model_id)
            request.cancel.cancel()

    def _forget(self, slot: Slot) -> None:
        try:
            self._reuse.forget(slot)
        except Exception:
            log.exception("model %s: could not clear slot %d", self._model_id, slot.sequence)
            slot.cached = []

    @staticmethod
    def _let_go(request: GenerationRequest) -> None:
        """The request has ended, whichever way: its share of its pictures' chunks is given
        back (the last choice to end frees them). Once per request."""
        if request.images is not None and not request.images_released:
            request.images_released = True
            request.images.release()

    def _release(self, slot: Slot, forget: bool = False) -> None:
        if slot.request is not None:
            self._let_go(slot.request)
        sampler = slot.clear(time.monotonic())
        if sampler is not None:
            try:
                sampler.close()
            except Exception:
                log.exception("model %s: a sampler failed to close", self._model_id)
        if forget:
            self._forget(slot)
