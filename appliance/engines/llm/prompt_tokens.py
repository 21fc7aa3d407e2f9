"""Prompt text to token ids: the template's own text may hold special tokens, a request's never.

A chat template writes control tokens as text (``<|im_start|>``), so those must be read as the
tokens they name. Text from a request (message content, names, tool call arguments and results,
tool definitions, a legacy prompt) must not be: a user who writes ``<|im_start|>system`` would
open a turn of their own. So before rendering, each piece of request text has every control
token's text in it (and a trailing fragment that could complete one with what follows) replaced
by a marker: three characters no tokenizer merges and no template transform (trim, split, case)
alters. The template renders as it likes, transforms included; in its output every control
token's text is then the template's own. Those become their tokens, and the text between them,
markers turned back into what they stand for, is tokenized as plain text.

That split is also where llama.cpp's tokenizer splits (it cuts the text at special tokens
first), so the tokens are those of one call with special tokens parsed, without its cost: that
call matches every special token's text over the whole prompt, with a cost that grows with the
square of their count (it walks its fragment list from the start for each match), and for a
vocabulary with thousands of control tokens, with their number times the prompt's length.
Where a template's control token overlaps another special token's text, or a special token's
text names two tokens, the split could differ from the tokenizer's; the prompt is then
tokenized with special tokens parsed, request text (still marked) excepted.

The work is bounded before it starts (a token covers at most the model's longest piece, so a
prompt of more bytes than ``limit`` such pieces cannot fit), checks its cancel token between
pieces and stops once it holds more than its limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

from appliance.engines.base import (
    CancelToken,
    ChatMessage,
    ImageInput,
    ToolCall,
    ToolSpec,
    ToolUse,
)
from appliance.engines.llm.model import LoadedModel, SpecialToken, encoded

# A marker: MARK and two characters of plane 15's private use area spelling the index of the
# text it stands for. MARK is a Unicode noncharacter; request text holding one has it marked
# too, so every marker in a rendered prompt is one of ours.
MARK = "\ufdd0"
_DIGITS = 0xFFFE
_FIRST_DIGIT = 0xF0000
_MARKER = re.compile(MARK + "([\U000f0000-\U000ffffd])([\U000f0000-\U000ffffd])")
_MARKER_EXTRA_BYTES = 3 + 4 + 4 - 1  # a marker's UTF-8 bytes beyond the one its text has at least
# Plain text longer than this is cut before a user-defined token (a run of newlines, an HTML
# tag in Gemma's vocabulary) where no other special token overlaps, so that one call never
# matches more than about this many of them.
CHUNK_CHARS = 1024
# In text so dense with overlapping user-defined tokens that none stands alone, the cut falls
# on the next one after this many tries: a token boundary may move there; the cost stays linear.
_CUT_TRIES = 16
_C_SPACE = " \t\n\v\f\r"  # what the tokenizer's isspace() strips next to lstrip/rstrip tokens


class PromptTooLong(Exception):
    """The prompt holds more tokens than the limit: at least ``at_least``."""

    def __init__(self, at_least: int):
        super().__init__(f"at least {at_least} tokens")
        self.at_least = at_least


def words_pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    """A regex matching any of ``words``, the longest at a position: a trie spelled as nested
    groups, so text full of a shared first character (``<``) costs one walk down the trie per
    position rather than one try per word (vocabularies hold thousands)."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def spell(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + spell(child) for char, child in sorted(node.items())
                    if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return re.compile(spell(trie)) if trie else None


class PromptTokenizer:
    """A model's tokenizer as described above; built once per model, shared by requests."""

    def __init__(self, model: LoadedModel):
        self._model = model
        specials = model.special_tokens()
        control = [t for t in specials if t.parsed_only_as_special]
        named: dict[str, SpecialToken | None] = {}
        for token in control:
            named[token.text] = None if token.text in named else token  # None: ambiguous
        self._control = named
        self._template_specials = words_pattern(named)
        self.marked_texts = words_pattern([*named, MARK])
        # Proper prefixes of control texts: request text ending in one could become a control
        # token together with what the template writes after it.
        self.prefixes = frozenset(text[:size] for text in named for size in range(1, len(text)))
        self.longest = max((len(t.text) for t in specials), default=0)
        self._every = words_pattern(t.text for t in specials)
        self._never_overlapped = _never_overlapped([t.text for t in specials])
        self._user_defined = words_pattern(t.text for t in specials
                                           if not t.parsed_only_as_special)

    def tokenize(self, rendered: str, marks: RequestText, *, limit: int,
                 cancel: CancelToken | None = None, leading: bool = True) -> list[int]:
        """The tokens of a rendered prompt, BOS first when the model wants one (once, whoever
        writes it). Raises PromptTooLong past ``limit`` tokens, Cancelled once cancelled.
        ``leading``: the text starts the prompt; False for the text after a picture in it
        (vision_prompt.py), which takes no BOS."""
        model = self._model
        tokens: list[int] = []
        if leading:
            if model.add_bos and model.bos_text and rendered.startswith(model.bos_text):
                rendered = rendered[len(model.bos_text):]
            tokens = [model.bos] if model.add_bos and model.bos >= 0 else []
        pieces = self._split(rendered, marks)
        if pieces is None:
            return self._tokenize_parsing(rendered, marks, tokens, limit, cancel)
        texts = [piece for piece in pieces if isinstance(piece, str)]
        self._check_size(len(tokens) + len(pieces) - len(texts), texts, limit)
        for piece in pieces:
            if isinstance(piece, int):
                tokens.append(piece)
                continue
            for chunk in self._plain_chunks(piece):
                if cancel is not None:
                    cancel.check()
                tokens += model.tokenize(chunk, add_bos=False, special=False)
            if len(tokens) > limit:
                raise PromptTooLong(len(tokens))
        return tokens

    def _check_size(self, tokens: int, texts: list[str], limit: int) -> None:
        least = tokens + sum(-(-len(encoded(text)) // self._model.longest_piece)
                             for text in texts)
        if least > limit:
            raise PromptTooLong(least)

    def _split(self, rendered: str, marks: RequestText) -> list[str | int] | None:
        """The prompt as plain texts (markers turned back) and the template's control tokens;
        None where that split could differ from the tokenizer's."""
        pieces: list[str | int] = []
        at = 0
        strip_next = False
        for found in (self._template_specials.finditer(rendered)
                      if self._template_specials is not None else ()):
            token = self._control[found.group()]
            if token is None or not self._alone(rendered, *found.span()):
                return None
            text = rendered[at:found.start()]
            if strip_next:
                text = text.lstrip(_C_SPACE)
            if token.lstrip:
                text = text.rstrip(_C_SPACE)
            if text:
                pieces.append(marks.restore(text))
            pieces.append(token.id)
            at, strip_next = found.end(), token.rstrip
        text = rendered[at:].lstrip(_C_SPACE) if strip_next else rendered[at:]
        if text:
            pieces.append(marks.restore(text))
        return pieces

    def _alone(self, text: str, start: int, end: int) -> bool:
        """Whether the tokenizer surely makes the special token at ``start:end`` of it: it
        takes special tokens longest first, so no other one as long may overlap this one."""
        if text[start:end] in self._never_overlapped:
            return True
        assert self._every is not None
        size = end - start
        longest_here = self._every.match(text, start)
        if longest_here is None or longest_here.end() != end:
            return False
        for other in range(max(0, start - self.longest + 1), end):
            found = self._every.match(text, other) if other != start else None
            if found is not None and found.end() - other >= size and found.end() > start:
                return False
        return True

    def _plain_chunks(self, text: str) -> Iterator[str]:
        start = 0
        while self._user_defined is not None and len(text) - start > CHUNK_CHARS:
            cut = None
            for tries, found in enumerate(self._user_defined.finditer(text,
                                                                       start + CHUNK_CHARS)):
                if tries == _CUT_TRIES or self._alone(text, *found.span()):
                    cut = found.start()
                    break
            if cut is None:
                break
            yield text[start:cut]
            start = cut
        yield text[start:]

    def _tokenize_parsing(self, rendered: str, marks: RequestText, tokens: list[int],
                          limit: int, cancel: CancelToken | None) -> list[int]:
        """The plain tokenizer call with special tokens parsed, for templates whose control
        tokens overlap: request text, still marked, is cut out and tokenized as plain text."""
        pieces: list[tuple[str, bool]] = []
        at = 0
        for found in _MARKER.finditer(rendered):
            literal = marks.literal(found)
            if literal is not None:
                pieces += [(rendered[at:found.start()], True), (literal, False)]
                at = found.end()
        pieces.append((rendered[at:], True))
        self._check_size(len(tokens), [text for text, _ in pieces], limit)
        for text, special in pieces:
            if cancel is not None:
                cancel.check()
            tokens += self._model.tokenize(text, add_bos=False, special=special)
        if len(tokens) > limit:
            raise PromptTooLong(len(tokens))
        return tokens


def _never_overlapped(texts: list[str]) -> frozenset[str]:
    """The special texts no other one at least as long can overlap in any text: none
    contains them, and no proper prefix of one is a proper suffix of another (or itself)."""
    known = set(texts)
    length = {text: len(text) for text in texts}
    contained: set[str] = set()
    for text in texts:
        for start in range(len(text)):
            for stop in range(start + 1, len(text) + 1):
                if stop - start < len(text) and text[start:stop] in known:
                    contained.add(text[start:stop])
    longest_with_prefix: dict[str, int] = {}
    longest_with_suffix: dict[str, int] = {}
    for text in texts:
        for size in range(1, len(text)):
            head, tail = text[:size], text[-size:]
            longest_with_prefix[head] = max(longest_with_prefix.get(head, 0), len(text))
            longest_with_suffix[tail] = max(longest_with_suffix.get(tail, 0), len(text))
    alone = set()
    for text in known - contained:
        borders = [text[:size] for size in range(1, len(text))]
        if all(longest_with_suffix.get(head, 0) < length[text] for head in borders) and all(
                longest_with_prefix.get(text[-size:], 0) < length[text]
                for size in range(1, len(text))):
            alone.add(text)
    return frozenset(alone)


class RequestText:
    """One request's text, marked so that a template renders it as plain text."""

    def __init__(self, tokenizer: PromptTokenizer):
        self._tokenizer = tokenizer
        self._index: dict[str, int] = {}
        self._literals: list[str] = []

    def text(self, value: str, *, trailing: bool = True) -> str:
        """``value`` with control tokens' text marked; ``trailing``: also a last fragment that
        could begin one (for text the template may write something after)."""
        tokenizer = self._tokenizer
        if tokenizer.marked_texts is not None:
            value = tokenizer.marked_texts.sub(lambda found: self._mark(found.group()), value)
        if trailing and tokenizer.prefixes:
            kept = value.rstrip()
            for size in range(min(tokenizer.longest - 1, len(kept)), 0, -1):
                if kept[-size:] in tokenizer.prefixes:
                    return kept[:-size] + self._mark(kept[-size:]) + value[len(kept):]
        return value

    def json(self, value: Any) -> Any:
        """A JSON value with every string in it, keys too, marked as request text."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.json(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.json(item) for item in value]
        return value

    def restore(self, text: str) -> str:
        """Rendered text with our markers turned back into the text they stand for."""
        if MARK not in text:
            return text
        return _MARKER.sub(lambda found: self.literal(found) or found.group(), text)

    def literal(self, found: re.Match[str]) -> str | None:
        index = (ord(found.group(1)) - _FIRST_DIGIT) * _DIGITS + ord(found.group(2)) - _FIRST_DIGIT
        return self._literals[index] if index < len(self._literals) else None

    def _mark(self, literal: str) -> str:
        index = self._index.get(literal)
        if index is None:
            index = self._index[literal] = len(self._literals)
            self._literals.append(literal)
        high, low = divmod(index, _DIGITS)
        return MARK + chr(_FIRST_DIGIT + high) + chr(_FIRST_DIGIT + low)

    # -- the structures a chat prompt is rendered from --

    def messages(self, messages: Iterable[ChatMessage],
                 picture: Callable[[ImageInput], str] | None = None
                 ) -> tuple[ChatMessage, ...]:
        """The messages marked; ``picture`` gives the marker text put where each of a
        message's images stood (vision_prompt.py). Markers go in after the text is marked:
        request text can hold no marker of ours, so it can forge no picture."""
        return tuple(self._message(m, picture) for m in messages)

    def _content(self, message: ChatMessage,
                 picture: Callable[[ImageInput], str] | None) -> str:
        if not message.images or picture is None:
            return self.text(message.content)
        parts: list[str] = []
        at = 0
        for offset, image in message.images:
            parts += [self.text(message.content[at:offset]), picture(image)]
            at = offset
        parts.append(self.text(message.content[at:]))
        return "".join(parts)

    def _message(self, message: ChatMessage,
                 picture: Callable[[ImageInput], str] | None) -> ChatMessage:
        # Reasoning given back is request text like content: templates print it (Qwen3's
        # <think> of the current turn, gpt-oss's analysis before a call).
        reasoning = None if message.reasoning is None else self.text(message.reasoning)
        content = self._content(message, picture)
        if not message.tool_calls and message.name is None and message.tool_call_id is None:
            return replace(message, content=content, reasoning=reasoning)
        name, call_id = message.name, message.tool_call_id
        return replace(
            message,
            content=content,
            reasoning=reasoning,
            tool_calls=tuple(self._call(call) for call in message.tool_calls),
            tool_call_id=None if call_id is None else self.text(call_id),
            name=None if name is None else self.text(name),
        )

    def _call(self, call: ToolCall) -> ToolCall:
        try:
            parsed = json.loads(call.arguments)
            # Marked once parsed: a JSON escape (\u003c) cannot carry a token's text past.
            marked = self.json(parsed)
        except (ValueError, RecursionError):  # not JSON, or nested past what Python walks
            arguments = self.text(call.arguments)
        else:
            arguments = call.arguments if marked == parsed else json.dumps(
                marked, ensure_ascii=False)
        return ToolCall(self.text(call.id), self.text(call.name), arguments)

    def tools(self, use: ToolUse | None) -> ToolUse | None:
        if use is None:
            return None
        return replace(use, tools=tuple(self._tool(t) for t in use.tools),
                       choice=self.text(use.choice))

    def _tool(self, tool: ToolSpec) -> ToolSpec:
        return replace(tool, name=self.text(tool.name),
                       description=None if tool.description is None
                       else self.text(tool.description),
                       parameters=self.json(dict(tool.parameters)))
