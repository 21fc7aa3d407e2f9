"""Text to speech through the official clients, unchanged but for base_url and api_key: the
Python SDK's audio.speech.create and with_streaming_response (stream_to_file, iter_bytes),
sync and async, and the npm client (node/speech.mjs)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import wave
from pathlib import Path
from typing import Any

import av
import openai
import pytest

from tests.real.conftest import RealServer

pytestmark = [pytest.mark.real, pytest.mark.compat]
INPUT = "Hello from the Python client. This is a second sentence."


def seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        return sum(frame.samples for frame in container.decode(stream)) / rate


def test_python_sdk_create_and_stream_to_file(real_server: RealServer, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=real_server.base_url, api_key=real_server.key)
    with client:
        whole = client.audio.speech.create(model="tts-1", voice="alloy", input=INPUT)
        assert whole.response.headers["content-type"] == "audio/mpeg"
        target = tmp_path / "speech.opus"
        with client.audio.speech.with_streaming_response.create(
                model="gpt-4o-mini-tts", voice="coral", input=INPUT,
                response_format="opus") as response:
            response.stream_to_file(target)
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="echo", input=INPUT, response_format="pcm") as response:
            pcm = b"".join(response.iter_bytes(4096))
    assert seconds(whole.content) > 2.0
    assert seconds(target.read_bytes()) > 2.0
    assert len(pcm) / 2 / 24_000 > 2.0


@pytest.mark.anyio
async def test_async_python_sdk(real_server: RealServer) -> None:
    async with openai.AsyncOpenAI(base_url=real_server.base_url,
                                  api_key=real_server.key) as client:
        response = await client.audio.speech.create(model="tts-1", voice="nova", input=INPUT,
                                                    response_format="wav", speed=1.5)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.audio.speech.create(model="tts-1", voice="alloy", input=INPUT,
                                             instructions="Sound happy.")
    with wave.open(io.BytesIO(response.content)) as wav:
        assert wav.getframerate() == 24_000
    assert refused.value.param == "instructions"  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def observed(real_server: RealServer, node_client: Path) -> dict[str, Any]:
    env = {**os.environ, "APPLIANCE_BASE_URL": real_server.base_url,
           "APPLIANCE_KEY": real_server.key}
    run = subprocess.run(["node", str(node_client.parent / "speech.mjs")], env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    result: dict[str, Any] = json.loads(run.stdout)
    return result


def test_npm_client_speaks(observed: dict[str, Any]) -> None:
    assert observed["wav"]["type"] == "audio/wav" and observed["wav"]["head"] == "RIFF"
    assert observed["wav"]["bytes"] > 2 * 24_000 * 2  # over two seconds of 16-bit samples
    assert observed["stream"]["type"] == "audio/mpeg" and observed["stream"]["bytes"] > 8000
    assert observed["stream"]["chunks"] >= 2  # sentence by sentence
    sse = observed["sse"]
    assert sse["type"].startswith("text/event-stream")
    assert sse["events"][-1] == "speech.audio.done"
    assert set(sse["events"][:-1]) == {"speech.audio.delta"}
    assert sse["audioBytes"] > 2 * 24_000 * 2
    assert sse["usage"]["total_tokens"] == \
        sse["usage"]["input_tokens"] + sse["usage"]["output_tokens"]
    assert observed["badVoice"] == {"status": 400, "param": "voice"}
