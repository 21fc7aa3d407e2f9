"""instructor on the real server (openai2/instructor_cases.py, in the openai SDK 2.x
environment: instructor's current release cannot install beside openai 3.x).

Each of instructor's API-constrained modes (tools, strict tools, json_schema, the Responses
API's tools) must return a validated object; a validator that refuses the first answer makes
instructor send that answer and its error back and ask again; partial objects stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import run_client
from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]


@pytest.fixture(scope="module", params=["gpt-4o-mini", "gemma-3-270m"])
def observed(request: pytest.FixtureRequest, real_server: RealServer,
             openai2_python: Path) -> dict[str, Any]:
    return run_client(openai2_python, "instructor_cases.py", {
        "APPLIANCE_BASE_URL": real_server.base_url, "APPLIANCE_KEY": real_server.key,
        "APPLIANCE_MODEL": request.param})


def assert_weather(answer: dict[str, Any]) -> None:
    assert isinstance(answer["city"], str) and len(answer["city"]) <= 30
    assert isinstance(answer["celsius"], int)


def test_the_client_environment_is_the_pinned_one(observed: dict[str, Any]) -> None:
    assert observed["openai"].startswith("2.") and observed["instructor"] == "1.17.0"


def test_every_api_constrained_mode_returns_a_validated_object(observed: dict[str, Any]) -> None:
    assert set(observed["modes"]) == {"tools", "tools_strict", "json_schema", "responses_tools"}
    for mode, seen in observed["modes"].items():
        assert_weather(seen["answer"])
        prefix = "resp_" if mode.startswith("responses") else "chatcmpl-"
        assert seen["id"].startswith(prefix), mode
        assert seen["usage"], mode


def test_a_refused_answer_is_asked_again(observed: dict[str, Any]) -> None:
    assert observed["reask"]["attempts"] == 2
    assert isinstance(observed["reask"]["answer"]["city"], str)


def test_partial_objects_stream_then_async(observed: dict[str, Any]) -> None:
    assert observed["partial"]["count"] > 1
    assert_weather(observed["partial"]["last"])
    assert_weather(observed["async"])
