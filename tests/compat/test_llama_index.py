"""LlamaIndex's OpenAI classes on the real server (openai2/llama_index_cases.py, in the openai
SDK 2.x environment: llama-index-llms-openai 0.8 requires openai<3).

LlamaIndex refuses a model name missing from its table of OpenAI's models, so the cases
reach SmolLM2 by its alias ``gpt-4o-mini`` and embeddings by ``text-embedding-3-small``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import run_client
from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]


@pytest.fixture(scope="module")
def observed(real_server: RealServer, openai2_python: Path) -> dict[str, Any]:
    return run_client(openai2_python, "llama_index_cases.py", {
        "APPLIANCE_BASE_URL": real_server.base_url, "APPLIANCE_KEY": real_server.key})


def test_complete_chat_and_stream_agree(observed: dict[str, Any]) -> None:
    text = observed["text"]
    assert text["chat"] and text["complete"] == text["chat"] == text["stream"]
    assert text["usage"]["completion_tokens"] > 0
    assert observed["async"]["complete"] == observed["async"]["stream"] == text["chat"]


def test_structured_predict_and_structured_llm(observed: dict[str, Any]) -> None:
    for answer in observed["structured"].values():
        assert isinstance(answer["city"], str) and isinstance(answer["celsius"], int)


def test_a_required_tool_call_and_its_result_round_trip(observed: dict[str, Any]) -> None:
    (call,) = observed["tools"]["calls"]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    assert isinstance(observed["tools"]["answer"], str)  # the server took the tool result


def test_embeddings_batch_and_query(observed: dict[str, Any]) -> None:
    embeddings = observed["embeddings"]
    assert len(embeddings["batch"]) == 3 and len(set(embeddings["batch"])) == 1
    assert embeddings["query"] == embeddings["batch"][0] and embeddings["same_as_batch"]


def test_the_responses_class(observed: dict[str, Any]) -> None:
    responses = observed["responses"]
    assert responses["complete"] and responses["complete"] == responses["stream"]


def test_a_reasoning_models_thinking_block(observed: dict[str, Any]) -> None:
    assert observed["reasoning"]["blocks"] == ["ThinkingBlock", "TextBlock"]
    assert observed["reasoning"]["reasoning_tokens"] > 0
