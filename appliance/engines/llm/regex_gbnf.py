r"""JSON Schema ``pattern`` escapes, rewritten into what llama.cpp's GBNF parser reads.

llama-cpp-python's converter copies most regex escapes into the grammar as they are, and GBNF
knows only ``\x \u \U \t \r \n \\ \" \[ \]``: ``^\d{3}$`` or ``\.`` made a grammar
llama.cpp could not parse, which it printed whole to stderr (hundreds of KiB of log per
request) and then constrained nothing at all. Classes (``\d \w \s`` and their negations)
become GBNF classes, escaped punctuation a hex escape; what has no GBNF form (``\b``,
backreferences, ``\p{...}``, a negated class inside a class) is a 400 naming the pattern.

The converter still writes a pattern's characters raw, not as JSON escapes: a pattern that
matches a quote, a backslash or a control character can yield a string JSON cannot read.
"""

from __future__ import annotations

import re

from appliance.errors import InvalidRequest

_SPACE = " \\t\\n\\r\\x0B\\x0C"
_CLASSES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": _SPACE}
_CONTROL = {"t": "\\t", "n": "\\n", "r": "\\r", "f": "\\x0C", "v": "\\x0B", "0": "\\x00"}
_HEX = re.compile(r"x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}")


def gbnf_pattern(pattern: str, where: str) -> str:
    r"""The pattern with every escape in a form GBNF parses. Outside a class an escape becomes
    a class of its own (``\.`` is ``[\x2E]``): the converter treats a class as one atom,
    where an escape inside a run of literal characters took a quantifier after it for the
    whole run's."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c != "\\":
            in_class = (in_class or c == "[") and not (in_class and c == "]")
            out.append(c)
            i += 1
            continue
        if i + 1 == len(pattern):
            raise _refuse(where, "it ends with a lone backslash")
        e = pattern[i + 1]
        hexed = _HEX.match(pattern, i + 1)
        if hexed:
            char = "\\" + hexed.group(0)
            i = hexed.end()
        elif e in _CLASSES:
            char = _CLASSES[e]
        elif e.lower() in _CLASSES and not in_class:
            char = "^" + _CLASSES[e.lower()]
        elif e in _CONTROL:
            char = _CONTROL[e]
        elif e.isascii() and not e.isalnum():
            char = f"\\x{ord(e):02X}"
        else:
            raise _refuse(where, f"the escape '\\{e}' has no equivalent in an output grammar")
        if not hexed:
            i += 2
        out.append(char if in_class else f"[{char}]")
    return "".join(out)


def _refuse(where: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid schema at '{where}': {why}, so the pattern cannot be "
                          "enforced.", param=where, code="unsupported_schema")
