"""Turning a token stream into text that is safe to send: whole UTF-8 characters, no stop strings.

A token may end in the middle of a multi-byte character, and a stop string may be split across
tokens. Bytes of an incomplete character wait for the next token; text that could still grow
into a stop string is held back until it cannot. When a stop string appears, the text before
it is released and the rest is dropped (OpenAI never includes the stop sequence).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    text: str
    stopped: bool


class TextAssembler:
    def __init__(self, stops: tuple[str, ...]):
        self._stops = tuple(s for s in stops if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._stopped = False

    def push(self, data: bytes) -> Piece:
        if self._stopped:
            return Piece("", True)
        self._held += self._decoder.decode(data)
        return self._release(final=False)

    def finish(self) -> str:
        """The text still held when generation ends for another reason (EOS, length)."""
        if self._stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True).text

    def _release(self, final: bool) -> Piece:
        cut = self._earliest_stop()
        if cut is not None:
            text, self._held, self._stopped = self._held[:cut], "", True
            return Piece(text, True)
        keep = 0 if final else self._partial_stop_suffix()
        split = len(self._held) - keep
        text, self._held = self._held[:split], self._held[split:]
        return Piece(text, False)

    def _earliest_stop(self) -> int | None:
        found = [i for i in (self._held.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _partial_stop_suffix(self) -> int:
        """Length of the longest tail of the held text that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._held)), longest, -1):
                if self._held.endswith(stop[:size]):
                    longest = size
                    break
        return longest
