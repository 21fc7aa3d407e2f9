"""A reasoning model on the real engine: SmolLM2 as the think family (``smollm2-135m-think``,
its template opening ``<think>`` in the generation prompt, budgets low 8 / medium 24 /
high 64), through the official SDK.

The counting rule these tests hold the engine to: ``reasoning_tokens`` counts the tokens the
model sampled while thinking; at a budget it is exactly the budget. The close the engine then
writes itself (``"\\n</think>\\n\\n"``, tokenized) counts as completion tokens, not reasoning
tokens; the answer's sampled tokens are the rest (each reports a logprob; reasoning tokens and
the engine's close report none). So completion_tokens = reasoning + close + answer tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai.types.chat import ChatCompletion

from appliance.engines.llm.model import LoadedModel
from devtools.server_harness import SMOLLM2
from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
THINK = "smollm2-135m-think"
BUDGETS = {"low": 8, "medium": 24, "high": 64}
PET = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
       "properties": {"name": {"type": "string", "maxLength": 30}, "age": {"type": "integer"}}}
WEATHER = {"type": "object", "additionalProperties": False, "required": ["city"],
           "properties": {"city": {"type": "string", "maxLength": 40}}}
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER}}]
ASK_PET = [{"role": "user", "content": "Invent a pet and describe it as JSON."}]


@pytest.fixture(scope="module")
def close_tokens() -> int:
    """Tokens of the close the engine writes at a budget, in SmolLM2's vocabulary."""
    model = LoadedModel(SMOLLM2, 0, vocab_only=True)
    try:
        return len(model.tokenize("\n</think>\n\n", add_bos=False))
    finally:
        model.close()


def reasoning_of(completion: ChatCompletion) -> str:
    extra = completion.choices[0].message.model_extra or {}
    return str(extra.get("reasoning_content") or "")


def reasoning_tokens(completion: ChatCompletion) -> int:
    assert completion.usage is not None
    details = completion.usage.completion_tokens_details
    return details.reasoning_tokens or 0 if details is not None else 0


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("effort", ["low", "medium"])
def test_the_engine_closes_the_thinking_at_the_budget_and_a_schema_answer_follows(
        real_server: RealServer, close_tokens: int, effort: str) -> None:
    for seed in range(3):
        completion = real_server.sdk.chat.completions.create(
            model=THINK, messages=ASK_PET, max_tokens=200, temperature=1.0, seed=seed,
            reasoning_effort=effort,
            logprobs=True,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "pet", "schema": PET, "strict": True}})
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        budget = BUDGETS[effort]
        assert reasoning_tokens(completion) == budget
        reasoning = reasoning_of(completion)
        assert reasoning.strip()
        # The grammar held the answer, not the thinking: the reasoning is free text.
        assert not is_json(reasoning)
        jsonschema.validate(json.loads(choice.message.content or ""), PET)
        assert "</think>" not in (choice.message.content or "")
        assert choice.logprobs is not None and choice.logprobs.content
        assert completion.usage is not None
        assert completion.usage.completion_tokens == \
            budget + close_tokens + len(choice.logprobs.content)


def test_tool_choice_required_gives_a_valid_call_after_thinking(
        real_server: RealServer) -> None:
    for seed in range(3):
        completion = real_server.sdk.chat.completions.create(
            model=THINK, max_tokens=200, temperature=1.0, seed=seed, reasoning_effort="low",
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=TOOLS, tool_choice="required")
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert reasoning_tokens(completion) == BUDGETS["low"]
        assert reasoning_of(completion).strip()
        calls = choice.message.tool_calls or []
        assert calls
        for call in calls:
            assert call.type == "function" and call.function.name == "get_weather"
            jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_effort_none_gives_no_reasoning(real_server: RealServer) -> None:
    completion = real_server.sdk.chat.completions.create(
        model=THINK, messages=ASK_PET, max_tokens=40, temperature=0.0, reasoning_effort="none")
    assert reasoning_of(completion) == ""
    assert reasoning_tokens(completion) == 0
    assert (completion.choices[0].message.content or "").strip()


def test_stop_strings_end_the_answer_never_the_reasoning(real_server: RealServer) -> None:
    completion = real_server.sdk.chat.completions.create(
        model=THINK, messages=ASK_PET, max_tokens=120, temperature=0.0,
        reasoning_effort="medium", stop=["e"])
    reasoning = reasoning_of(completion)
    assert reasoning_tokens(completion) == BUDGETS["medium"]
    assert "e" in reasoning  # the stop string was written while thinking, and went on
    assert "e" not in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop"


def test_without_effort_there_is_no_budget(real_server: RealServer) -> None:
    """No effort: the model thinks as long as it likes (max_tokens alone bounds it); SmolLM2
    never closes the block itself, so a reply owing nothing ends inside it, all reasoning."""
    completion = real_server.sdk.chat.completions.create(
        model=THINK, messages=ASK_PET, max_tokens=120, temperature=0.0)
    assert completion.usage is not None
    assert reasoning_tokens(completion) == completion.usage.completion_tokens
    assert reasoning_tokens(completion) > BUDGETS["high"]
    assert not (completion.choices[0].message.content or "")


def test_an_end_of_generation_while_thinking_with_an_answer_owed_closes_the_block(
        real_server: RealServer, close_tokens: int) -> None:
    completion = real_server.sdk.chat.completions.create(
        model=THINK, messages=ASK_PET, max_tokens=400, temperature=0.0, logprobs=True,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "pet", "schema": PET, "strict": True}})
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), PET)
    thought = reasoning_tokens(completion)
    assert thought > BUDGETS["high"]  # no effort, no budget: the model ended it
    assert completion.usage is not None and choice.logprobs is not None
    assert completion.usage.completion_tokens == \
        thought + close_tokens + len(choice.logprobs.content or [])


def test_streamed_reasoning_comes_before_the_answer(real_server: RealServer) -> None:
    stream = real_server.sdk.chat.completions.create(
        model=THINK, messages=ASK_PET, max_tokens=200, temperature=0.0, stream=True,
        reasoning_effort="low", response_format={"type": "json_object"},
        stream_options={"include_usage": True})
    order: list[str] = []
    reasoning, content = "", ""
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                order.append("reasoning")
                reasoning += extra["reasoning_content"]
            if choice.delta.content:
                order.append("content")
                content += choice.delta.content
    assert order and order[0] == "reasoning" and "content" in order
    assert order == sorted(order, key=lambda kind: kind == "content")
    assert isinstance(json.loads(content), dict)
    assert not is_json(reasoning)
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == BUDGETS["low"]


def test_check_config_says_what_was_detected(tmp_path: Path) -> None:
    config = tmp_path / "models.toml"
    config.write_text(f"""
[[models]]
id = "plain"
path = "{SMOLLM2}"

[[models]]
id = "thinks"
path = "{SMOLLM2}"
reasoning_budget = {{ low = 16 }}
chat_template = "{{% for m in messages %}}{{{{ m.content }}}}{{% endfor %}}<think>\\n"
""", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "appliance.cli", "check-config", "--config",
                           str(config)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    plain = lines.index(next(line for line in lines if line.startswith("plain:")))
    assert lines[plain + 1].strip() == "no reasoning"
    thinks = lines.index(next(line for line in lines if line.startswith("thinks:")))
    assert lines[thinks + 1].strip().startswith(
        "reasoning: think (<think>...</think>; the generation prompt opens the block; "
        "budgets low 16, medium 2048, high 4096)")
