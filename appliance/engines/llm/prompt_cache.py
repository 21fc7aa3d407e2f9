"""Prompts' KV kept in host memory after their slot has moved on to other work.

The slots hold only as many prompts as there are slots; a team's chats and agents return
with more. When a slot is about to drop cached tokens, their KV state is saved here (least
recently used first out, within a byte budget), and a later request whose prompt starts the
same way restores it instead of decoding the prefix again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sized
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SavedPrompt:
    tokens: tuple[int, ...]
    state: Any  # the sequence's state as llama.cpp wrote it (a ctypes byte array)


def common_prefix(a: list[int] | tuple[int, ...], b: list[int] | tuple[int, ...]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


class PromptCache:
    def __init__(self, budget_bytes: int):
        self._budget = budget_bytes
        self._used = 0
        self._entries: OrderedDict[tuple[int, ...], SavedPrompt] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._budget > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def used_bytes(self) -> int:
        return self._used

    def covers(self, tokens: list[int]) -> bool:
        """True when an entry already holds these tokens (or more that start with them)."""
        key = tuple(tokens)
        return any(entry[: len(key)] == key for entry in self._entries)

    def put(self, tokens: list[int], state: Sized) -> None:
        if len(state) > self._budget:
            return
        key = tuple(tokens)
        for shorter in [k for k in self._entries if key[: len(k)] == k]:
            self._drop(shorter)  # the new entry serves every prompt the shorter one did
        self._entries[key] = SavedPrompt(key, state)
        self._used += len(state)
        while self._used > self._budget:
            self._drop(next(iter(self._entries)))

    def best(self, tokens: list[int]) -> tuple[int, SavedPrompt | None]:
        """The entry sharing the longest prefix with ``tokens``, and that length."""
        found: SavedPrompt | None = None
        longest = 0
        for entry in self._entries.values():
            shared = common_prefix(entry.tokens, tokens)
            if shared > longest:
                found, longest = entry, shared
        if found is not None:
            self._entries.move_to_end(found.tokens)
        return longest, found

    def _drop(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key)
        self._used -= len(entry.state)
