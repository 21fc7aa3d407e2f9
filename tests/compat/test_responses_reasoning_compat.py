"""The official Python SDK's Responses API on the real think model (``o4-mini``: SmolLM2 with
a template that opens ``<think>`` and a small thinking budget, tests/real/session_server.py).

What is asserted is the protocol: reasoning arrives as a ``reasoning`` item with its
``reasoning_text`` before the answer, plain and streamed (the SDK's stream helper assembles
the same items), ``effort: none`` makes none, and a client that stores nothing hands the
reasoning back through ``encrypted_content`` on its next turn (as Codex does). Raw bodies
and events are validated against OpenAI's spec (tests/openapi_contract.py).
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.openapi_contract import validate
from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]
THINK_MODEL = "o4-mini"
ASK = "What is two plus two?"
# Room for the think model's budget and an answer after it.
ROOM = 96


def created(client: openai.OpenAI, **request: Any) -> Any:
    """A greedy response of the think model; effort low (a budget of 8 tokens) unless the
    request says otherwise, so an answer follows the reasoning within ROOM."""
    request = {"model": THINK_MODEL, "temperature": 0, "max_output_tokens": ROOM,
               "reasoning": {"effort": "low"}, **request}
    raw = client.responses.with_raw_response.create(**request)
    validate(raw.http_response.json(), "Response")
    return raw.parse()


def reasoning_items(response: Any) -> list[Any]:
    return [item for item in response.output if item.type == "reasoning"]


def test_reasoning_arrives_apart_from_the_answer(real_server: RealServer) -> None:
    response = created(real_server.sdk, input=ASK, reasoning={"effort": "low",
                                                              "summary": "auto"})
    [reasoning] = reasoning_items(response)
    assert response.output[0] is reasoning  # before the message or calls
    assert reasoning.summary == []  # no summary is made, whatever was asked
    assert reasoning.content and reasoning.content[0].type == "reasoning_text"
    thought = reasoning.content[0].text
    assert thought and "<think>" not in thought and "</think>" not in thought
    assert response.output_text and thought not in response.output_text  # an answer follows
    assert "<think>" not in response.output_text
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens > 0
    assert response.reasoning is not None and response.reasoning.effort == "low"


def test_effort_none_makes_no_reasoning(real_server: RealServer) -> None:
    response = created(real_server.sdk, input=ASK, reasoning={"effort": "none"})
    assert reasoning_items(response) == []
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_the_stream_carries_the_reasoning_the_plain_answer_has(
        real_server: RealServer) -> None:
    client = real_server.sdk
    plain = created(client, input=ASK)
    with client.responses.stream(model=THINK_MODEL, input=ASK, temperature=0,
                                 max_output_tokens=ROOM, reasoning={"effort": "low"}) as stream:
        deltas = [event.delta for event in stream
                  if event.type == "response.reasoning_text.delta"]
        streamed = stream.get_final_response()
    raw = client.responses.create(model=THINK_MODEL, input=ASK, temperature=0,
                                  max_output_tokens=ROOM, reasoning={"effort": "low"},
                                  stream=True)
    kinds = []
    for event in raw:  # each as it came (the helper above adds fields of its own)
        validate(event.model_dump(mode="json", exclude_unset=True), "ResponseStreamEvent")
        kinds.append(event.type)
    thought_done = kinds.index("response.reasoning_text.done")  # the reasoning comes first
    assert all(at > thought_done for at, kind in enumerate(kinds)
               if kind == "response.output_text.delta")
    [reasoning] = reasoning_items(streamed)
    assert reasoning.content is not None
    assert "".join(deltas) == reasoning.content[0].text
    assert reasoning.content[0].text == reasoning_items(plain)[0].content[0].text  # greedy
    assert streamed.output_text == plain.output_text


def test_a_stateless_second_turn_hands_the_reasoning_back(real_server: RealServer) -> None:
    client = real_server.sdk
    first = created(client, input=ASK, store=False, include=["reasoning.encrypted_content"])
    [reasoning] = reasoning_items(first)
    assert reasoning.encrypted_content
    assert reasoning.content is not None
    assert reasoning.content[0].text not in reasoning.encrypted_content
    # What Codex sends back: every output item, the reasoning as its sealed token alone.
    given_back = [{"type": "reasoning", "id": reasoning.id, "summary": [],
                   "encrypted_content": reasoning.encrypted_content},
                  *[item.model_dump(mode="json", exclude_none=True)
                    for item in first.output if item.type != "reasoning"]]
    second = created(client, store=False, include=["reasoning.encrypted_content"],
                     input=[{"role": "user", "content": ASK}, *given_back,
                            {"role": "user", "content": "And three plus three?"}])
    assert second.status in ("completed", "incomplete")
    assert reasoning_items(second) and reasoning_items(second)[0].encrypted_content
    # The sealed reasoning counts among the prompt, as reasoning text sent in the clear does.
    clear = client.responses.input_tokens.count(
        model=THINK_MODEL, input=[{"role": "user", "content": ASK},
                                  {"type": "reasoning", "summary": [],
                                   "content": [{"type": "reasoning_text",
                                                "text": reasoning.content[0].text}]},
                                  *given_back[1:],
                                  {"role": "user", "content": "And three plus three?"}])
    sealed = client.responses.input_tokens.count(
        model=THINK_MODEL, input=[{"role": "user", "content": ASK}, *given_back,
                                  {"role": "user", "content": "And three plus three?"}])
    assert sealed.input_tokens == clear.input_tokens


def test_a_changed_token_is_refused_by_name(real_server: RealServer) -> None:
    client = real_server.sdk
    first = created(client, input=ASK, store=False, include=["reasoning.encrypted_content"])
    token = reasoning_items(first)[0].encrypted_content
    changed = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=THINK_MODEL, max_output_tokens=ROOM, temperature=0, input=[
            {"role": "user", "content": ASK},
            {"type": "reasoning", "summary": [], "encrypted_content": changed},
            {"role": "assistant", "content": "Four."},
            {"role": "user", "content": "And three plus three?"}])
    error = json.loads(refused.value.response.text)["error"]
    assert error["param"] == "input[1].encrypted_content"
