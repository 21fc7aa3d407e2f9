"""A reasoning model through the official clients on the real session server: the Python SDK,
LangChain's ChatOpenAI and the npm SDK (tests/compat/node/reasoning.mjs), against
``smollm2-135m-think`` (alias o4-mini, tests/real/session_server.py: its template opens
``<think>`` in the generation prompt; thinking budgets low 8, medium 24, high 64 tokens).

Reasoning arrives apart from the content, streamed and not; effort none yields none; effort low
ends the thinking at its budget (reasoning_tokens is the budget: the engine's forced close is
not counted as reasoning); a json_schema answer after reasoning parses. Replies are
greedy (temperature 0), so a stream and a plain reply of the same request agree.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI

from tests.openapi_contract import validate
from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]
MODEL = "o4-mini"  # smollm2-135m-think
# SmolLM2 thinks on about this past the low budget (8 tokens), so the engine closes the thinking
# and an answer follows; asked something short it ends inside the block, with no answer.
ASK = [{"role": "user", "content": "Tell me about the sea in a few sentences."}]
BUDGETS = {"low": 8, "medium": 24, "high": 64}  # its models.toml reasoning_budget
# Room for the low budget, the engine's closing tag and an answer after it.
ROOM = 96
CITY = {"type": "object", "required": ["city"], "additionalProperties": False,
        "properties": {"city": {"type": "string", "maxLength": 30}}}
TAGS = ("<think>", "</think>")


def extras(model: Any) -> dict[str, Any]:
    """What the SDK kept of the fields its types do not know."""
    return dict(model.model_extra or {})


def reasoning_tokens(usage: Any) -> int:
    assert usage is not None and usage.completion_tokens_details is not None
    tokens: int = usage.completion_tokens_details.reasoning_tokens or 0
    return tokens


def free_of_tags(text: str | None) -> bool:
    return not any(tag in (text or "") for tag in TAGS)


# --- the Python SDK ---------------------------------------------------------------------------


def test_plain_reply_keeps_reasoning_apart(real_server: RealServer) -> None:
    raw = real_server.sdk.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, max_tokens=ROOM, temperature=0,  # type: ignore[arg-type]
        reasoning_effort="low")
    validate(json.loads(raw.content), "CreateChatCompletionResponse")
    completion = raw.parse()
    message = completion.choices[0].message
    thought = extras(message)["reasoning_content"]
    assert thought and extras(message)["reasoning"] == thought
    assert message.content and free_of_tags(message.content) and free_of_tags(thought)
    tokens = reasoning_tokens(completion.usage)
    assert tokens == BUDGETS["low"]
    assert completion.usage is not None and completion.usage.completion_tokens > tokens


def test_stream_sends_reasoning_before_content(real_server: RealServer) -> None:
    asked: dict[str, Any] = {"model": MODEL, "messages": ASK, "max_tokens": ROOM,
                             "temperature": 0, "reasoning_effort": "low"}
    plain = real_server.sdk.chat.completions.create(**asked).choices[0].message
    stream = real_server.sdk.chat.completions.create(
        **asked, stream=True, stream_options={"include_usage": True})
    kinds: list[str] = []
    reasoning, content, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            delta = choice.delta
            piece = extras(delta).get("reasoning_content")
            if piece:
                assert extras(delta)["reasoning"] == piece
                reasoning.append(piece)
                kinds.append("reasoning")
            if delta.content:
                content.append(delta.content)
                kinds.append("content")
    assert kinds and kinds[0] == "reasoning" and "content" in kinds
    assert kinds == sorted(kinds, key=lambda kind: kind != "reasoning")
    assert "".join(reasoning) == extras(plain)["reasoning_content"]
    assert "".join(content) == plain.content
    assert reasoning_tokens(usage) > 0


@pytest.mark.parametrize("effort", ["none", "minimal"])
def test_effort_none_yields_no_reasoning(real_server: RealServer, effort: str) -> None:
    completion = real_server.sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=32, temperature=0,  # type: ignore[arg-type]
        reasoning_effort=effort)
    message = completion.choices[0].message
    assert "reasoning_content" not in extras(message)
    assert "reasoning" not in extras(message)
    assert message.content and free_of_tags(message.content)
    assert reasoning_tokens(completion.usage) == 0


def test_enable_thinking_false_yields_no_reasoning(real_server: RealServer) -> None:
    completion = real_server.sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=32, temperature=0,  # type: ignore[arg-type]
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert "reasoning_content" not in extras(completion.choices[0].message)
    assert reasoning_tokens(completion.usage) == 0


def test_effort_low_ends_thinking_at_its_budget(real_server: RealServer) -> None:
    completion = real_server.sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=ROOM, temperature=0,  # type: ignore[arg-type]
        reasoning_effort="low")
    # SmolLM2 does not close a <think> it did not learn: the engine closes it at the budget.
    assert reasoning_tokens(completion.usage) == BUDGETS["low"]
    message = completion.choices[0].message
    assert extras(message)["reasoning_content"] and message.content


def test_a_json_schema_answer_after_reasoning_parses(real_server: RealServer) -> None:
    completion = real_server.sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Which city is the capital of "
                                "France? Answer in JSON."}],
        max_tokens=ROOM, temperature=0, reasoning_effort="low",
        response_format={"type": "json_schema", "json_schema": {
            "name": "city", "strict": True, "schema": CITY}})
    message = completion.choices[0].message
    assert extras(message)["reasoning_content"]
    assert completion.choices[0].finish_reason == "stop"
    assert message.content is not None
    jsonschema.validate(json.loads(message.content), CITY)


def test_reasoning_given_back_is_taken(real_server: RealServer) -> None:
    first = real_server.sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=ROOM, temperature=0,  # type: ignore[arg-type]
        reasoning_effort="low")
    echoed = first.choices[0].message.model_dump(exclude_none=True)
    assert echoed["reasoning_content"]
    again = real_server.sdk.chat.completions.create(
        model=MODEL, messages=[*ASK, echoed, {"role": "user", "content": "And of Italy?"}],
        max_tokens=ROOM, temperature=0, reasoning_effort="low")  # type: ignore[list-item]
    assert again.choices[0].message.content


def test_effort_on_a_model_that_does_not_reason_is_refused(real_server: RealServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        real_server.sdk.chat.completions.create(model="smollm2-135m-instruct", messages=ASK,
                                                max_tokens=4, reasoning_effort="low")
    body = caught.value.body
    assert isinstance(body, dict)
    assert (body["param"], body["code"]) == ("reasoning_effort", "unsupported_parameter")


def test_models_say_which_reason(real_server: RealServer) -> None:
    listed = {m.id: extras(m) for m in real_server.sdk.models.list().data}
    assert listed["smollm2-135m-think"]["reasoning"] == "think"
    assert listed[MODEL]["reasoning"] == "think"
    assert "reasoning" not in listed["smollm2-135m-instruct"]


# --- LangChain --------------------------------------------------------------------------------


def langchain(server: RealServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=server.base_url, api_key=server.key,  # type: ignore[arg-type]
                      max_retries=0, temperature=0, max_tokens=ROOM, **kwargs)


def test_langchain_answers_without_the_reasoning_and_counts_it(
        real_server: RealServer) -> None:
    """ChatOpenAI reads neither reasoning field (its docstring: provider fields are not
    extracted): the answer is the content alone, the reasoning is dropped, and its tokens are
    counted in usage_metadata."""
    plain = real_server.sdk.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=ROOM, temperature=0,  # type: ignore[arg-type]
        reasoning_effort="low")
    model = langchain(real_server, reasoning_effort="low")
    answer = model.invoke(ASK[0]["content"])
    assert answer.content == plain.choices[0].message.content
    assert free_of_tags(str(answer.content))
    assert "reasoning_content" not in answer.additional_kwargs
    assert "reasoning" not in answer.additional_kwargs
    assert answer.usage_metadata is not None
    details = answer.usage_metadata.get("output_token_details") or {}
    assert details.get("reasoning") == reasoning_tokens(plain.usage) > 0
    chunks = list(model.stream(ASK[0]["content"], stream_usage=True))
    assert "".join(str(chunk.content) for chunk in chunks) == answer.content
    assert all("reasoning_content" not in chunk.additional_kwargs for chunk in chunks)


def test_langchain_effort_none_and_structured_output(real_server: RealServer) -> None:
    quiet = langchain(real_server, reasoning_effort="none").invoke(ASK[0]["content"])
    assert quiet.usage_metadata is not None
    assert (quiet.usage_metadata.get("output_token_details") or {}).get("reasoning", 0) == 0
    structured = langchain(real_server, reasoning_effort="low").with_structured_output(
        {"title": "city", "description": "A city.", **CITY}, method="json_schema", strict=True)
    answer = structured.invoke("Which city is the capital of France? Answer in JSON.")
    assert isinstance(answer, dict)
    jsonschema.validate(answer, CITY)


# --- the npm SDK ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_observed(real_server: RealServer, node_client: Path) -> dict[str, Any]:
    env = {**os.environ, "APPLIANCE_BASE_URL": real_server.base_url,
           "APPLIANCE_KEY": real_server.key, "APPLIANCE_MODEL": MODEL}
    run = subprocess.run(["node", str(node_client.parent / "reasoning.mjs")], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    observed: dict[str, Any] = json.loads(run.stdout)
    return observed


def test_node_plain_and_stream_keep_reasoning_apart(node_observed: dict[str, Any]) -> None:
    plain, stream = node_observed["plain"], node_observed["stream"]
    assert plain["reasoning_content"] and plain["reasoning"] == plain["reasoning_content"]
    assert plain["content"] and free_of_tags(plain["content"])
    assert plain["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    assert stream["reasoning"] == plain["reasoning_content"]
    assert stream["content"] == plain["content"]
    assert stream["order"][0] == "reasoning" and "content" in stream["order"]
    assert stream["order"] == sorted(stream["order"], key=lambda kind: kind != "reasoning")
    assert stream["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


def test_node_effort_none_and_json_after_reasoning(node_observed: dict[str, Any]) -> None:
    none = node_observed["none"]
    assert none["reasoning_content"] is None and none["content"]
    assert none["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    low = node_observed["low"]
    assert low["usage"]["completion_tokens_details"]["reasoning_tokens"] == BUDGETS["low"]
    structured = node_observed["structured"]
    assert structured["reasoning_content"] and structured["finish"] == "stop"
    jsonschema.validate(json.loads(structured["content"]), CITY)
