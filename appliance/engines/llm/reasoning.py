"""Reasoning models: the formats their thinking comes in, telling one from a model's template
and vocabulary, and the reader that splits one choice's output into reasoning and answer.

Two formats are known. ``think``: a ``<think>...</think>`` block before the answer (DeepSeek R1
and its distills, Qwen3, QwQ); the generation prompt may open the block itself, so the output
starts inside it. ``harmony``: gpt-oss's messages, each a header (``<|channel|>analysis``,
``<|channel|>final``, a recipient ``to=functions.NAME``) then ``<|message|>`` and a body ended
by ``<|end|>``, ``<|call|>`` or ``<|return|>``; the analysis channel is reasoning, the final
channel the answer, a message to ``functions.NAME`` a tool call.

A reader lives in the decode thread, one per choice, and knows its phase (undecided ->
thinking -> answering). It holds back only what may still be the start of a tag or marker and
a run of trailing whitespace (both bounded), so its work is linear in the output.
"""

from __future__ import annotations

import codecs
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from appliance.engines.base import Sampling, ToolCallDelta
from appliance.engines.llm.tool_parser import new_call_id

THINK = "think"
HARMONY = "harmony"
FAMILIES: tuple[str, ...] = (THINK, HARMONY)
# models.toml's `reasoning`: auto (read off the model), none (never), or a family by name.
SETTINGS: tuple[str, ...] = ("auto", "none", *FAMILIES)
DEFAULT_TAGS = ("<think>", "</think>")
# The budget efforts of models.toml's reasoning_budget, and their defaults in tokens.
BUDGET_EFFORTS: tuple[str, ...] = ("low", "medium", "high")
DEFAULT_BUDGETS: Mapping[str, int] = {"low": 512, "medium": 2048, "high": 8192}

# gpt-oss's control tokens whose text the reader must see (they are what delimits messages).
HARMONY_MARKERS: tuple[str, ...] = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>",
                                    "<|constrain|>", "<|call|>", "<|return|>")
_HARMONY_VOCABULARY = ("<|channel|>", "<|message|>")
_HARMONY_FINAL = "<|channel|>final<|message|>"
# An empty analysis message: what effort "none" writes for gpt-oss before it answers.
_HARMONY_NO_ANALYSIS = "<|channel|>analysis<|message|><|end|><|start|>assistant"
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"to=([^\s<]+)")
# Bounds on what a reader holds: whitespace that may trail the reasoning, and a harmony header.
_MAX_HELD_SPACE = 256
_MAX_HEADER = 512


class Phase(enum.Enum):
    UNDECIDED = "undecided"  # no text yet that says whether the model thinks
    THINKING = "thinking"
    ANSWERING = "answering"


@dataclass(frozen=True)
class ReasoningProfile:
    """How one model reasons, decided once at load (see detect)."""

    family: str  # THINK or HARMONY
    open_tag: str = DEFAULT_TAGS[0]
    close_tag: str = DEFAULT_TAGS[1]
    opens_in_prompt: bool = False  # the generation prompt ends inside an open block
    switchable: bool = False  # the template reads enable_thinking (Qwen3)
    budgets: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))

    def describe(self) -> str:
        """One line for check-config and the boot log."""
        if self.family == HARMONY:
            return "harmony (gpt-oss channels: analysis is reasoning, final the answer)"
        opens = "the generation prompt opens the block" if self.opens_in_prompt \
            else "the model opens the block itself"
        switch = "; enable_thinking switches it off" if self.switchable else ""
        budgets = ", ".join(f"{k} {v}" for k, v in self.budgets.items())
        return f"think ({self.open_tag}...{self.close_tag}; {opens}{switch}; budgets {budgets})"

    def start(self, prompt: str) -> Phase:
        """Where a choice's output starts, read off the rendered prompt's tail: inside the
        block when the prompt opened it, answering when the prompt closed it (Qwen3 with
        enable_thinking=false, effort none), else undecided (harmony: thinking, its output
        opens with a message header)."""
        if self.family == HARMONY:
            return Phase.ANSWERING if prompt.endswith(_HARMONY_FINAL) else Phase.THINKING
        tail = prompt.rstrip()
        if tail.endswith(self.close_tag):
            return Phase.ANSWERING
        if tail.endswith(self.open_tag):
            return Phase.THINKING
        return Phase.UNDECIDED

    def no_thinking(self, prompt: str, tools_pending: bool) -> str:
        """What effort none/minimal appends to the rendered prompt so no thinking follows:
        the close tag after an opened block (llama-server's --reasoning-budget 0), an empty
        block where the model would open one, for harmony an empty analysis message, then the
        final channel unless a tool call may come instead."""
        phase = self.start(prompt)
        if phase is Phase.ANSWERING:
            return ""
        if self.family == HARMONY:
            return _HARMONY_NO_ANALYSIS + ("" if tools_pending else _HARMONY_FINAL)
        if phase is Phase.THINKING:
            return f"\n{self.close_tag}\n\n"
        return f"{self.open_tag}\n\n{self.close_tag}\n\n"

    def reader(self, start: Phase, index: int = 0) -> Reader:
        if self.family == HARMONY:
            return HarmonyReader(start, index)
        return ThinkReader(self.open_tag, self.close_tag, start, index)


@dataclass(frozen=True)
class ReasoningPlan:
    """One request's reasoning, decided by the engine as it prepared the prompt; the
    scheduler follows it for each choice."""

    profile: ReasoningProfile
    start: Phase  # where the output begins (read off the rendered prompt)
    budget: int | None = None  # reasoning tokens after which the engine closes the thinking
    # An answer is owed (a response_format, a forced tool call): an end of generation while
    # still thinking closes the thinking instead, and the answer follows.
    must_answer: bool = False
    # The sampling the answer switches to (its grammar, armed after thinking); None: the
    # request's sampling holds throughout.
    answer_sampling: Sampling | None = None

    def reader(self, index: int) -> Reader:
        return self.profile.reader(self.start, index)


def detect(setting: str, tags: tuple[str, str], template_source: str,
           has_tokens: Callable[[tuple[str, ...]], bool],
           generation_prompt: Callable[[], str],
           budgets: Mapping[str, int] | None = None) -> ReasoningProfile | None:
    """The model's reasoning, from models.toml's ``reasoning`` and, under auto, the template
    and vocabulary: harmony when the vocabulary has gpt-oss's channel and message tokens and
    the template writes channels; think when the template mentions the open tag. None: the
    model does not reason. ``generation_prompt`` renders a one-message conversation (to see
    whether the prompt opens the block); it may raise, which reads as "it does not"."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown reasoning setting {setting!r}")
    if setting == "none":
        return None
    family = setting
    if setting == "auto":
        if has_tokens(_HARMONY_VOCABULARY) and "<|channel|>" in template_source:
            family = HARMONY
        elif tags[0] in template_source:
            family = THINK
        else:
            return None
    chosen = dict(DEFAULT_BUDGETS if budgets is None else budgets)
    if family == HARMONY:
        return ReasoningProfile(HARMONY, budgets=chosen)
    try:
        opens = generation_prompt().rstrip().endswith(tags[0])
    except Exception:
        opens = False
    return ReasoningProfile(THINK, tags[0], tags[1], opens_in_prompt=opens,
                            switchable="enable_thinking" in template_source, budgets=chosen)


@dataclass(frozen=True)
class Read:
    """What one piece of output was: reasoning, answer text, tool call pieces (harmony)."""

    reasoning: str = ""
    content: str = ""
    calls: tuple[ToolCallDelta, ...] = ()


class Reader(Protocol):
    """One choice's output split into reasoning and answer, piece by piece."""

    phase: Phase
    calls: int  # tool calls completed (harmony)

    def push(self, data: bytes) -> Read: ...

    def finish(self) -> Read:
        """Generation ended: what was held goes out."""
        ...

    def closing_text(self) -> str:
        """What the engine would write into the output to end the thinking now (it checks
        that this fits before it calls close)."""
        ...

    def close(self) -> tuple[str, Read]:
        """The engine ends the thinking now (budget spent, or an answer is owed): the text
        it writes into the output to do so (closing_text), and the reasoning still held."""
        ...


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that begins ``marker`` (a split tag)."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:size]):
            return size
    return 0


class _Reasoning:
    """The reasoning text as it goes out: its leading whitespace dropped, its trailing
    whitespace held until more text follows (none goes out before a closing tag)."""

    def __init__(self) -> None:
        self._started = False
        self._space = ""

    def text(self, text: str, closing: bool) -> str:
        if not self._started:
            text = text.lstrip()
            if not text:
                return ""
            self._started = True
        text = self._space + text
        if closing:
            self._space = ""
            return text.rstrip()
        body = text.rstrip()
        self._space = text[len(body):]
        if len(self._space) > _MAX_HELD_SPACE:  # a run of blanks is text like any other
            body, self._space = text, ""
        return body


class ThinkReader:
    """``<think>reasoning</think>answer``. Started inside the block (the prompt opened it) or
    undecided: then a reply whose first non-space text is not the open tag has no reasoning.
    The answer's leading whitespace (R1 writes ``</think>\\n\\n``) is dropped."""

    def __init__(self, open_tag: str, close_tag: str, start: Phase, index: int = 0):
        self.phase = start
        self.calls = 0
        self._open = open_tag
        self._close = close_tag
        self._index = index
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._reasoning = _Reasoning()
        # An answer that began after a block (or a prompt that closed one) loses its
        # leading whitespace; a reply that never thought is passed on as written.
        self._strip_answer = start is Phase.ANSWERING

    def push(self, data: bytes) -> Read:
        return self._read(self._decoder.decode(data), final=False)

    def finish(self) -> Read:
        return self._read(self._decoder.decode(b"", final=True), final=True)

    def closing_text(self) -> str:
        return f"\n{self._close}\n\n"

    def close(self) -> tuple[str, Read]:
        text = self.closing_text()
        tail = self._reasoning.text(self._held, closing=True) \
            if self.phase is Phase.THINKING else ""
        self._held = ""
        self.phase = Phase.ANSWERING
        self._strip_answer = True
        return text, Read(reasoning=tail)

    def _read(self, text: str, final: bool) -> Read:
        reasoning: list[str] = []
        content: list[str] = []
        self._held += text
        while self._held:
            if self.phase is Phase.UNDECIDED:
                stripped = self._held.lstrip()
                if stripped.startswith(self._open):
                    self.phase = Phase.THINKING
                    self._held = stripped[len(self._open):]
                    continue
                undecided = not stripped or self._open.startswith(stripped)
                if undecided and not final and len(self._held) <= _MAX_HELD_SPACE:
                    break  # blanks so far, or what may still become the open tag
                self.phase = Phase.ANSWERING
                continue
            if self.phase is Phase.THINKING:
                at = self._held.find(self._close)
                if at >= 0:
                    reasoning.append(self._reasoning.text(self._held[:at], closing=True))
                    self._held = self._held[at + len(self._close):]
                    self.phase = Phase.ANSWERING
                    self._strip_answer = True
                    continue
                keep = 0 if final else _partial_suffix(self._held, self._close)
                cut = len(self._held) - keep
                reasoning.append(self._reasoning.text(self._held[:cut], closing=final))
                self._held = self._held[cut:]
                break
            if self._strip_answer:
                self._held = self._held.lstrip()
                if not self._held:
                    break
                self._strip_answer = False
            content.append(self._held)
            self._held = ""
        return Read("".join(reasoning), "".join(content))


class _Body(enum.Enum):
    HEADER = "header"  # reading a message's header, up to <|message|>
    REASONING = "reasoning"  # analysis (and commentary preambles)
    CONTENT = "content"  # the final channel
    CALL = "call"  # arguments of a call to functions.NAME
    BETWEEN = "between"  # after a message's end, before the next <|start|>
    DONE = "done"  # <|return|>


class HarmonyReader:
    """gpt-oss's messages, from the output after ``<|start|>assistant``. The phase is
    thinking until the final channel's body (or a tool call's) begins."""

    def __init__(self, start: Phase, index: int = 0):
        self.phase = Phase.ANSWERING if start is Phase.ANSWERING else Phase.THINKING
        self.calls = 0
        self._index = index
        self._state = _Body.CONTENT if self.phase is Phase.ANSWERING else _Body.HEADER
        self._needs_role = False  # a header after an in-output <|start|> begins with a role
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._header = ""
        self._reasoning = _Reasoning()

    def push(self, data: bytes) -> Read:
        return self._read(self._decoder.decode(data), final=False)

    def finish(self) -> Read:
        read = self._read(self._decoder.decode(b"", final=True), final=True)
        calls = list(read.calls)
        if self._state is _Body.CALL:  # <|call|> ends generation: the call is complete
            self.calls += 1
            self._state = _Body.DONE
        return Read(read.reasoning, read.content, tuple(calls))

    def closing_text(self) -> str:
        if self._state is _Body.REASONING:
            return "<|end|><|start|>assistant" + _HARMONY_FINAL
        if self._state is _Body.BETWEEN:
            return "<|start|>assistant" + _HARMONY_FINAL
        if self._header + self._held:  # a header begun: end it as an empty message
            return "<|message|><|end|><|start|>assistant" + _HARMONY_FINAL
        return ("assistant" if self._needs_role else "") + _HARMONY_FINAL

    def close(self) -> tuple[str, Read]:
        text = self.closing_text()
        tail = ""
        if self._state is _Body.REASONING:
            tail = self._reasoning.text(self._held, closing=True)
        self._held = ""
        self._header = ""
        self._state = _Body.CONTENT
        self.phase = Phase.ANSWERING
        return text, Read(reasoning=tail)

    def _read(self, text: str, final: bool) -> Read:
        reasoning: list[str] = []
        content: list[str] = []
        calls: list[ToolCallDelta] = []
        self._held += text
        while self._held and self._state is not _Body.DONE:
            at, marker = self._next_marker()
            if self._state is _Body.HEADER:
                if marker == "<|message|>":
                    self._header += self._held[:at]
                    self._held = self._held[at + len(marker):]
                    self._open_body(calls)
                    continue
                if marker is not None:  # <|channel|>, <|constrain|>: part of the header
                    self._header += self._held[:at + len(marker)]
                    self._held = self._held[at + len(marker):]
                else:
                    cut = len(self._held) - (0 if final else self._partial_marker())
                    self._header += self._held[:cut]
                    self._held = self._held[cut:]
                if len(self._header) > _MAX_HEADER:  # no header after all: reasoning text
                    self._state = _Body.REASONING
                    self._held, self._header = self._header + self._held, ""
                    continue
                if marker is None:
                    break
                continue
            if marker is None:
                cut = len(self._held) - (0 if final else self._partial_marker())
                self._body(self._held[:cut], reasoning, content, calls, closing=final)
                self._held = self._held[cut:]
                break
            self._body(self._held[:at], reasoning, content, calls, closing=True)
            self._held = self._held[at + len(marker):]
            self._end_body(marker)
        if self._state is _Body.DONE:
            self._held = ""
        return Read("".join(reasoning), "".join(content), tuple(calls))

    def _partial_marker(self) -> int:
        return max(_partial_suffix(self._held, marker) for marker in HARMONY_MARKERS)

    def _next_marker(self) -> tuple[int, str | None]:
        found = [(at, m) for m in HARMONY_MARKERS if (at := self._held.find(m)) >= 0]
        if not found:
            return -1, None
        at, marker = min(found)
        return at, marker

    def _open_body(self, calls: list[ToolCallDelta]) -> None:
        header, self._header = self._header, ""
        recipient = _RECIPIENT.search(header)
        channel = _CHANNEL.search(header)
        if recipient is not None and recipient.group(1).startswith("functions."):
            name = recipient.group(1)[len("functions."):]
            self._state = _Body.CALL
            self.phase = Phase.ANSWERING
            calls.append(ToolCallDelta(self.calls, "", self._index, id=new_call_id(), name=name))
        elif channel is not None and channel.group(1) == "final":
            self._state = _Body.CONTENT
            self.phase = Phase.ANSWERING
        else:  # analysis, a commentary preamble, a built-in tool's call: not the answer
            self._state = _Body.REASONING

    def _body(self, text: str, reasoning: list[str], content: list[str],
              calls: list[ToolCallDelta], closing: bool) -> None:
        if self._state is _Body.REASONING:
            reasoning.append(self._reasoning.text(text, closing))
        elif self._state is _Body.CONTENT and text:
            content.append(text)
        elif self._state is _Body.CALL and text:
            calls.append(ToolCallDelta(self.calls, text, self._index))
        # BETWEEN: nothing belongs between messages; what a model writes there is dropped.

    def _end_body(self, marker: str) -> None:
        if marker == "<|start|>":
            if self._state is _Body.CALL:
                self.calls += 1
            self._state = _Body.HEADER
            self._needs_role = True
            return
        if marker in ("<|end|>", "<|call|>"):
            if self._state is _Body.CALL:
                self.calls += 1
            if self._state is _Body.REASONING:
                self._reasoning.text("\n\n", closing=False)  # messages apart, if more follows
            self._state = _Body.BETWEEN
            return
        if marker == "<|return|>":
            if self._state is _Body.CALL:
                self.calls += 1
            self._state = _Body.DONE
        # <|channel|> / <|message|> / <|constrain|> inside a body: kept out of the text.
