"""The official Python SDK's Responses API on the real think model (``o4-mini``: SmolLM2 with
a template that opens ``<think>`` and a small thinking budget, tests/real/session_server.py).

The Agents SDK runs a stateless agent on it: its second request carries the first turn's
reasoning item back (sealed). What is asserted is the protocol: reasoning arrives as a
``reasoning`` item with its ``reasoning_text`` before the answer, plain and streamed (the SDK's
stream helper assembles the same items), ``effort: none`` makes none, and a client that stores
nothing hands the reasoning back through ``encrypted_content`` on its next turn (as Codex
does), also after the server was killed and booted again on its data dir. Raw bodies and
events are validated against OpenAI's spec (tests/openapi_contract.py).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Annotated, Any

import openai
import pytest
from agents import (
    Agent,
    FunctionToolResult,
    ModelSettings,
    OpenAIProvider,
    RunConfig,
    RunContextWrapper,
    Runner,
    ToolsToFinalOutputResult,
    function_tool,
    set_tracing_disabled,
)
from openai.types.shared import Reasoning
from pydantic import BaseModel, Field

from devtools.server_harness import create_key, free_port, start_server, write_config
from tests.openapi_contract import validate
from tests.real.conftest import RealServer
from tests.real.session_server import MODELS as SESSION_MODELS

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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_an_agent_hands_its_reasoning_back_between_turns(
        real_server: RealServer) -> None:
    """The Agents SDK, stateless (store false, the reasoning sealed): a forced tool call after
    the model thought, then a second turn whose input carries that reasoning item back."""
    set_tracing_disabled(True)  # the exporter would reach for OpenAI's servers
    calls: list[str] = []

    @function_tool
    def get_weather(city: Annotated[str, Field(max_length=30)]) -> str:
        """The current weather in a city.

        Args:
            city: the city's name
        """
        calls.append(city)
        return f"sunny, 21 C in {city}"

    agent = Agent(name="weather", instructions="Use the weather tool, then report it.",
                  model=THINK_MODEL, tools=[get_weather], output_type=Forecast,
                  model_settings=ModelSettings(
                      tool_choice="required", parallel_tool_calls=False, max_tokens=ROOM,
                      temperature=0.0, reasoning=Reasoning(effort="low", summary="auto"),
                      store=False, response_include=["reasoning.encrypted_content"]),
                  reset_tool_choice=True, tool_use_behavior=_end_after_second_model_turn(calls))
    async with openai.AsyncOpenAI(base_url=real_server.base_url, api_key=real_server.key,
                                  max_retries=0) as client:
        run_config = RunConfig(model_provider=OpenAIProvider(openai_client=client),
                               tracing_disabled=True)
        result = await Runner.run(agent, "What is the weather in Paris?",
                                  run_config=run_config, max_turns=3)
    assert calls and len(result.raw_responses) == 2
    for response in result.raw_responses:
        assert response.output[0].type == "reasoning"
        assert response.output[0].encrypted_content  # type: ignore[union-attr]
    items = result.to_input_list()
    kinds = [item.get("type") for item in items]
    # What the second request sent back: the first turn's reasoning before its call.
    assert kinds.index("reasoning") < kinds.index("function_call")
    assert isinstance(result.final_output, Forecast) or len(calls) == 2, result.final_output


class Forecast(BaseModel):
    city: str = Field(max_length=30)  # bounds what greedy decoding writes
    sunny: bool


def _end_after_second_model_turn(calls: list[str]) -> Any:
    """The run ends on the second model turn: an answer, or (a tiny model may) a second call."""
    def decide(context: RunContextWrapper[Any],
               results: list[FunctionToolResult]) -> ToolsToFinalOutputResult:
        again = len(calls) > 1
        return ToolsToFinalOutputResult(is_final_output=again,
                                        final_output=results[-1].output if again else None)
    return decide


def _think_model_only() -> str:
    """The session server's think model entry, alone (a server of its own boots fast)."""
    [entry] = [block for block in SESSION_MODELS.split("[[models]]")
               if 'id = "smollm2-135m-think"' in block]
    return "[[models]]" + entry


def test_a_token_opens_after_a_restart(tmp_path: Path) -> None:
    """The seal's key is kept in the data dir (mode 0600): a stateless client's token made
    before a kill -9 opens on the server that boots after it."""
    port = free_port()
    config = write_config(tmp_path, port, _think_model_only())
    key = create_key(config, "seal-restart")
    server = start_server(config, port)
    try:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key,
                           max_retries=0) as client:
            first = created(client, input=ASK, store=False,
                            include=["reasoning.encrypted_content"])
        token = reasoning_items(first)[0].encrypted_content
        key_file = tmp_path / "data" / "reasoning-seal.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        made = key_file.read_bytes()
    finally:
        server.kill()
    server = start_server(config, port, append_log=True)
    try:
        assert key_file.read_bytes() == made  # read, not made anew
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key,
                           max_retries=0) as client:
            count = client.responses.input_tokens.count(model=THINK_MODEL, input=[
                {"role": "user", "content": ASK},
                {"type": "reasoning", "summary": [], "encrypted_content": token},
                {"role": "assistant", "content": first.output_text},
                {"role": "user", "content": "And three plus three?"}])
        assert count.input_tokens > 0
    finally:
        server.stop()
