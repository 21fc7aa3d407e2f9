"""The official openai npm client under Node, unchanged but for baseURL and apiKey."""

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


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m"])
def observed(request: pytest.FixtureRequest, real_server: RealServer,
             node_client: Path) -> dict[str, Any]:
    env = {**os.environ, "APPLIANCE_BASE_URL": real_server.base_url,
           "APPLIANCE_KEY": real_server.key, "APPLIANCE_MODEL": request.param}
    run = subprocess.run(["node", str(node_client)], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_models_and_plain_chat(observed: dict[str, Any]) -> None:
    assert {"smollm2-135m-instruct", "gemma-3-270m"} <= set(observed["models"])
    assert observed["plain"]["content"]
    assert observed["plain"]["finish"] in ("stop", "length")
    usage = observed["plain"]["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_matches_plain_and_reports_usage(observed: dict[str, Any]) -> None:
    assert observed["stream"]["content"] == observed["plain"]["content"]
    assert observed["stream"]["usage"]["completion_tokens"] == \
        observed["plain"]["usage"]["completion_tokens"]


def test_tool_calls_plain_and_through_the_stream_helper(observed: dict[str, Any]) -> None:
    schema = {"type": "object", "required": ["city"], "additionalProperties": False,
              "properties": {"city": {"type": "string"}}}
    for case in ("tools", "toolStream"):
        assert observed[case]["finish"] == "tool_calls"
        calls = observed[case]["calls"]
        assert calls and all(c["function"]["name"] == "get_weather" for c in calls)
        for call in calls:
            jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
    assert observed["tools"]["content"] is None


def test_structured_output_validates(observed: dict[str, Any]) -> None:
    if observed["structured"]["finish"] == "stop":
        assert isinstance(json.loads(observed["structured"]["content"])["city"], str)
    else:
        assert observed["structured"]["finish"] == "length"


def test_base64_embeddings_decode_to_unit_vectors(observed: dict[str, Any]) -> None:
    # The JS client always asks for base64 and decodes it itself.
    assert [e["length"] for e in observed["embeddings"]] == [576, 576]
    assert all(abs(e["norm"] - 1.0) < 1e-3 for e in observed["embeddings"])


def test_legacy_completion(observed: dict[str, Any]) -> None:
    assert observed["completion"]["text"]
    assert observed["completion"]["usage"]["completion_tokens"] <= 5


def test_error_classes(observed: dict[str, Any]) -> None:
    errors = observed["errors"]
    assert errors["unknownModel"]["name"] == "NotFoundError"
    assert errors["unknownModel"]["param"] == "model"
    assert errors["badParam"]["name"] == "BadRequestError"
    assert errors["badParam"]["param"] == "temperature"
    assert errors["badKey"]["name"] == "AuthenticationError"
    assert errors["badKey"]["status"] == 401
