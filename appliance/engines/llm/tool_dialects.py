"""How one model family writes tool calls, and how we describe tools to a model.

A dialect is the text that opens a call in the model's output (``<tool_call>`` for Hermes-style
models such as Qwen 2.5/3, ``[TOOL_CALLS]`` for Mistral, a bare ``{"name"`` for Llama 3.x), the
key that holds the arguments, and what closes a block. The dialect is read off the model's chat
template; a template that knows nothing of tools (SmolLM2, the Gemma turn format we ship) gets
the Hermes dialect and a system prompt that teaches it, and its history is rewritten into that
dialect so any template can render it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from appliance.engines.base import ChatMessage, ToolCall, ToolSpec, ToolUse
from appliance.engines.llm.templates import arguments_value


@dataclass(frozen=True)
class ToolDialect:
    name: str
    start: str  # text that opens tool calls in the output
    marker_in_payload: bool  # the start text is the beginning of the JSON itself (Llama 3)
    end: str | None  # text that closes a block after its JSON, if any
    args_key: str  # "arguments" or "parameters"
    list_form: bool  # one block holds a JSON array of calls (Mistral)
    noise: tuple[str, ...] = ()  # markers that may precede calls and are not content

    def block(self, calls: tuple[ToolCall, ...]) -> str:
        """Calls written the way this dialect's model writes them (for history turns)."""
        objects = [{"name": call.name, self.args_key: arguments_value(call.arguments)}
                   for call in calls]
        if self.list_form:
            return self.start + json.dumps(objects, ensure_ascii=False) + (self.end or "")
        if self.marker_in_payload:
            return "; ".join(json.dumps(o, ensure_ascii=False) for o in objects)
        return "\n".join(f"{self.start}\n{json.dumps(o, ensure_ascii=False)}\n{self.end or ''}"
                         for o in objects)


HERMES = ToolDialect("hermes", "<tool_call>", False, "</tool_call>", "arguments", False)
# SmolLM2's tool-calling data: one <tool_call> block holding a JSON array of calls.
HERMES_LIST = ToolDialect("hermes-list", "<tool_call>", False, "</tool_call>", "arguments", True)
MISTRAL = ToolDialect("mistral", "[TOOL_CALLS]", False, None, "arguments", True)
LLAMA3 = ToolDialect("llama3", '{"name"', True, None, "parameters", False,
                     noise=("<|python_tag|>",))


@dataclass(frozen=True)
class ToolSupport:
    """What a loaded model's template does with tools: ``native`` templates get ``tools`` and
    tool turns as Hugging Face templates expect; the others get our prompt and rewritten turns."""

    dialect: ToolDialect
    native: bool


def detect(template_source: str) -> ToolSupport:
    if "tools" in template_source:
        if "<tool_call>" in template_source:
            return ToolSupport(HERMES, True)
        if "[TOOL_CALLS]" in template_source:
            return ToolSupport(MISTRAL, True)
        if "<|python_tag|>" in template_source or "ipython" in template_source:
            return ToolSupport(LLAMA3, True)
    return ToolSupport(HERMES_LIST, False)


def tools_json(tools: tuple[ToolSpec, ...]) -> list[dict[str, object]]:
    """Tools in OpenAI's request shape, which is what tool-aware templates iterate over."""
    out: list[dict[str, object]] = []
    for tool in tools:
        function: dict[str, object] = {"name": tool.name, "parameters": dict(tool.parameters)}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


def instructions(use: ToolUse, dialect: ToolDialect) -> str:
    """The system text that teaches a template without tool support how to call tools.
    Small instruction-tuned models (SmolLM2) saw tool calls framed much like this."""
    listing = json.dumps(tools_json(use.tools), ensure_ascii=False)
    example = dialect.block((ToolCall("", "function_name", '{"argument": "value"}'),))
    named = use.named()
    if named is not None:
        rule = f"You must call the function {named.name}."
    elif use.choice == "required":
        rule = "You must call at least one of the functions."
    else:
        rule = ("If none of the functions fits the question, do not call any: answer in plain "
                "text instead.")
    several = " Call several functions if the question needs them." if not use.single else ""
    return (f"You are an expert at calling functions. You get a question and a set of "
            f"functions; decide which function calls answer it.{several} {rule}\n\n"
            f"The functions you can call:\n<tools>{listing}</tools>\n\n"
            f"To call functions, reply with nothing but this format, with arguments of the "
            f"right types:\n{example}\nFunction results come back inside "
            "<tool_response></tool_response>.")


def rewrite_for_prompt(messages: tuple[ChatMessage, ...], use: ToolUse | None,
                       dialect: ToolDialect) -> tuple[ChatMessage, ...]:
    """The conversation in plain system/user/assistant turns any template renders: tool
    instructions in the system turn, calls as text in the dialect, results as user turns
    (consecutive results share one turn). Linear in the conversation's size."""
    out: list[ChatMessage] = []
    results: list[str] = []  # consecutive tool results, joined into one user turn at its end

    def end_results() -> None:
        if results:
            out.append(ChatMessage("user", "\n".join(results)))
            results.clear()

    for message in messages:
        if message.role == "tool":
            response = json.dumps({"name": message.name, "content": message.content},
                                  ensure_ascii=False) if message.name else message.content
            results.append(f"<tool_response>\n{response}\n</tool_response>")
            continue
        end_results()
        if message.tool_calls:
            text = "\n".join(part for part in (message.content, dialect.block(message.tool_calls))
                             if part)
            out.append(ChatMessage("assistant", text))
        else:
            out.append(message)
    end_results()
    if use is not None and use.choice != "none":
        text = instructions(use, dialect)
        if out and out[0].role == "system":
            out[0] = replace(out[0], content=f"{out[0].content}\n\n{text}")
        else:
            out.insert(0, ChatMessage("system", text))
    return tuple(out)
