"""LiteLLM's OpenAI provider (``openai/<model>`` with ``api_base`` and ``api_key``) on the real
server: chat, streamed with usage, tools, a Pydantic ``response_format``, embeddings, the
Responses API, speech and transcription, images, and LiteLLM's own exception classes.

LiteLLM matters beyond its SDK: it is the proxy and router in front of many teams' models,
and it picks a fallback by the class it maps an error to (a context-window error goes to a
larger model, a 404 is not retried), so those classes are asserted here, not only success.

``LITELLM_LOCAL_MODEL_COST_MAP`` keeps LiteLLM from fetching its price list from GitHub at
import, as an offline appliance's users must (README, "Client libraries").
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, Field

from tests.real.conftest import RealServer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
import litellm  # (after the variable above: LiteLLM reads it at import)

pytestmark = [
    pytest.mark.real, pytest.mark.compat, pytest.mark.anyio,
    # Warnings of LiteLLM's own code, whatever the server sends: its Responses-API usage type
    # warns when it re-serializes the usage, pydantic warns of a TypedDict of its and of its
    # streaming code's use of a deprecated attribute.
    pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning"),
    pytest.mark.filterwarnings("ignore:Item.* on TypedDict class .* `ReadOnly` qualifier"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
]
ASK = [{"role": "user", "content": "What is the capital of France?"}]
SENTENCE = "The quick brown fox jumps over the lazy dog."


class City(BaseModel):
    city: str = Field(max_length=30)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def thread_event_loop() -> Iterator[None]:
    """An event loop for the thread, closed after the test. LiteLLM's sync calls take the
    thread's loop (asyncio.get_event_loop()) and, finding none, make one they never close:
    the next async test replaced it, and its collection failed that test on a ResourceWarning.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def reach(real_server: RealServer) -> dict[str, Any]:
    """What every LiteLLM call takes to reach the appliance instead of OpenAI."""
    return {"api_base": real_server.base_url, "api_key": real_server.key, "num_retries": 0}


@pytest.mark.parametrize("model", ["openai/gpt-4o-mini", "openai/gemma-3-270m"])
def test_completion_and_its_stream_agree(reach: dict[str, Any], model: str) -> None:
    whole = litellm.completion(model=model, messages=ASK, max_tokens=10, temperature=0, **reach)
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(litellm.completion(model=model, messages=ASK, max_tokens=10, temperature=0,
                                     stream=True, stream_options={"include_usage": True},
                                     **reach))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_required_tool_call_and_pydantic_response_format(reach: dict[str, Any]) -> None:
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string", "maxLength": 30}}}}}
    called = litellm.completion(model="openai/gpt-4o-mini", messages=ASK, tools=[tool],
                                tool_choice="required", parallel_tool_calls=False,
                                max_tokens=60, **reach)
    assert called.choices[0].finish_reason == "tool_calls"
    (call,) = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    # LiteLLM turns a Pydantic class into a strict json_schema response_format.
    shaped = litellm.completion(model="openai/gpt-4o-mini", messages=ASK, response_format=City,
                                max_tokens=60, **reach)
    assert City.model_validate_json(shaped.choices[0].message.content)


async def test_async_completion_and_embeddings(reach: dict[str, Any]) -> None:
    answer = await litellm.acompletion(model="openai/gemma-3-270m", messages=ASK,
                                       max_tokens=5, **reach)
    assert answer.choices[0].message.content
    vectors = await litellm.aembedding(model="openai/text-embedding-3-small",
                                       input=["hello", "a longer second text"], **reach)
    assert [item["index"] for item in vectors.data] == [0, 1]
    width = len(vectors.data[0]["embedding"])
    assert width > 0 and len(vectors.data[1]["embedding"]) == width
    assert vectors.usage.prompt_tokens > 0


def test_responses_plain_and_streamed(reach: dict[str, Any]) -> None:
    whole = litellm.responses(model="openai/gpt-4o-mini", input="What is the capital of France?",
                              max_output_tokens=16, temperature=0, **reach)
    assert whole.id.startswith("resp_") and whole.status in ("completed", "incomplete")
    assert whole.output_text and whole.usage.output_tokens > 0
    events = list(litellm.responses(model="openai/gpt-4o-mini",
                                    input="What is the capital of France?",
                                    max_output_tokens=16, temperature=0, stream=True, **reach))
    kinds = [str(event.type.value if hasattr(event.type, "value") else event.type)
             for event in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed",
                                                           "response.incomplete")
    text = "".join(event.delta for event, kind in zip(events, kinds, strict=True)
                   if kind == "response.output_text.delta")
    assert text == whole.output_text


def test_speech_round_trips_through_transcription(reach: dict[str, Any]) -> None:
    spoken = litellm.speech(model="openai/tts-1", voice="alloy", input=SENTENCE,
                            response_format="wav", **reach)
    audio = spoken.content
    assert audio[:4] == b"RIFF"
    heard = litellm.transcription(model="openai/whisper-1", file=("speech.wav", audio),
                                  response_format="verbose_json", **reach)
    words = {word.strip(".,").lower() for word in heard.text.split()}
    assert {"quick", "brown", "fox", "lazy", "dog"} <= words, heard.text
    assert heard.duration > 1.0
    plain = litellm.transcription(model="openai/whisper-1", file=io.BytesIO(audio), **reach)
    assert plain.text == heard.text


def test_image_generation(reach: dict[str, Any], real_server: RealServer) -> None:
    made = litellm.image_generation(model="openai/dall-e-2", prompt="a red square",
                                    size="64x64", n=2, **reach)
    urls = [item.url for item in made.data]
    assert len(urls) == 2 and all(url.startswith(real_server.server.base_url) for url in urls)


def test_errors_map_to_litellms_classes(reach: dict[str, Any]) -> None:
    with pytest.raises(litellm.NotFoundError):
        litellm.completion(model="openai/no-such-model", messages=ASK, **reach)
    with pytest.raises(litellm.AuthenticationError):
        litellm.completion(model="openai/gpt-4o-mini", messages=ASK,
                           **{**reach, "api_key": "sk-not-a-key"})
    # A router falls back to a larger model on this class, and only on it.
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(model="openai/gpt-4o-mini", messages=ASK, max_tokens=10**6, **reach)
    with pytest.raises(litellm.BadRequestError) as refused:
        litellm.completion(model="openai/gpt-4o-mini", messages=ASK, temperature=7, **reach)
    assert "temperature" in str(refused.value)


def test_a_reasoning_models_effort_and_reasoning(reach: dict[str, Any]) -> None:
    """``o4-mini`` is SmolLM2 as a reasoning model: LiteLLM passes ``reasoning_effort`` on and
    reads the reasoning back as ``reasoning_content``; on Responses it is a reasoning item."""
    chat = litellm.completion(model="openai/o4-mini", messages=ASK, reasoning_effort="low",
                              max_completion_tokens=60, **reach)
    assert chat.choices[0].message.reasoning_content
    assert chat.usage.completion_tokens_details.reasoning_tokens > 0
    answer = litellm.responses(model="openai/o4-mini", input="What is 2 + 2?",
                               reasoning={"effort": "low"}, max_output_tokens=60, **reach)
    assert answer.output[0].type == "reasoning"
    assert answer.usage.output_tokens_details.reasoning_tokens > 0
