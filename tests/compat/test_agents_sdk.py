"""The OpenAI Agents SDK in its default mode (the Responses API) on the real server and models.

No ``set_default_openai_api("chat_completions")``: the provider resolves a model name to its
Responses model, as it does for every user who does not opt out. The provider takes an
AsyncOpenAI pointed at the appliance, per run (RunConfig), so no test leaves a global default
client behind; tracing is off because its exporter would call OpenAI's servers.

What is asserted is the protocol: a forced function call happens and its output is fed back
to the model in a second request; a Pydantic ``output_type`` comes back validated (strict
json_schema, which the server enforces by grammar); the streamed run carries the Responses
events and ends as the plain run does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import openai
import pytest
from agents import (
    Agent,
    FunctionToolResult,
    ModelSettings,
    OpenAIProvider,
    OpenAIResponsesModel,
    RunConfig,
    RunContextWrapper,
    Runner,
    ToolsToFinalOutputResult,
    function_tool,
    set_tracing_disabled,
)
from openai.types.responses import ResponseTextDeltaEvent
from pydantic import BaseModel, Field

from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat, pytest.mark.anyio]
MODELS = ["gpt-4o-mini", "gemma-3-270m"]
ASK = "What is the weather in Paris?"


class Forecast(BaseModel):
    city: str = Field(max_length=30)  # bounds what greedy decoding writes
    sunny: bool


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def run_config(real_server: RealServer) -> AsyncIterator[RunConfig]:
    set_tracing_disabled(True)  # the exporter would reach for OpenAI's servers
    async with openai.AsyncOpenAI(base_url=real_server.base_url, api_key=real_server.key,
                                  max_retries=0) as client:
        provider = OpenAIProvider(openai_client=client)
        yield RunConfig(model_provider=provider, tracing_disabled=True)


def weather_agent(model: str, calls: list[str]) -> Agent[Any]:
    """An agent that must call get_weather first; the call's output goes back to the model,
    whose next turn (tool_choice reset to auto) ends the run, whether it answers or calls the
    tool again (the tiny models may). Its answer is a Forecast: the Agents SDK fails a run on
    a response cut by max_tokens, and a strict schema ends the answer well inside them."""

    @function_tool
    def get_weather(city: Annotated[str, Field(max_length=30)]) -> str:
        """The current weather in a city.

        Args:
            city: the city's name
        """
        calls.append(city)
        return f"sunny, 21 C in {city}"

    def end_after_second_model_turn(context: RunContextWrapper[Any],
                                    results: list[FunctionToolResult]) -> ToolsToFinalOutputResult:
        again = len(calls) > 1
        return ToolsToFinalOutputResult(is_final_output=again,
                                        final_output=results[-1].output if again else None)

    return Agent(name="weather", instructions="Use the weather tool, then report the forecast.",
                 model=model, tools=[get_weather], output_type=Forecast,
                 model_settings=ModelSettings(tool_choice="required", parallel_tool_calls=False,
                                              max_tokens=100, temperature=0.0),
                 reset_tool_choice=True, tool_use_behavior=end_after_second_model_turn)


def assert_round_trip(result: Any, calls: list[str]) -> None:
    items = result.to_input_list()
    made = [item for item in items if item.get("type") == "function_call"]
    answered = [item for item in items if item.get("type") == "function_call_output"]
    assert calls and made and made[0]["name"] == "get_weather"
    assert answered and answered[0]["call_id"] == made[0]["call_id"]
    assert "sunny" in str(answered[0]["output"])
    # Two model turns: the forced call, then one that read the call's output and answered
    # (a validated Forecast) or called again (then the run ends on the second call's output).
    assert len(result.raw_responses) == 2
    assert isinstance(result.final_output, Forecast) or len(calls) == 2, result.final_output
    assert all(r.response_id and r.response_id.startswith("resp_") for r in result.raw_responses)


async def test_default_mode_is_the_responses_api(run_config: RunConfig) -> None:
    assert isinstance(run_config.model_provider, OpenAIProvider)
    model = run_config.model_provider.get_model("gemma-3-270m")
    assert isinstance(model, OpenAIResponsesModel)


@pytest.mark.parametrize("model", MODELS)
async def test_function_tool_round_trip(run_config: RunConfig, model: str) -> None:
    calls: list[str] = []
    result = await Runner.run(weather_agent(model, calls), ASK, run_config=run_config,
                              max_turns=3)
    assert_round_trip(result, calls)
    assert result.context_wrapper.usage.requests == 2
    assert result.context_wrapper.usage.input_tokens > 0


@pytest.mark.parametrize("model", MODELS)
async def test_output_type_is_validated(run_config: RunConfig, model: str) -> None:
    agent = Agent(name="forecaster", instructions="Report the forecast.", model=model,
                  output_type=Forecast,
                  model_settings=ModelSettings(max_tokens=100, temperature=0.0))
    result = await Runner.run(agent, ASK, run_config=run_config, max_turns=1)
    assert isinstance(result.final_output, Forecast)


@pytest.mark.parametrize("model", MODELS)
async def test_run_streamed_output_and_tool_round_trip(run_config: RunConfig, model: str) -> None:
    agent = Agent(name="forecaster", instructions="Report the forecast.", model=model,
                  output_type=Forecast,
                  model_settings=ModelSettings(max_tokens=100, temperature=0.0))
    streamed = Runner.run_streamed(agent, ASK, run_config=run_config, max_turns=1)
    kinds: list[str] = []
    deltas: list[str] = []
    async for event in streamed.stream_events():
        if event.type == "raw_response_event":
            kinds.append(event.data.type)
            if isinstance(event.data, ResponseTextDeltaEvent):
                deltas.append(event.data.delta)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert isinstance(streamed.final_output, Forecast)
    assert streamed.final_output == Forecast.model_validate_json("".join(deltas))
    plain = await Runner.run(agent, ASK, run_config=run_config, max_turns=1)
    assert plain.final_output == streamed.final_output  # greedy: the same answer

    calls: list[str] = []
    with_tool = Runner.run_streamed(weather_agent(model, calls), ASK, run_config=run_config,
                                    max_turns=3)
    seen: list[str] = []
    async for event in with_tool.stream_events():
        if event.type == "run_item_stream_event":
            seen.append(event.name)
        elif event.type == "raw_response_event":
            seen.append(event.data.type)
    assert "response.function_call_arguments.delta" in seen
    assert seen.index("tool_called") < seen.index("tool_output")
    assert_round_trip(with_tool, calls)
