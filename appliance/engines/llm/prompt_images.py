"""The pictures in a prompt's token list: placeholder ids, where each image run starts, and
how long the encoder input behind each run lives.

A projector turns a picture into a run of image tokens that have no token ids: their KV comes
from embeddings the vision encoder computes, not from the vocabulary. So that the rest of the
engine keeps working on plain ``list[int]`` prompts (prefix reuse, the host-memory prompt
cache, counting), each image token is written as a PLACEHOLDER: a negative int that no
vocabulary uses, derived from the picture's content hash and its index in the run. Equal
pictures give equal runs, so a prompt that shows the same picture again shares its prefix by
content and reuses its KV; different pictures differ from their first image token on.

An id holds its index in the run, so any position tells how far it is from its run's start:
reused prefixes are rounded down to a run's start (a run is evaluated whole, never from its
middle).

``PromptImages`` holds a prompt's runs by position with the objects that can evaluate them
(``ImageRun``, implemented by vision.py) and frees them once every choice that may need them
has ended: deterministically, never left to a finalizer.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable
from typing import Protocol

# An id: -(1 + (key << INDEX_BITS) + index). 20 bits of index (a run of up to a million
# tokens) and 40 bits of content key keep every id inside a signed 64-bit int.
INDEX_BITS = 20
MAX_RUN = 1 << INDEX_BITS
KEY_BITS = 40


def placeholder_run(key: bytes, length: int) -> list[int]:
    """The ids of a run of ``length`` image tokens for content whose hash is ``key``."""
    if not 0 < length <= MAX_RUN:
        raise ValueError(f"an image run of {length} tokens is outside 1..{MAX_RUN}")
    high = int.from_bytes(key[: KEY_BITS // 8], "big") << INDEX_BITS
    return [-(1 + high + index) for index in range(length)]


def is_placeholder(token: int) -> bool:
    return token < 0


def index_in_run(token: int) -> int:
    """How many image tokens of the same run come before this one (0 at its start)."""
    return (-token - 1) & (MAX_RUN - 1)


def outside_runs(tokens: list[int], length: int) -> int:
    """``length`` rounded down so that a prefix of ``tokens`` that long never ends inside an
    image run: the token after it starts a run or is text."""
    if 0 < length < len(tokens) and is_placeholder(tokens[length]):
        return length - index_in_run(tokens[length])
    return length


class ImageRun(Protocol):
    """What the decode thread evaluates at a run's place (vision.ImageChunk)."""

    @property
    def tokens(self) -> int: ...

    def evaluate(self, context: object, sequence: int, position: int) -> None:
        """Encodes the picture and decodes its embeddings into ``sequence`` from
        ``position`` on. Raises on failure (the KV of that range is then unknown)."""

    def close(self) -> None:
        """Frees the encoder input; idempotent."""


class PromptImages:
    """A prompt's image runs by the position each starts at, shared by a request's choices.

    ``hold`` counts the choices that may still evaluate a run (an ``n > 1`` request's
    siblings may each need to, if the first one ended before they were seated); the last
    ``release`` frees every run. ``close`` frees them at once (a request that never reached
    the scheduler)."""

    def __init__(self, runs: Iterable[tuple[int, ImageRun]]):
        ordered = sorted(runs, key=lambda run: run[0])
        self._starts = [start for start, _ in ordered]
        self._runs = {start: run for start, run in ordered}
        self._holders = 1
        self._lock = threading.Lock()  # released from the decode thread and the prompt threads

    def __len__(self) -> int:
        return len(self._runs)

    @property
    def tokens(self) -> int:
        """Image tokens in the prompt (its usage's image_tokens)."""
        return sum(run.tokens for run in self._runs.values())

    def run_at(self, position: int) -> ImageRun | None:
        """The run starting at ``position``, if one does."""
        return self._runs.get(position)

    def next_start(self, position: int) -> int | None:
        """Where the first run at or after ``position`` starts; None: no run left."""
        at = bisect.bisect_left(self._starts, position)
        return self._starts[at] if at < len(self._starts) else None

    def hold(self, choices: int) -> None:
        """``choices`` choices share these runs (set once, before any is submitted)."""
        with self._lock:
            self._holders = choices

    def release(self) -> None:
        """One choice has ended; the last frees the runs."""
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self.close()

    def close(self) -> None:
        for run in self._runs.values():
            run.close()
