"""LangChain's ChatOpenAI on the Responses API (use_responses_api=True), real server and models.

A bind_tools round trip (the forced call, then the ToolMessage fed back, stateless and through
previous_response_id) and with_structured_output both ways LangChain offers it. What is
asserted is the protocol; the tiny models' words are not judged.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]
ASK = "Weather in Rome?"


class Weather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="the city", max_length=30)


@pytest.fixture(params=["gpt-4o-mini", "gemma-3-270m"])
def model_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def chat(server: RealServer, model: str, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=server.base_url, api_key=server.key,  # type: ignore[arg-type]
                      max_retries=0, use_responses_api=True, temperature=0, max_tokens=100,
                      **kwargs)


def answer_to(call: AIMessage) -> ToolMessage:
    [tool_call] = call.tool_calls
    return ToolMessage(content='{"forecast": "sunny"}', tool_call_id=tool_call["id"])


def assert_called_weather(message: BaseMessage) -> None:
    assert isinstance(message, AIMessage)  # chunks merge into an AIMessageChunk, one too
    [tool_call] = message.tool_calls
    assert tool_call["name"] == "Weather" and tool_call["id"]
    Weather.model_validate(tool_call["args"])
    # The Responses API's own ids travel in the message, as LangChain keeps them.
    assert str(message.response_metadata.get("id", "")).startswith("resp_")


def assert_answered(message: BaseMessage) -> None:
    assert isinstance(message, AIMessage) and not message.tool_calls
    assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0


def test_bind_tools_round_trip(real_server: RealServer, model_name: str) -> None:
    llm = chat(real_server, model_name)
    forced = llm.bind_tools([Weather], tool_choice="Weather", parallel_tool_calls=False)
    question = HumanMessage(ASK)
    call = forced.invoke([question])
    assert_called_weather(call)
    # Stateless: the whole exchange goes back, the function call item included.
    answering = llm.bind_tools([Weather], tool_choice="none")
    assert_answered(answering.invoke([question, call, answer_to(call)]))
    # Streamed, with the call merged from its chunks.
    chunks = list(llm.bind_tools([Weather], tool_choice="any", parallel_tool_calls=False)
                  .stream([question]))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert_called_weather(merged)


def test_previous_response_id_round_trip(real_server: RealServer, model_name: str) -> None:
    # LangChain then sends only the messages after the last AI message, and the response id.
    llm = chat(real_server, model_name, use_previous_response_id=True)
    question = HumanMessage(ASK)
    call = llm.bind_tools([Weather], tool_choice="Weather").invoke([question])
    assert_called_weather(call)
    answering = llm.bind_tools([Weather], tool_choice="none")
    chained = answering.invoke([question, call, answer_to(call)])
    assert_answered(chained)
    stored = real_server.sdk.responses.retrieve(chained.response_metadata["id"])
    assert stored.previous_response_id == call.response_metadata["id"]
    # The server replayed the stored call: the prompt is longer than the question alone by
    # the call and its output, though LangChain sent only the output (the SDK tests compare
    # with the stateless prompt exactly).
    alone = answering.invoke([question])
    assert isinstance(chained, AIMessage) and isinstance(alone, AIMessage)
    assert isinstance(call, AIMessage)
    assert chained.usage_metadata and alone.usage_metadata and call.usage_metadata
    assert chained.usage_metadata["input_tokens"] > (alone.usage_metadata["input_tokens"]
                                                     + call.usage_metadata["output_tokens"])


def test_with_structured_output(real_server: RealServer, model_name: str) -> None:
    for method in ("json_schema", "function_calling"):
        model = chat(real_server, model_name).with_structured_output(Weather, method=method)
        result = model.invoke(ASK)
        assert isinstance(result, Weather), method
    raw = chat(real_server, model_name).with_structured_output(
        Weather, method="json_schema", include_raw=True).invoke(ASK)
    assert isinstance(raw, dict) and raw["parsing_error"] is None
    assert isinstance(raw["parsed"], Weather)
    assert str(raw["raw"].response_metadata.get("id", "")).startswith("resp_")
