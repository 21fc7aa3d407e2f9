"""The official Python SDK, sync and async, unchanged but for base_url and api_key."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]
# SmolLM2 by an alias from models.toml, as existing code would send it; Gemma by its id.
MODELS = ["gpt-4o-mini", "gemma-3-270m"]
ASK: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER: Any = {"type": "function", "function": {
    "name": "get_weather", "strict": True,
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 30}}}}}


class Forecast(BaseModel):
    city: str
    sunny: bool


@pytest.mark.parametrize("model", MODELS)
def test_sync_client_end_to_end(real_server: RealServer, model: str) -> None:
    client = openai.OpenAI(base_url=real_server.base_url, api_key=real_server.key)
    with client:
        assert model in [m.id for m in client.models.list()]  # aliases are listed too
        plain = client.chat.completions.create(model=model, messages=ASK, max_tokens=8,
                                               temperature=0)
        chunks = list(client.chat.completions.create(model=model, messages=ASK, max_tokens=8,
                                                     temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == plain.choices[0].message.content
        parsed = client.chat.completions.parse(model=model, messages=ASK, max_tokens=100,
                                               response_format=Forecast, temperature=0)
        assert isinstance(parsed.choices[0].message.parsed, Forecast)
        # Greedy: Forecast.city has no maxLength, and a sampled tiny model may write a city
        # name until max_tokens cuts it.
        called = client.chat.completions.parse(model=model, messages=ASK, max_tokens=100,
                                               tools=[openai.pydantic_function_tool(Forecast)],
                                               tool_choice="required", temperature=0,
                                               parallel_tool_calls=False)
        call = (called.choices[0].message.tool_calls or [])[0]
        assert isinstance(call.function.parsed_arguments, Forecast)
        vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 576
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=ASK)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER],
                                           tool_choice={"type": "function",
                                                        "function": {"name": "other"}})
        assert caught.value.param == "tool_choice"


@pytest.mark.parametrize("model", MODELS)
async def test_async_client_streams_tool_calls(real_server: RealServer, model: str) -> None:
    async with openai.AsyncOpenAI(base_url=real_server.base_url,
                                  api_key=real_server.key) as client:
        async with client.chat.completions.stream(model=model, messages=ASK, tools=[WEATHER],
                                                  tool_choice="required",
                                                  parallel_tool_calls=False,
                                                  max_tokens=100) as stream:
            done = [event async for event in stream
                    if event.type == "tool_calls.function.arguments.done"]
            final = await stream.get_final_completion()
        assert done and done[0].name == "get_weather"
        call = (final.choices[0].message.tool_calls or [])[0]
        assert json.loads(call.function.arguments) == call.function.parsed_arguments
    async with openai.AsyncOpenAI(base_url=real_server.base_url, api_key="sk-wrong",
                                  max_retries=0) as stranger:
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


pytestmark.append(pytest.mark.anyio)
