"""Pictures through the official clients against the real session server's vision fixture
(``smollm2-135m-vision``, alias ``gpt-4.1-mini``: SmolLM2-135M with a tiny random-weight
projector, so the answers are nonsense, but the whole path runs: decoded, projected, evaluated
into the request's slot, tokens generated). The Python SDK (chat plain and streamed, the
Responses API), the npm SDK and LangChain's ``HumanMessage`` with an image part."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from openai.types.chat import ChatCompletionUserMessageParam
from PIL import Image

from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]
VISION = "gpt-4.1-mini"
QUESTION = "What is in this picture?"


def picture_url(pattern: str) -> str:
    """A 64 x 64 PNG data URL: a flat red square, or black and white stripes."""
    image = Image.new("RGB", (64, 64), (220, 30, 30))
    if pattern == "stripes":
        for x in range(64):
            for y in range(64):
                image.putpixel((x, y), (255, 255, 255) if (x // 8) % 2 else (0, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return f"data:image/png;base64,{base64.b64encode(out.getvalue()).decode()}"


def turn(url: str, text: str = QUESTION) -> ChatCompletionUserMessageParam:
    return {"role": "user", "content": [{"type": "text", "text": text},
                                        {"type": "image_url", "image_url": {"url": url}}]}


def test_python_sdk_completes_and_streams_a_picture(real_server: RealServer) -> None:
    sdk = real_server.sdk
    plain = sdk.chat.completions.create(model=VISION, messages=[turn(picture_url("red"))],
                                        max_tokens=8, temperature=0)
    usage = plain.usage
    assert usage is not None and usage.completion_tokens > 0
    assert plain.choices[0].finish_reason in ("stop", "length")
    details = usage.prompt_tokens_details
    assert details is not None and details.image_tokens
    assert usage.prompt_tokens > details.image_tokens  # the text's tokens and the picture's
    stream = sdk.chat.completions.create(
        model=VISION, messages=[turn(picture_url("red"))],
        max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    last = chunks[-1].usage
    assert last is not None and last.prompt_tokens_details is not None
    assert last.prompt_tokens_details.image_tokens == details.image_tokens


def test_two_pictures_two_answers_at_temperature_zero(real_server: RealServer) -> None:
    answers = [real_server.sdk.chat.completions.create(
        model=VISION, messages=[turn(picture_url(pattern))],
        max_tokens=12, temperature=0, logprobs=True) for pattern in ("red", "stripes")]
    tokens = [[entry.token for entry in (a.choices[0].logprobs.content or [])]  # type: ignore[union-attr]
              for a in answers]
    assert tokens[0] and tokens[1] and tokens[0] != tokens[1]


def test_a_second_turn_on_the_same_picture_is_cached(real_server: RealServer) -> None:
    sdk = real_server.sdk
    first_turn = turn(picture_url("stripes"), "Describe this picture in one word.")
    first = sdk.chat.completions.create(model=VISION, messages=[first_turn],
                                        max_tokens=6, temperature=0)
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    image_tokens = first.usage.prompt_tokens_details.image_tokens or 0
    second = sdk.chat.completions.create(model=VISION, max_tokens=6, temperature=0, messages=[
        first_turn, {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And in two words?"}])
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    # The reused prefix covers the template's opening, the picture's run and the text after.
    assert (second.usage.prompt_tokens_details.cached_tokens or 0) > image_tokens > 0


def test_python_sdk_responses_input_image(real_server: RealServer) -> None:
    response = real_server.sdk.responses.create(model=VISION, max_output_tokens=16,
                                                temperature=0, input=[{
        "role": "user", "content": [{"type": "input_text", "text": QUESTION},
                                    {"type": "input_image", "image_url": picture_url("red"),
                                     "detail": "high"}]}])
    assert response.status in ("completed", "incomplete")
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.input_tokens > 16  # the fixture's picture is 16 tokens


def test_npm_sdk_sends_a_picture(real_server: RealServer, node_client: Path) -> None:
    env = {**os.environ, "APPLIANCE_BASE_URL": real_server.base_url,
           "APPLIANCE_KEY": real_server.key, "APPLIANCE_MODEL": VISION,
           "APPLIANCE_IMAGE": picture_url("red")}
    run = subprocess.run(["node", str(node_client.parent / "vision.mjs")], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    seen: dict[str, Any] = json.loads(run.stdout)
    assert seen["modalities"][VISION] == ["text", "image"]
    assert seen["modalities"]["gpt-4o-mini"] == ["text"]
    assert seen["plain"]["finish"] in ("stop", "length")
    assert seen["plain"]["usage"]["prompt_tokens_details"]["image_tokens"] > 0
    assert seen["stream"]["content"] == seen["plain"]["content"]
    assert seen["stream"]["usage"]["prompt_tokens"] == seen["plain"]["usage"]["prompt_tokens"]
    assert seen["responses"]["status"] in ("completed", "incomplete")
    assert seen["responses"]["usage"]["input_tokens"] > 16


def test_langchain_human_message_with_an_image_part(real_server: RealServer) -> None:
    model = ChatOpenAI(model=VISION, base_url=real_server.base_url,
                       api_key=real_server.key,  # type: ignore[arg-type]
                       max_retries=0, temperature=0, max_tokens=8)  # type: ignore[call-arg]
    message = HumanMessage(content=[{"type": "text", "text": QUESTION},
                                    {"type": "image_url",
                                     "image_url": {"url": picture_url("red")}}])
    answer = model.invoke([message])
    assert isinstance(answer.content, str)
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] > 0
    assert answer.usage_metadata["input_tokens"] > 16
    streamed = "".join(str(chunk.content) for chunk in model.stream([message]))
    assert streamed == answer.content
