"""Word error rate: how much of a reference text a transcript got wrong, for the speech tests
and scripts/probe-speech-speed (speech heard back by whisper)."""

from __future__ import annotations

import re


def words(text: str) -> list[str]:
    """Lower-case words and numbers, punctuation dropped."""
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, heard: str) -> float:
    """Levenshtein distance over words, divided by the reference's length."""
    ref, hyp = words(reference), words(heard)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(1, len(ref))
