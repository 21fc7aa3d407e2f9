"""Values JSON's grammar admits that are not text or numbers here, found with where they are.

- A lone UTF-16 surrogate: JSON may escape half a pair (``"\\ud800"``), and Python then holds a
  string that is not Unicode text and fails wherever it is encoded (the tokenizer, the ledger,
  a log line), as an engine error counted against the model's readiness.
- A number past a double's range (``1e400``): ``json`` reads it as infinity, which no bound
  compares sensibly against and no JSON answer can carry back (a key created with such a
  budget could no longer be listed).

The body must be UTF-8 first (``utf8_text``): json.loads reads raw surrogate bytes and
UTF-16 bodies too, and no escape is there for a test of the raw body to see. Each value is
then looked for only when the text could hold it (a ``\\ud8``-``\\udf`` escape; a number
with an exponent, or of 309 digits: no other overflows), tested in C on the parsed value;
only a body that fails is walked, to name the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_HUGE_NUMBER = re.compile(r"[0-9][eE]|[0-9]{309}")

# A value's place in the body: its key or index, then its parent's place (None: the body).
_Path = tuple[int | str, "_Path"] | None


@dataclass(frozen=True)
class Unrepresentable:
    location: tuple[int | str, ...]  # () for an object key of the body itself
    reason: str


def utf8_text(body: bytes) -> str | None:
    """The body as text, or None when it is not UTF-8 (a byte order mark is allowed)."""
    try:
        return body.decode("utf-8-sig")  # strict: refuses surrogates' bytes, UTF-16
    except UnicodeDecodeError:
        return None


def could_hold_unrepresentable(text: str) -> bool:
    """The body text's quick test (a regular expression in C): most bodies stop here."""
    return bool(_SURROGATE_ESCAPE.search(text) or _HUGE_NUMBER.search(text))


def find_unrepresentable(text: str, data: dict[str, Any]) -> Unrepresentable | None:
    """Meant for a worker thread: the walk that names the field is Python, a second for
    millions of values, and must not hold the event loop."""
    if _SURROGATE_ESCAPE.search(text) and not _encodes(data):
        return _locate(data, has_lone_surrogate,
                       "the text holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape not "
                       "part of a pair), which is not a Unicode character. Send valid UTF-8 "
                       "text.")
    if _HUGE_NUMBER.search(text) and not _finite(data):
        return _locate(data, _is_infinite,
                       "the number is beyond a double's range (about 1.8e308).")
    return None


def _encodes(data: dict[str, Any]) -> bool:
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # UTF-8 has no lone surrogates
    except UnicodeEncodeError:
        return False
    return True


def _finite(data: dict[str, Any]) -> bool:
    try:
        json.dumps(data, allow_nan=False)
    except ValueError:
        return False
    return True


def has_lone_surrogate(value: object) -> bool:
    return isinstance(value, str) and _LONE_SURROGATE.search(value) is not None


def _is_infinite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _locate(data: dict[str, Any], bad: Callable[[object], bool],
            reason: str) -> Unrepresentable:
    """The first value (or object key, named by its object) that is ``bad``. Depth first with
    a stack of iterators, one per open container: memory grows with the depth (json.loads
    bounded it), not with the values, and Python's recursion is not used."""
    stack: list[tuple[Iterator[tuple[int | str, Any]], _Path]] = [(iter(data.items()), None)]
    while stack:
        children, path = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        key, value = child
        if bad(key) or bad(value):
            return Unrepresentable(_unroll(path if bad(key) else (key, path)), reason)
        if isinstance(value, dict):
            stack.append((iter(value.items()), (key, path)))
        elif isinstance(value, list):
            stack.append((enumerate(value), (key, path)))
    raise AssertionError("the C test failed, so the walk finds the value")


def _unroll(path: _Path) -> tuple[int | str, ...]:
    location: list[int | str] = []
    while path is not None:
        location.append(path[0])
        path = path[1]
    return tuple(reversed(location))
