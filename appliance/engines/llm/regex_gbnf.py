r"""JSON Schema ``pattern``s, rewritten into what llama.cpp's GBNF reads and a JSON string holds.

llama-cpp-python's converter copies most regex escapes into the grammar as they are, and GBNF
knows only ``\x \u \U \t \r \n \\ \" \[ \]``: ``^\d{3}$`` or ``\.`` made a grammar llama.cpp
could not parse, which it printed whole to stderr (hundreds of KiB of log per request) and
then constrained nothing at all. So every escape is rewritten here, before the converter.

The pattern constrains a string's *value*, and the grammar its JSON *text*: a character JSON
must escape (a control character, ``"``, ``\``) written raw breaks the output (a ``\s``
produced a raw newline, ``[^a]`` a quote). So:

- classes and ``.`` never match those characters: a positive class has them taken out of its
  ranges (``[ -~]`` loses ``"`` and ``\``), a negated class and ``.`` exclude them too, ``\s``
  keeps the spaces JSON writes raw (no tab, no line end). Where ECMA-262 (JSON Schema's
  dialect) and Python's re (what a Python validator uses) differ, a class writes what both
  accept: ``\w`` and ``\d`` are ASCII, ``\W`` keeps to ASCII, ``\S`` avoids every space;
  a negated class holding ``\W`` (``[^\W_]``) writes only what neither dialect calls
  ``\W``, the ASCII letters and digits.
  The output then matches a subset of what the pattern allows: still a match;
- a pattern that can only match such a character there (``\n``, ``\x00``, ``\\``, a raw
  quote) is a 400: writing it would take the JSON escape, which the converter cannot say;
- anchors: the converter drops one leading ``^`` and one trailing ``$`` and writes any other
  as a literal character (``^a$|^b$`` produced ``"a$``): others are a 400, and a top-level
  alternation is grouped (the converter's ``"\"" "a" | "b" "\""`` left the quotes to one
  branch each);
- a ``{`` that is not an ECMA-262 quantifier (``a{ 3 }``, ``a{٣}``, ``{,5}`` are literal
  text there) is written as a literal brace: the converter read those as counts.

What has no GBNF form (``\b``, backreferences, ``\p{...}``, a class escape as a range end, a
class that leaves no character) is a 400 naming the pattern too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.errors import InvalidRequest

_Ranges = list[tuple[int, int]]

# Never written raw by a pattern's grammar: what JSON must escape inside a string, and the
# UTF-16 surrogates, which UTF-8 cannot hold (llama.cpp reads the bytes ED A0 80 as U+D800
# all the same, and the answer came back as three U+FFFD).
_JSON_ESCAPED: _Ranges = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F),
                          (0xD800, 0xDFFF)]
_DIGITS: _Ranges = [(0x30, 0x39)]
_WORD: _Ranges = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
# Spaces both ECMA-262 (JSON Schema's dialect) and Python's re count as \s and JSON writes
# raw: what \s may write. \S excludes every space either dialect counts.
_SPACES: _Ranges = [(0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                    (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]
_ANY_SPACE: _Ranges = [*_SPACES, (0x09, 0x0D), (0x1C, 0x1F), (0x85, 0x85), (0xFEFF, 0xFEFF)]
_LINE_ENDS: _Ranges = [(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)]  # what '.' never matches
_CLASS_ESCAPES = {"d": _DIGITS, "w": _WORD, "s": _SPACES}
# What \D, \W, \S write: outside ``ranges`` in either dialect. Python's \w and \d take every
# letter and digit, ECMA's only ASCII ones: \D and \W (and a negated class holding \d or \w)
# keep to ASCII, where the two agree.
_NEGATED_ESCAPES: dict[str, tuple[_Ranges, bool]] = {
    "d": (_DIGITS, True), "w": (_WORD, True), "s": (_ANY_SPACE, False)}
_EVERY_POINT: _Ranges = [(0x00, 0x10FFFF)]
# Spaces both dialects count (JSON escapes the controls among them anyway).
_COMMON_SPACES: _Ranges = [(0x09, 0x0D), *_SPACES]
_CONTROL_ESCAPES = {"t": 0x09, "n": 0x0A, "r": 0x0D, "f": 0x0C, "v": 0x0B, "0": 0x00}
_HEX = re.compile(r"x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})")
_QUANTIFIER = re.compile(r"\{[0-9]+(,[0-9]*)?\}")
_PYTHON_ONLY_QUANTIFIER = re.compile(r"\{,[0-9]+\}")


def gbnf_pattern(pattern: str, where: str) -> str:
    """The pattern as the converter should read it: anchored, every class and escape in a
    GBNF form that matches only characters a JSON string writes raw."""
    if not (pattern.startswith("^") and _ends_with_anchor(pattern)):
        raise _refuse(where, "it must start with '^' and end with '$' (the whole string is "
                      "matched)")
    body, top_level_choice = _Rewriter(pattern[1:-1], where).run()
    return f"^({body})$" if top_level_choice else f"^{body}$"


def _ends_with_anchor(pattern: str) -> bool:
    if len(pattern) < 2 or not pattern.endswith("$"):
        return False
    backslashes = len(pattern[:-1]) - len(pattern[:-1].rstrip("\\"))
    return backslashes % 2 == 0  # an escaped '$' is the character


# llama.cpp keeps a parse stack for every way the text so far can be read and expands each
# for every candidate token, so parts of variable length that can take the same characters
# multiply its work per token. One constrained step on SmolLM2's 49k tokens: 16 x "[a-z]?"
# 0.07 s, 40 of them 33 s; "([a-z]?[a-z]?[a-z]?[a-z]?)+" 0.12 s, "(([a-z]?[a-z]?)+[a-z]?
# [a-z]?)+" 2.1 s; "([a-z]*|x5)+" 0.4 s, "([a-z]*|x10)+" 87 s; "(a|a|...)+" of 100
# branches 32 s (the decode thread, every request's, waits; measured before this bound
# refused them; scripts/probe-pattern-cost measures the allowed ones). So a pattern's parts
# of variable length (a quantifier that is not one fixed count) are weighed: one each, what a
# repetition holds four times (a count {n,m} m times, as the converter writes m copies), and
# a repeated group holds at most 16 alternatives.
MAX_VARIABLE_WEIGHT = 16
MAX_REPEATED_BRANCHES = 16
_UNBOUNDED_REPEAT_WEIGHT = 4


@dataclass
class _Group:
    """What a group holds, for the bound on its cost."""

    branches: int = 1
    weight: int = 0  # its parts of variable length, weighed as MAX_VARIABLE_WEIGHT says
    items: int = 0  # atoms and groups in the branch being read
    empty_branch: bool = False  # a branch with nothing in it: '(a|)', '()'

    def end_branch(self) -> None:
        self.empty_branch = self.empty_branch or self.items == 0
        self.items = 0

    def take(self, inner: _Group, quantifier: _Quantifier | None, where: str) -> None:
        """A group closed inside this one, under ``quantifier`` (None: none)."""
        self.items += 1
        if quantifier is None:
            self.weight += inner.weight
            return
        if quantifier.most != 1 and inner.empty_branch:
            # llama.cpp refuses a repeated rule with an empty alternative ("could not be
            # compiled" said nothing of where).
            raise _refuse(where, "a repeated group has an empty alternative (as in "
                          "'(a|b|)+'; write '(a|b)*' instead)")
        if quantifier.most != 1 and inner.branches > MAX_REPEATED_BRANCHES:
            raise _refuse(where, f"a repeated group has {inner.branches} alternatives; this "
                          f"server allows at most {MAX_REPEATED_BRANCHES}")
        times = (_UNBOUNDED_REPEAT_WEIGHT if quantifier.most is None
                 else max(1, quantifier.most))
        self.weight += inner.weight * times + quantifier.variable

    def check(self, where: str) -> None:
        if self.weight > MAX_VARIABLE_WEIGHT:
            raise _refuse(where, f"its parts of variable length weigh {self.weight} (each "
                          f"quantifier 1, inside a repetition 4 times); this server allows "
                          f"at most {MAX_VARIABLE_WEIGHT}: overlapping ones cost the model "
                          "seconds for every token")


@dataclass(frozen=True)
class _Quantifier:
    least: int
    most: int | None  # None: no bound
    width: int  # characters it takes in the pattern

    @property
    def variable(self) -> int:
        """1 if what it quantifies can take more than one length."""
        return int(self.most != self.least)


def _quantifier_at(body: str, at: int) -> _Quantifier | None:
    c = body[at]
    if c in "*+?":
        lazy = body.startswith("?", at + 1)
        return _Quantifier(1 if c == "+" else 0, 1 if c == "?" else None, 2 if lazy else 1)
    counted = _QUANTIFIER.match(body, at) if c == "{" else None
    if counted is None:
        return None
    low, comma, high = counted.group()[1:-1].partition(",")
    most = int(low) if not comma else (int(high) if high else None)
    return _Quantifier(int(low), most, len(counted.group()))


class _Rewriter:
    def __init__(self, body: str, where: str):
        self._body = body
        self._where = where
        self._at = 0

    def run(self) -> tuple[str, bool]:
        out: list[str] = []
        groups = [_Group()]  # the pattern itself, then each open group
        closed: _Group | None = None  # a group just closed: the next token may repeat it
        body = self._body
        while self._at < len(body):
            c = body[self._at]
            quantifier = _quantifier_at(body, self._at)
            if closed is not None:
                groups[-1].take(closed, quantifier, self._where)
            elif quantifier is not None:
                groups[-1].weight += quantifier.variable  # on an atom: a class, a character
            closed = None
            if c == "\\":
                out.append(self._escape_outside())
                groups[-1].items += 1
                continue
            if c == "[":
                out.append(self._class())
                groups[-1].items += 1
                continue
            self._at += 1
            if c not in "{()|*+?":  # an atom (a '{' that is no count is one too, below)
                groups[-1].items += 1
            if c == ".":
                out.append(_negated(_LINE_ENDS))
            elif c in "^$":
                raise _refuse(self._where, f"an anchor ('{c}') inside the pattern cannot be "
                              "enforced (only one '^' at its start and one '$' at its end)")
            elif c == "{":
                counted = _QUANTIFIER.match(body, self._at - 1)
                if counted:
                    out.append(counted.group())
                    self._at = counted.end()
                elif _PYTHON_ONLY_QUANTIFIER.match(body, self._at - 1):
                    raise _refuse(self._where, "'{,n}' is a count to Python's re and literal "
                                  "text to ECMA-262: no output matches both; write '{0,n}'")
                else:
                    out.append(_format_class([(0x7B, 0x7B)], negated=False))
                    groups[-1].items += 1
            elif c == "}":
                out.append(_format_class([(0x7D, 0x7D)], negated=False))
            elif c == "(":
                if body.startswith("?:", self._at):
                    self._at += 2  # a group that captures nothing: any group, to a grammar
                elif body.startswith("?", self._at):
                    raise _refuse(self._where, "lookarounds and named groups have no "
                                  "equivalent in an output grammar")
                groups.append(_Group())
                out.append(c)
            elif c == ")":
                if len(groups) == 1:
                    raise _refuse(self._where, "a ')' closes no group")
                closed = groups.pop()
                closed.end_branch()
                out.append(c)
            elif c == "|":
                groups[-1].branches += 1
                groups[-1].end_branch()
                out.append(c)
            elif c in "*+?":
                out.append(c)
            elif _json_escaped(ord(c)):
                raise self._json_escape_needed(c)
            else:
                out.append(c)
        if len(groups) > 1:
            raise _refuse(self._where, "a group is not closed")
        if closed is not None:
            groups[-1].take(closed, None, self._where)
        groups[0].check(self._where)
        return "".join(out), groups[0].branches > 1

    def _escape_outside(self) -> str:
        """An escape outside a class, as a class of its own: the converter treats a class as
        one atom, where an escape inside a run of literal characters took a quantifier after
        it for the whole run's."""
        letter = self._peek_escape()
        if letter.lower() in _CLASS_ESCAPES and letter.isupper():
            self._at += 2
            excluded, ascii_only = _NEGATED_ESCAPES[letter.lower()]
            if ascii_only:
                ascii_rest = _subtract([(0x20, 0x7E)], _union(excluded))
                return _format_class(self._positive(ascii_rest), negated=False)
            return _negated(excluded)
        return _format_class(self._positive(self._escape_ranges()), negated=False)

    def _class(self) -> str:
        body = self._body
        self._at += 1  # the '['
        negated = body.startswith("^", self._at)
        if negated:
            self._at += 1
        ranges: _Ranges = []
        ascii_only = False  # a negated class holding \d or \w: see _NEGATED_ESCAPES
        wide = False  # a negated class holding \D, \W or \S: see _negated_escape_in_class
        while not body.startswith("]", self._at):
            if self._at >= len(body):
                raise _refuse(self._where, "a character class is not closed")
            escape = body[self._at:self._at + 2]
            ascii_only = ascii_only or (negated and escape in ("\\d", "\\w"))
            wide = wide or (negated and escape in ("\\D", "\\W", "\\S"))
            low = self._class_item(negated)
            if isinstance(low, list):  # a class escape (\d): no range starts or ends there
                ranges.extend(low)
                continue
            if body.startswith("-", self._at) and not body.startswith("-]", self._at):
                self._at += 1
                high = self._class_item(negated)
                if isinstance(high, list):
                    raise _refuse(self._where, "a class escape cannot end a range")
                if high < low:
                    raise _refuse(self._where, "a range in a character class runs backwards")
                ranges.append((low, high))
            else:
                ranges.append((low, low))
        self._at += 1  # the ']'
        if not ranges:
            raise _refuse(self._where, "an empty character class ('[]' or '[^]') cannot be "
                          "enforced")
        if negated and (ascii_only or wide):
            # Written as the characters left: [^\W_] is [0-9A-Za-z], not a negated class of
            # the rest of Unicode.
            universe = [(0x20, 0x7E)] if ascii_only else _EVERY_POINT
            left = _subtract(_subtract(universe, _union(ranges)), _JSON_ESCAPED)
            if not left:
                raise _refuse(self._where, "a negated character class leaves no character a "
                              "JSON string writes as it is")
            return _format_class(left, negated=False)
        if negated:
            return _negated(ranges)
        return _format_class(self._positive(ranges), negated=False)

    def _class_item(self, negated: bool) -> int | _Ranges:
        r"""One character of a class (its code point), or a class escape's ranges (in a
        negated class, ``\s`` is every space either dialect counts)."""
        c = self._body[self._at]
        if c != "\\":
            self._at += 1
            return ord(c)
        letter = self._peek_escape()
        if letter.lower() in _CLASS_ESCAPES and letter.isupper():
            self._at += 2
            return _negated_escape_in_class(letter.lower(), negated)
        ranges = self._escape_ranges()
        if letter == "s" and negated:
            return _ANY_SPACE
        return ranges if letter in _CLASS_ESCAPES else ranges[0][0]

    def _peek_escape(self) -> str:
        if self._at + 1 >= len(self._body):
            raise _refuse(self._where, "it ends with a lone backslash")
        return self._body[self._at + 1]

    def _escape_ranges(self) -> _Ranges:
        """The one character an escape stands for (not a class escape)."""
        letter = self._peek_escape()
        hexed = _HEX.match(self._body, self._at + 1)
        if hexed:
            self._at = hexed.end()
            point = int(hexed.group(1) or hexed.group(2), 16)
            pair = (_HEX.match(self._body, self._at + 1)
                    if self._body.startswith("\\u", self._at) else None)
            if 0xD800 <= point <= 0xDBFF and pair and pair.group(2) and \
                    0xDC00 <= int(pair.group(2), 16) <= 0xDFFF:
                # A UTF-16 pair, as ECMA-262 reads it outside unicode mode: one character.
                point = 0x10000 + ((point - 0xD800) << 10) + int(pair.group(2), 16) - 0xDC00
                self._at = pair.end()
        elif letter in _CLASS_ESCAPES:
            self._at += 2
            return _CLASS_ESCAPES[letter]
        elif letter in _CONTROL_ESCAPES:
            self._at += 2
            point = _CONTROL_ESCAPES[letter]
        elif letter.isascii() and not letter.isalnum():
            self._at += 2
            point = ord(letter)
        else:
            raise _refuse(self._where, f"the escape '\\{letter}' has no equivalent in an "
                          "output grammar")
        return [(point, point)]

    def _positive(self, ranges: _Ranges) -> _Ranges:
        """What a positive class may write raw: its ranges without JSON's escaped ones (the
        space alone stays of ``\\s``). Nothing left: the pattern needs an escape here."""
        kept = _subtract(_union(ranges), _JSON_ESCAPED)
        if not kept:
            point = ranges[0][0]
            raise self._json_escape_needed(chr(point))
        return kept

    def _json_escape_needed(self, char: str) -> InvalidRequest:
        if 0xD800 <= ord(char) <= 0xDFFF:
            return _refuse(self._where, f"it matches only {char!r} there, half of a UTF-16 "
                           "pair, which UTF-8 text cannot hold")
        return _refuse(self._where, f"it matches {char!r} there, which a JSON string must "
                       "escape; the output grammar writes a pattern's characters as they are")


def _union(ranges: _Ranges) -> _Ranges:
    merged: _Ranges = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _subtract(ranges: _Ranges, removed: _Ranges) -> _Ranges:
    kept: _Ranges = []
    for low, high in ranges:
        for cut_low, cut_high in removed:
            if cut_high < low or cut_low > high:
                continue
            if cut_low > low:
                kept.append((low, cut_low - 1))
            low = cut_high + 1
            if low > high:
                break
        if low <= high:
            kept.append((low, high))
    return kept


def _negated_escape_in_class(letter: str, negated: bool) -> _Ranges:
    r"""``\D``, ``\W`` or ``\S`` inside a class. A positive class may write what both
    dialects put in it (ASCII, as outside a class, for ``\D`` and ``\W``); a negated class must
    write nothing either dialect puts in it: ``[^\W_]`` is then the ASCII letters and digits,
    what both dialects take it for."""
    if letter == "s":
        return _subtract(_EVERY_POINT, _union(_ANY_SPACE if not negated else _COMMON_SPACES))
    kept = _CLASS_ESCAPES[letter]
    return _subtract(_EVERY_POINT if negated else [(0x20, 0x7E)], kept)


def _negated(ranges: _Ranges) -> str:
    """A class of every character a JSON string writes raw, but ``ranges``."""
    return _format_class(_union(ranges + _JSON_ESCAPED), negated=True)


def _json_escaped(point: int) -> bool:
    return any(low <= point <= high for low, high in _JSON_ESCAPED)


def _format_class(ranges: _Ranges, *, negated: bool) -> str:
    items = [_char(low) if low == high else f"{_char(low)}-{_char(high)}"
             for low, high in ranges]
    return f"[{'^' if negated else ''}{''.join(items)}]"


def _char(point: int) -> str:
    if point < 0x80 and chr(point).isalnum():
        return chr(point)
    if point <= 0xFF:
        return f"\\x{point:02X}"
    if point <= 0xFFFF:
        return f"\\u{point:04X}"
    return f"\\U{point:08X}"


def _refuse(where: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid schema at '{where}': {why}, so the pattern cannot be "
                          "enforced.", param=where, code="unsupported_schema")
