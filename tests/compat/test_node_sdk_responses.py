"""The official openai npm client's Responses API under Node (node/responses.mjs), real server.

The scenario prints what the client observed as one JSON object; these tests assert the
protocol on it: the stream helper assembles what a plain call returns, a forced function call
comes back and its output feeds a second turn (stateless and through previous_response_id),
and a strict json_schema output parses.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]
CITY_SCHEMA = {"type": "object", "required": ["city"], "additionalProperties": False,
               "properties": {"city": {"type": "string", "maxLength": 30}}}


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def observed(request: pytest.FixtureRequest, real_server: RealServer,
             node_client: Path) -> dict[str, Any]:
    env = {**os.environ, "APPLIANCE_BASE_URL": real_server.base_url,
           "APPLIANCE_KEY": real_server.key, "APPLIANCE_MODEL": request.param}
    run = subprocess.run(["node", str(node_client.parent / "responses.mjs")], env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_create_and_stream_agree(observed: dict[str, Any]) -> None:
    plain, stream = observed["plain"], observed["stream"]
    assert plain["id"].startswith("resp_") and plain["types"] == ["message"]
    assert plain["status"] == "completed"
    jsonschema.validate(json.loads(plain["text"]), CITY_SCHEMA)
    usage = plain["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert stream["kinds"][:2] == ["response.created", "response.in_progress"]
    assert stream["kinds"][-1] == "response.completed" and stream["status"] == "completed"
    assert stream["sequence"] == list(range(len(stream["kinds"])))
    assert stream["deltas"] == stream["text"] == plain["text"]
    assert stream["usage"]["output_tokens"] == usage["output_tokens"]


def test_a_cut_stream_ends_incomplete(observed: dict[str, Any]) -> None:
    cut = observed["cut"]
    assert cut["sequence"] == list(range(len(cut["kinds"])))
    assert cut["kinds"][-1] == f"response.{cut['status']}"
    if cut["status"] == "incomplete":  # a tiny model could, in principle, end its story
        assert cut["reason"] == "max_output_tokens"
        assert cut["usage"]["output_tokens"] == 16
    else:
        assert cut["status"] == "completed"


def test_tool_round_trip(observed: dict[str, Any]) -> None:
    tools = observed["tools"]
    assert tools["status"] == "completed"
    [call] = tools["calls"]
    assert call["name"] == "get_weather" and call["call_id"]
    jsonschema.validate(json.loads(call["arguments"]), CITY_SCHEMA)
    trip = observed["roundTrip"]
    assert trip["stateless"]["types"] == trip["chained"]["types"] == ["message"]
    assert trip["chained"]["previous"]
    # The chain replayed the call and its output: the same prompt as the stateless turn.
    assert trip["chained"]["usage"]["input_tokens"] == trip["stateless"]["usage"]["input_tokens"]
    # ... which is longer than the question alone by the call and its output.
    assert trip["chained"]["usage"]["input_tokens"] > (
        trip["aloneUsage"]["input_tokens"] + trip["calledUsage"]["output_tokens"])


def test_stream_helper_with_a_forced_function(observed: dict[str, Any]) -> None:
    streamed = observed["toolStream"]
    assert "response.function_call_arguments.delta" in streamed["kinds"]
    assert streamed["kinds"][-1] == "response.completed"
    [call] = streamed["calls"]
    assert call["name"] == "get_weather" and streamed["done"] == [call["arguments"]]
    jsonschema.validate(json.loads(call["arguments"]), CITY_SCHEMA)


def test_structured_output_parses(observed: dict[str, Any]) -> None:
    structured = observed["structured"]
    assert structured["status"] == "completed"
    jsonschema.validate(structured["parsed"], CITY_SCHEMA)
    assert json.loads(structured["text"]) == structured["parsed"]


def test_error_classes(observed: dict[str, Any]) -> None:
    errors = observed["errors"]
    assert errors["unknownModel"]["name"] == "NotFoundError"
    assert errors["unknownModel"]["param"] == "model"
    assert errors["unknownResponse"]["name"] == "NotFoundError"
    assert errors["forcedUnknownTool"]["name"] == "BadRequestError"
    assert errors["forcedUnknownTool"]["param"] == "tool_choice"
