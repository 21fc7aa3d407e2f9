"""Where a new request's prompt KV comes from: the longest cached prefix, wherever it is.

Owns the choice of slot for a request and the KV moves that choice needs: trimming a slot's
own cache, copying a longer prefix from another slot's stream (busy ones included), saving a
slot's tokens to the host-memory prompt cache before they are dropped, and restoring a saved
prompt. A reused prefix never ends inside a picture's run of image tokens (it is rounded
down to the run's start: a picture is evaluated whole). Sequences live in separate KV
streams; llama.cpp copies across streams only whole and only at the next decode, while a
restore writes at once, so a stream that a pending copy reads from is never restored into.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Protocol, TypeVar

import llama_cpp

from appliance.engines.llm.prompt_cache import PromptCache, SavedPrompt, common_prefix
from appliance.engines.llm.prompt_images import outside_runs

# Copying a KV stream costs about as much as decoding a few prompt tokens on a CPU, so a
# cold slot copies another slot's cache only when that skips at least this many tokens.
COPY_MIN_GAIN = 16
# Restoring a saved prompt costs about its size in bytes, far less than decoding even a few
# tokens, so it pays as soon as it skips a couple of them.
RESTORE_MIN_GAIN = 2
# Saving a slot to host memory copies its whole sequence; worth it when it would lose at
# least this many tokens, or half of what it holds.
SAVE_MIN_LOSS = 64
# What a busy neighbour is worth, in cached prompt tokens, when a request picks its slot.
# llama.cpp runs one pass over the model per run of consecutive busy sequences in a step (see
# Scheduler._write_batch): a slot next to busy ones joins their pass, a lone one costs a pass
# of its own in every step while both generate (on a 2-core CPU ~5-15 ms a step, over a
# hundred steps: more than reading this many prompt tokens once). A longer prefix elsewhere
# is still reached by a copy (COPY_MIN_GAIN).
NEIGHBOUR_TOKENS = 64


class CachedSequence(Protocol):
    sequence: int
    cached: list[int]  # tokens whose KV the sequence holds
    last_used: float


SlotT = TypeVar("SlotT", bound=CachedSequence)


class PrefixReuse:
    def __init__(self, context: object, memory: object, prompt_cache_bytes: int):
        self._context = context
        self._memory = memory
        self._saved = PromptCache(prompt_cache_bytes)
        self._copy_sources: set[int] = set()  # streams a not yet applied copy reads from

    def decoded(self) -> None:
        """A decode ran: every pending stream copy has been applied."""
        self._copy_sources.clear()

    def forget(self, slot: CachedSequence) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, slot.sequence, -1, -1)
        slot.cached = []

    def place(self, tokens: list[int], free: list[SlotT], slots: list[SlotT]) -> tuple[SlotT, int]:
        """Picks the slot for a prompt and readies its KV; returns it and the tokens reused.
        The prompt's last token is never reused: its logits must come from a decode."""
        usable = len(tokens) - 1
        prefix = {s.sequence: common_prefix(s.cached, tokens) for s in slots}
        together = _neighbours(free, slots)
        slot = max(free, key=lambda s: (prefix[s.sequence] + NEIGHBOUR_TOKENS * together(s),
                                        -s.last_used))
        reuse = outside_runs(tokens, min(prefix[slot.sequence], usable))
        donor = max(slots, key=lambda s: prefix[s.sequence])
        offered = outside_runs(tokens, min(prefix[donor.sequence], usable)) \
            if donor is not slot else 0
        saved_length, saved = self._saved.best(tokens)
        saved_length = outside_runs(tokens, min(saved_length, usable))
        if offered - reuse >= COPY_MIN_GAIN or saved_length - reuse >= RESTORE_MIN_GAIN:
            target = min(free, key=lambda s: (
                prefix[s.sequence] - NEIGHBOUR_TOKENS * together(s), s.last_used))
            kept = prefix[target.sequence]
            if saved is not None and target.sequence not in self._copy_sources and \
                    saved_length >= offered and saved_length - reuse >= RESTORE_MIN_GAIN:
                self._save(target, kept)
                return target, self._restore(saved, target, saved_length)
            if offered - reuse >= COPY_MIN_GAIN:
                self._save(target, kept)
                self._copy(donor, target, tokens[:offered])
                return target, offered
        if reuse < len(slot.cached):
            self._save(slot, reuse)
            if not llama_cpp.llama_memory_seq_rm(self._memory, slot.sequence, reuse, -1):
                self.forget(slot)
                return slot, 0
            slot.cached = slot.cached[:reuse]
        return slot, reuse

    def place_sibling(self, tokens: list[int], source: CachedSequence,
                      free: list[SlotT], slots: list[SlotT]) -> tuple[SlotT, int]:
        """Another choice of the same prompt: copies all of it but the last token."""
        shared = outside_runs(tokens, len(tokens) - 1)
        together = _neighbours(free, slots)
        target = min(free, key=lambda s: (-together(s), s.last_used))
        self._save(target, common_prefix(target.cached, tokens))
        self._copy(source, target, tokens[:shared])
        return target, shared

    def _copy(self, source: CachedSequence, target: CachedSequence, prefix: list[int]) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, target.sequence, -1, -1)
        llama_cpp.llama_memory_seq_cp(self._memory, source.sequence, target.sequence, -1, -1)
        llama_cpp.llama_memory_seq_rm(self._memory, target.sequence, len(prefix), -1)
        target.cached = list(prefix)
        self._copy_sources.add(source.sequence)

    def _save(self, slot: CachedSequence, keeping: int) -> None:
        """Keeps a slot's cached tokens in host memory before it drops all but ``keeping``."""
        losing = len(slot.cached) - keeping
        if not self._saved.enabled or losing < COPY_MIN_GAIN or \
                (losing < SAVE_MIN_LOSS and 2 * losing < len(slot.cached)) or \
                self._saved.covers(slot.cached):
            return
        size = llama_cpp.llama_state_seq_get_size(self._context, slot.sequence)
        buffer = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self._context, buffer, size, slot.sequence) > 0:
            self._saved.put(list(slot.cached), buffer)

    def _restore(self, saved: SavedPrompt, target: CachedSequence, length: int) -> int:
        llama_cpp.llama_memory_seq_rm(self._memory, target.sequence, -1, -1)
        state = saved.state
        if llama_cpp.llama_state_seq_set_data(self._context, state, len(state),
                                              target.sequence) == 0:
            self.forget(target)
            return 0
        llama_cpp.llama_memory_seq_rm(self._memory, target.sequence, length, -1)
        target.cached = list(saved.tokens[:length])
        return length


def _neighbours(free: list[SlotT], slots: list[SlotT]) -> Callable[[SlotT], int]:
    """How many of a free slot's two neighbouring sequences are busy (0, 1 or 2)."""
    idle = {s.sequence for s in free}
    busy = {s.sequence for s in slots} - idle
    return lambda s: (s.sequence - 1 in busy) + (s.sequence + 1 in busy)
