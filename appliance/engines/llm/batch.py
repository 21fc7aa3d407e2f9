"""A reusable llama_batch: the tokens of one decode step, each with its position and sequence."""

from __future__ import annotations

import llama_cpp


class TokenBatch:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.handle = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.size = 0

    def clear(self) -> None:
        self.size = 0
        self.handle.n_tokens = 0

    @property
    def free(self) -> int:
        return self.capacity - self.size

    def add(self, token: int, position: int, sequence: int, wants_logits: bool) -> int:
        """Appends one token; returns its index, which is where its logits will be."""
        index = self.size
        batch = self.handle
        batch.token[index] = token
        batch.pos[index] = position
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = sequence
        batch.logits[index] = wants_logits
        self.size += 1
        batch.n_tokens = self.size
        return index

    def close(self) -> None:
        if self.handle is not None:
            llama_cpp.llama_batch_free(self.handle)
            self.handle = None
