"""One real server per test session: SmolLM2-135M-Instruct and Gemma 3 270M, real weights
(and the other kinds' tiny models: whisper, a random diffusers pipeline, a Piper voice).

``smollm2-135m-think`` is SmolLM2 again, made a reasoning model of the think family: its
ChatML template opens ``<think>`` in the generation prompt and, as Qwen3's does, drops the
reasoning of earlier assistant turns; small thinking budgets let a test see the engine close
the block (no reasoning GGUF is reachable here).

``smollm2-135m-vision`` is SmolLM2 with the tiny random-weight projector beside it
(scripts/build_tiny_mmproj.py): it takes images through the real libmtmd path, and its
answers are nonsense (16 image tokens a picture; different pictures, different tokens).

The fixture is registered in tests/conftest.py, so the real tier and the compat suite share
one server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from devtools.server_harness import (
    GEMMA,
    PIPER_MODEL,
    SMOLLM2,
    THINK_TEMPLATE,
    TINY_MMPROJ,
    TINY_SD,
    WHISPER_BASE,
    WHISPER_TINY,
    RunningServer,
    build_tiny_mmproj,
    build_tiny_sd,
    create_key,
    free_port,
    start_server,
    write_config,
)

MODELS = f"""
[[models]]
id = "smollm2-135m-instruct"
path = "{SMOLLM2}"
aliases = ["gpt-4o-mini"]
price_per_request = 0.5
context_length = 1024
parallel = 4

[[models]]
id = "smollm2-135m-think"
path = "{SMOLLM2}"
aliases = ["o4-mini"]
context_length = 1024
parallel = 2
reasoning = "think"
reasoning_budget = {{ low = 8, medium = 24, high = 64 }}
{THINK_TEMPLATE}

[[models]]
id = "smollm2-135m-vision"
path = "{SMOLLM2}"
mmproj = "{TINY_MMPROJ}"
aliases = ["gpt-4.1-mini"]
context_length = 4096
parallel = 4

[[models]]
id = "smollm2-135m-embed"
kind = "embedding"
path = "{SMOLLM2}"
aliases = ["text-embedding-3-small"]
pooling = "mean"
context_length = 512
price_per_request = 0.25

[[models]]
id = "whisper-tiny.en"
kind = "transcription"
path = "{WHISPER_TINY}"
aliases = ["whisper-1"]
price_per_request = 0.125
max_upload_mb = 1

[[models]]
id = "whisper-base"
kind = "transcription"
path = "{WHISPER_BASE}"
price_per_request = 0.0625
workers = 1

[[models]]
id = "gemma-3-270m"
path = "{GEMMA}"
price_per_request = 1.0
context_length = 1024
parallel = 4
stop = ["<end_of_turn>", "<start_of_turn>"]
chat_template = \"\"\"{{{{ bos_token }}}}{{% for m in messages %}}<start_of_turn>\\
{{{{ 'model' if m.role == 'assistant' else 'user' }}}}
{{{{ m.content }}}}<end_of_turn>
{{% endfor %}}<start_of_turn>model
\"\"\"

[[models]]
id = "tiny-random-sd"
kind = "image"
path = "{TINY_SD}"
aliases = ["dall-e-2"]
price_per_request = 0.03
steps = 2
sizes = ["64x64", "128x64"]

{PIPER_MODEL}"""
# Short, so a test can watch a URL expire; fetches right after a response are far inside it.
IMAGE_URL_TTL_S = 4


@dataclass
class RealServer:
    server: RunningServer
    key: str
    sdk: openai.OpenAI  # one client for the session, closed at its end (no stray sockets)

    @property
    def base_url(self) -> str:
        return self.server.base_url + "/v1"


@pytest.fixture(scope="session")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealServer]:
    if not SMOLLM2.is_file() or not GEMMA.is_file():
        pytest.fail("default models are missing: run scripts/fetch-models (scripts/test does)")
    build_tiny_sd()
    build_tiny_mmproj()
    folder: Path = tmp_path_factory.mktemp("real-server")
    port = free_port()
    config = write_config(folder, port, MODELS)
    key = create_key(config, "real-tier")
    server = start_server(config, port,
                          env={"APPLIANCE_IMAGE_URL_TTL_S": str(IMAGE_URL_TTL_S)})
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    try:
        yield RealServer(server, key, sdk)
    finally:
        sdk.close()
        server.stop()
