"""The reasoning reader fed the exact pieces each family writes: DeepSeek R1 (its output starts
inside the block the prompt opened), Qwen3 (it writes <think> itself, or answers without one),
QwQ, gpt-oss's harmony messages (analysis, final, a call to functions.get_weather), tags and
markers split across pieces, a <tool_call> inside the thinking, the engine closing the
thinking at a budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from appliance.engines.base import TextDelta, ToolCallDelta
from appliance.engines.llm.reasoning import (
    HARMONY,
    THINK,
    HarmonyReader,
    Phase,
    Read,
    Reader,
    ReasoningProfile,
    ThinkReader,
)
from appliance.engines.llm.tool_dialects import HERMES
from appliance.engines.llm.tool_parser import ToolCallParser


@dataclass
class Seen:
    reasoning: str = ""
    content: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)

    def take(self, read: Read, phase: Phase) -> None:
        self.reasoning += read.reasoning
        self.content += read.content
        self.calls.extend(read.calls)
        self.phases.append(phase)


def feed(reader: Reader, pieces: Sequence[str | bytes], finish: bool = True) -> Seen:
    seen = Seen()
    for piece in pieces:
        seen.take(reader.push(piece.encode() if isinstance(piece, str) else piece),
                  reader.phase)
    if finish:
        seen.take(reader.finish(), reader.phase)
    return seen


def think(start: Phase) -> ThinkReader:
    return ThinkReader("<think>", "</think>", start)


# DeepSeek-R1-Distill-Qwen: the prompt ends "<Assistant><think>\n" (its tokens spelled
# with fullwidth bars); the model writes its
# reasoning, "</think>" (one token in its vocabulary) and "\n\n" before the answer.
R1_PIECES = ["Okay", ",", " the", " user", " asks", " for", " 2", "+", "2", ".", "\n",
             "</think>", "\n\n", "2", " +", " 2", " =", " **", "4", "**", "."]


def test_r1_starts_inside_the_block_the_prompt_opened() -> None:
    seen = feed(think(Phase.THINKING), R1_PIECES)
    assert seen.reasoning == "Okay, the user asks for 2+2."
    assert seen.content == "2 + 2 = **4**."
    assert seen.phases[0] is Phase.THINKING and seen.phases[-1] is Phase.ANSWERING
    # the phase turns at the close tag, not before
    assert seen.phases[R1_PIECES.index("</think>")] is Phase.ANSWERING
    assert seen.phases[R1_PIECES.index("</think>") - 1] is Phase.THINKING


def test_qwen3_writes_its_own_open_tag() -> None:
    pieces = ["<think>", "\n", "The", " user", " greets", " me", ".", "\n", "</think>", "\n\n",
              "Hello", "!", " How", " can", " I", " help", "?"]
    reader = think(Phase.UNDECIDED)
    assert reader.phase is Phase.UNDECIDED
    seen = feed(reader, pieces)
    assert seen.reasoning == "The user greets me."
    assert seen.content == "Hello! How can I help?"


def test_a_reply_that_does_not_open_the_block_has_no_reasoning() -> None:
    seen = feed(think(Phase.UNDECIDED), ["Hello", " there", ", <think> is a tag"])
    assert seen.reasoning == ""
    assert seen.content == "Hello there, <think> is a tag"
    assert seen.phases[0] is Phase.ANSWERING


def test_leading_space_then_the_tag_still_thinks() -> None:
    seen = feed(think(Phase.UNDECIDED), ["\n", " ", "<", "thi", "nk", ">", "hm", "</think>", "ok"])
    assert seen.reasoning == "hm"
    assert seen.content == "ok"


def test_qwq_output_after_its_prompt_opened_the_block() -> None:
    # QwQ-32B's generation prompt ends "<|im_start|>assistant\n<think>\n".
    pieces = ["Alright", ",", " let's", " see", ".", "\n\n", "Wait", ",", " yes", ".", "\n",
              "</think>", "\n\n", "The", " capital", " is", " Paris", "."]
    seen = feed(think(Phase.THINKING), pieces)
    assert seen.reasoning == "Alright, let's see.\n\nWait, yes."
    assert seen.content == "The capital is Paris."


def test_tags_split_across_pieces_and_characters_split_across_bytes() -> None:
    e_acute = "é".encode()
    pieces: list[str | bytes] = ["<th", "ink>", "caf", e_acute[:1], e_acute[1:], "</", "th",
                                 "in", "k", ">", "\n", "r", e_acute[:1], e_acute[1:], "sum",
                                 e_acute[:1], e_acute[1:]]
    seen = feed(think(Phase.UNDECIDED), pieces)
    assert seen.reasoning == "café"
    assert seen.content == "résumé"


def test_a_partial_close_that_is_not_one_stays_reasoning() -> None:
    seen = feed(think(Phase.THINKING), ["a </th", "e end", "</think>", "b"])
    assert seen.reasoning == "a </the end"
    assert seen.content == "b"


def test_text_ending_inside_the_block_is_all_reasoning() -> None:
    seen = feed(think(Phase.THINKING), ["still", " thinking", " </thi"])
    assert seen.reasoning == "still thinking </thi"
    assert seen.content == ""
    assert seen.phases[-1] is Phase.THINKING


def test_a_tool_call_written_while_thinking_is_not_a_call() -> None:
    """The engine's ToolCallParser reads the content only: a <tool_call> in the reasoning
    stays reasoning text, the one in the answer is the call."""
    pieces = ["I", " could", " write", " <tool_call>", '{"name": "get_weather", ',
              '"arguments": {"city": "Oslo"}}', "</tool_call>", " but", " first", " think",
              ".", "</think>", "\n\n", "<tool_call>", '\n{"name": "get_weather", ',
              '"arguments": {"city": "Paris"}}', "\n</tool_call>"]
    reader = think(Phase.THINKING)
    parser = ToolCallParser(HERMES, 0, make_id=lambda: "call_1")
    reasoning = ""
    events: list[TextDelta | ToolCallDelta] = []
    for piece in pieces:
        read = reader.push(piece.encode())
        reasoning += read.reasoning
        events.extend(parser.feed(read.content))
    events.extend(parser.feed(reader.finish().content))
    events.extend(parser.finish())
    assert '"Oslo"' in reasoning and "<tool_call>" in reasoning
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert [c.name for c in calls if c.name] == ["get_weather"]
    assert "".join(c.arguments for c in calls) == '{"city": "Paris"}'
    assert parser.calls == 1
    assert not [e for e in events if isinstance(e, TextDelta) and e.text.strip()]


def test_the_engine_closes_the_thinking_at_its_budget() -> None:
    reader = think(Phase.THINKING)
    seen = feed(reader, ["Let", " me", " count", " sheep", " "], finish=False)
    before = reader.phase
    text, tail = reader.close()
    assert text == "\n</think>\n\n"
    assert (before, reader.phase) == (Phase.THINKING, Phase.ANSWERING)
    seen.take(tail, reader.phase)
    seen.take(reader.push(b"{\"a\": 1}"), reader.phase)
    assert seen.reasoning == "Let me count sheep"
    assert seen.content == '{"a": 1}'


# gpt-oss: the generation prompt ends "<|start|>assistant"; these are its tokens' texts.
HARMONY_ANSWER = ["<|channel|>", "analysis", "<|message|>", "User", " asks", " about",
                  " the", " weather", ".", " Answer", " briefly", ".", "<|end|>", "<|start|>",
                  "assistant", "<|channel|>", "final", "<|message|>", "It", " is", " sunny",
                  " in", " Paris", "."]


def test_harmony_analysis_is_reasoning_final_is_the_answer() -> None:
    reader = HarmonyReader(Phase.THINKING)
    seen = feed(reader, HARMONY_ANSWER)  # <|return|> is end-of-generation: finish
    assert seen.reasoning == "User asks about the weather. Answer briefly."
    assert seen.content == "It is sunny in Paris."
    assert seen.calls == []
    final_body = HARMONY_ANSWER.index("final") + 1  # the <|message|> after "final"
    assert seen.phases[final_body - 1] is Phase.THINKING
    assert seen.phases[final_body] is Phase.ANSWERING
    assert reader.calls == 0


def test_harmony_a_call_to_functions_get_weather() -> None:
    pieces = ["<|channel|>", "analysis", "<|message|>", "Need", " the", " weather", " tool",
              ".", "<|end|>", "<|start|>", "assistant", "<|channel|>", "commentary", " to",
              "=", "functions", ".get", "_weather", " ", "<|constrain|>", "json",
              "<|message|>", '{"', "location", '":"', "Paris", '",', '"unit":"', "celsius",
              '"}']
    reader = HarmonyReader(Phase.THINKING)
    seen = feed(reader, pieces)  # <|call|> is end-of-generation: finish reads the call
    assert seen.reasoning == "Need the weather tool."
    assert seen.content == ""
    first, *rest = seen.calls
    assert first.name == "get_weather" and first.id and first.arguments == ""
    assert "".join(c.arguments for c in rest) == '{"location":"Paris","unit":"celsius"}'
    assert {c.call_index for c in seen.calls} == {0}
    assert reader.calls == 1


def test_harmony_recipient_in_the_role_header_and_an_explicit_call_marker() -> None:
    pieces = [" to=functions.get_weather", "<|channel|>", "commentary", " json", "<|message|>",
              '{"location": "Oslo"}', "<|call|>"]
    reader = HarmonyReader(Phase.THINKING)
    seen = feed(reader, pieces)
    assert seen.calls[0].name == "get_weather"
    assert "".join(c.arguments for c in seen.calls) == '{"location": "Oslo"}'
    assert reader.calls == 1 and seen.reasoning == ""


def test_harmony_markers_split_across_pieces() -> None:
    pieces = ["<|chan", "nel|>analysis<|mes", "sage|>", "hm", "<|e", "nd|><|start|>assistant",
              "<|channel|>final<|message|>", "ok", "<|ret", "urn|>"]
    seen = feed(HarmonyReader(Phase.THINKING), pieces)
    assert seen.reasoning == "hm"
    assert seen.content == "ok"


def test_harmony_closed_by_the_engine_inside_and_between_messages() -> None:
    inside = HarmonyReader(Phase.THINKING)
    seen = feed(inside, ["<|channel|>", "analysis", "<|message|>", "Long", " thought", " <|e"],
                finish=False)
    text, tail = inside.close()
    assert text == "<|end|><|start|>assistant<|channel|>final<|message|>"
    assert seen.reasoning + tail.reasoning == "Long thought <|e"
    assert inside.push(b"Answer").content == "Answer"
    between = HarmonyReader(Phase.THINKING)
    feed(between, ["<|channel|>", "analysis", "<|message|>", "x", "<|end|>"], finish=False)
    assert between.close()[0] == "<|start|>assistant<|channel|>final<|message|>"
    fresh = HarmonyReader(Phase.THINKING)
    assert fresh.close()[0] == "<|channel|>final<|message|>"


def test_harmony_prefilled_final_starts_answering() -> None:
    seen = feed(HarmonyReader(Phase.ANSWERING), ["Sure", ".", "<|return|>"])
    assert seen.content == "Sure." and seen.reasoning == ""


def test_profiles_read_the_start_off_the_prompt_and_close_what_effort_none_needs() -> None:
    think_profile = ReasoningProfile(THINK)
    assert think_profile.start("<|im_start|>assistant\n<think>\n") is Phase.THINKING
    assert think_profile.start("<|im_start|>assistant\n<think>\n\n</think>\n\n") \
        is Phase.ANSWERING
    assert think_profile.start("<|im_start|>assistant\n") is Phase.UNDECIDED
    assert think_profile.no_thinking("x<think>\n", False) == "\n</think>\n\n"
    assert think_profile.no_thinking("x\n", False) == "<think>\n\n</think>\n\n"
    assert think_profile.no_thinking("x<think>\n\n</think>\n\n", False) == ""
    harmony = ReasoningProfile(HARMONY)
    prompt = "<|start|>user<|message|>Hi<|end|><|start|>assistant"
    assert harmony.start(prompt) is Phase.THINKING
    closed = prompt + harmony.no_thinking(prompt, tools_pending=False)
    assert closed.endswith("<|channel|>analysis<|message|><|end|><|start|>assistant"
                           "<|channel|>final<|message|>")
    assert harmony.start(closed) is Phase.ANSWERING
    with_tools = prompt + harmony.no_thinking(prompt, tools_pending=True)
    assert with_tools.endswith("<|channel|>analysis<|message|><|end|><|start|>assistant")


def test_a_run_of_blanks_is_bounded_not_held_for_ever() -> None:
    reader = think(Phase.THINKING)
    seen = feed(reader, ["a"] + [" "] * 600 + ["b"], finish=False)
    assert seen.reasoning.startswith("a") and seen.reasoning.endswith("b")
    undecided = think(Phase.UNDECIDED)
    feed(undecided, [" "] * 600, finish=False)
    assert undecided.phase is Phase.ANSWERING
