"""Whose turn it is: owners (API keys) served in a fixed ring, starting after the last served.

Shared by the chat scheduler (sequence slots) and the worker pools' FairGate (whisper, images,
embeddings). The ring keeps every owner ever seen in order of first arrival (one entry per API
key: bounded), so the turn after an owner whose queue just emptied still goes to the owner
after it, not back to the oldest. Not thread-safe: each user calls it from one thread.
"""

from __future__ import annotations

from collections.abc import Iterable


class RoundRobin:
    def __init__(self) -> None:
        self._ring: list[str | None] = []
        self._places: dict[str | None, int] = {}
        self._served_last = -1

    def rotation(self, waiting: Iterable[str | None]) -> list[str | None]:
        """The owners that have work waiting, in the order their turns come."""
        wanted = dict.fromkeys(waiting)  # in the caller's order: arrival
        for owner in wanted:
            self._place(owner)
        size = len(self._ring)
        order = [self._ring[(self._served_last + step) % size] for step in range(1, size + 1)]
        return [owner for owner in order if owner in wanted]

    def served(self, owner: str | None) -> None:
        """``owner``'s request got a slot: the next turn starts after it."""
        self._served_last = self._place(owner)

    def _place(self, owner: str | None) -> int:
        """The owner's place on the ring, putting a new owner at its end."""
        place = self._places.get(owner)
        if place is None:
            place = self._places[owner] = len(self._ring)
            self._ring.append(owner)
        return place
