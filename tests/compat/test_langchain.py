"""LangChain's ChatOpenAI against the appliance: invoke, stream, bind_tools, structured output."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]


class Weather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="the city", max_length=30)


@pytest.fixture(params=["gpt-4o-mini", "gemma-3-270m"])
def model_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def chat(server: RealServer, model: str, **kwargs: object) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=server.base_url, api_key=server.key,
                      max_retries=0, **kwargs)  # type: ignore[arg-type]


def test_invoke_and_stream(real_server: RealServer, model_name: str) -> None:
    model = chat(real_server, model_name, temperature=0, max_tokens=8)
    answer = model.invoke("What is the capital of France?")
    assert isinstance(answer.content, str) and answer.content
    assert answer.usage_metadata is not None and answer.usage_metadata["output_tokens"] > 0
    streamed = "".join(str(chunk.content) for chunk in model.stream(
        "What is the capital of France?"))
    assert streamed == answer.content


def test_bind_tools_with_forced_choice(real_server: RealServer, model_name: str) -> None:
    llm = chat(real_server, model_name, max_tokens=100)
    model = llm.bind_tools([Weather], tool_choice="Weather")
    message = model.invoke("Weather in Rome?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "Weather"
    assert isinstance(message.tool_calls[0]["args"]["city"], str)
    # One call: at the default temperature a tiny model may otherwise keep calling until
    # max_tokens cuts the last call.
    required = llm.bind_tools([Weather], tool_choice="any", parallel_tool_calls=False)
    chunks = list(required.stream("Weather in Rome?"))
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk
    assert merged.tool_calls and merged.tool_calls[0]["name"] == "Weather"  # type: ignore[attr-defined]


def test_with_structured_output(real_server: RealServer, model_name: str) -> None:
    for method in ("json_schema", "function_calling"):
        llm = chat(real_server, model_name, max_tokens=100)
        model = llm.with_structured_output(Weather, method=method)
        result = model.invoke("Weather in Rome?")
        assert isinstance(result, Weather), method
