"""pydantic-ai's OpenAI models (Chat Completions and the Responses API) on the real server.

An ``Agent`` is built as a user builds one for OpenAI, with only ``base_url`` and ``api_key``
changed in its provider. What is asserted is the protocol each output mode rides on:

- text, run and streamed (``stream_options.include_usage`` on Chat, the events on Responses);
- a Pydantic ``output_type``: pydantic-ai's default is a ``final_result`` tool the model must
  call (``tool_choice: "required"``); ``NativeOutput`` is ``response_format`` json_schema,
  strict; both come back validated because the server constrains the draw by grammar;
- an output validator that refuses the first answer: pydantic-ai sends the refusal back as
  that call's result (a ``tool`` message on Chat, ``function_call_output`` on Responses), and
  the server must take that history and answer again;
- structured output streamed: partial objects, then the validated one.

The tiny models' answers are nonsense; their shape is what is checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field
from pydantic_ai import Agent, ModelRetry, NativeOutput
from pydantic_ai.messages import (
    ModelRequest,
    ModelResponse,
    ThinkingPart,
    ToolCallPart,
    ToolReturnPart,
)
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat, pytest.mark.anyio]
# Two chat models of different templates, each under both of pydantic-ai's OpenAI APIs.
MODELS = ["gpt-4o-mini", "gemma-3-270m"]
APIS = {"chat": OpenAIChatModel, "responses": OpenAIResponsesModel}
REFUSAL = "Answer again, with the city spelled in full."


class Weather(BaseModel):
    """The weather in a city."""

    city: str = Field(max_length=30)
    celsius: int


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=[(api, model) for api in APIS for model in MODELS],
                ids=lambda case: f"{case[0]}-{case[1]}")
async def model(request: pytest.FixtureRequest, real_server: RealServer) -> AsyncIterator[Any]:
    """The model as a user builds it, on a client this test closes (no stray sockets)."""
    api, name = request.param
    async with openai.AsyncOpenAI(base_url=real_server.base_url, api_key=real_server.key,
                                  max_retries=0) as client:
        yield APIS[api](name, provider=OpenAIProvider(openai_client=client))


async def test_text_run_matches_its_stream_and_counts_usage(model: Any) -> None:
    agent = Agent(model, model_settings={"temperature": 0, "max_tokens": 16})
    result = await agent.run("What is the capital of France?")
    assert isinstance(result.output, str) and result.output
    usage = result.usage
    assert usage.requests == 1 and usage.input_tokens > 0 and usage.output_tokens > 0

    async with agent.run_stream("What is the capital of France?") as run:
        text = "".join([delta async for delta in run.stream_text(delta=True)])
    assert text == result.output
    assert run.usage.output_tokens == usage.output_tokens


async def test_tool_output_and_native_strict_output_come_back_validated(model: Any) -> None:
    for output_type in (Weather, NativeOutput(Weather, strict=True)):
        agent = Agent(model, output_type=output_type, model_settings={"max_tokens": 100})
        result = await agent.run("What is the weather in Rome?")
        assert isinstance(result.output, Weather), output_type
        assert len(result.output.city) <= 30


async def test_a_refused_answer_is_sent_back_and_answered_again(model: Any) -> None:
    # One call a turn: two in one answer would be validated in the same turn.
    agent = Agent(model, output_type=Weather, retries=2,
                  model_settings={"max_tokens": 100, "parallel_tool_calls": False})
    seen: list[Weather] = []

    @agent.output_validator
    def first_is_refused(output: Weather) -> Weather:
        seen.append(output)
        if len(seen) == 1:
            raise ModelRetry(REFUSAL)
        return output

    result = await agent.run("What is the weather in Rome?")
    assert len(seen) == 2 and isinstance(result.output, Weather)
    calls = [part for message in result.all_messages() if isinstance(message, ModelResponse)
             for part in message.parts if isinstance(part, ToolCallPart)]
    returns = [part for message in result.all_messages() if isinstance(message, ModelRequest)
               for part in message.parts if isinstance(part, ToolReturnPart)]
    # The refusal went back as the first call's result, and the server answered it.
    assert returns[0].outcome == "retried" and returns[0].content == REFUSAL
    assert returns[0].tool_call_id == calls[0].tool_call_id
    assert result.usage.requests == 2


async def test_structured_output_streams_partial_objects_then_the_whole(model: Any) -> None:
    agent = Agent(model, output_type=Weather, model_settings={"max_tokens": 100})

    async with agent.run_stream("What is the weather in Rome?") as run:
        outputs = [output async for output in run.stream_output(debounce_by=None)]
    assert outputs and all(isinstance(output, Weather) for output in outputs)


@pytest.mark.parametrize("api", list(APIS))
async def test_a_reasoning_models_thinking_comes_back_as_a_thinking_part(
        real_server: RealServer, api: str) -> None:
    """``o4-mini`` is SmolLM2 as a reasoning model (tests/real/session_server.py): Chat
    returns its reasoning beside the answer, Responses a reasoning item (whose summary is
    empty: pydantic-ai's part has no text then)."""
    # Greedy: sampling freely, SmolLM2 sometimes ends its answer at once, and pydantic-ai
    # then asks again (a second response). pydantic-ai drops a reasoning model's temperature
    # setting (with a warning), so it travels in the body.
    settings: dict[str, Any] = {"max_tokens": 60, "openai_reasoning_effort": "low",
                                "extra_body": {"temperature": 0}}
    async with openai.AsyncOpenAI(base_url=real_server.base_url, api_key=real_server.key,
                                  max_retries=0) as client:
        model = APIS[api]("o4-mini", provider=OpenAIProvider(openai_client=client))
        result = await Agent(model, model_settings=settings).run("What is 2 + 2?")
    (answer,) = [message for message in result.all_messages()
                 if isinstance(message, ModelResponse)]
    thinking = [part for part in answer.parts if isinstance(part, ThinkingPart)]
    assert len(thinking) == 1
    assert thinking[0].content if api == "chat" else thinking[0].signature
    assert result.usage.details.get("reasoning_tokens", 0) > 0
