"""docs/compatibility.md stays true: every row's example is sent to the API and checked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import API_KEY, FastStack

pytestmark = pytest.mark.anyio
DOC = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"
BASES = {
    "/v1/chat/completions": {"model": "fake-chat",
                             "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "fake-chat", "prompt": "hi"},
    "/v1/embeddings": {"model": "fake-embed", "input": "hi"},
    "/v1/images/generations": {"model": "fake-image", "prompt": "a red barn",
                               "response_format": "b64_json"},
}
ROW = re.compile(r"^\| `(?P<param>[a-z_]+)`(?: \(extension\))? \| (?P<status>\w+) \| "
                 r"`(?P<example>.+?)` \|")


def rows() -> list[tuple[str, str, str, object]]:
    found: list[tuple[str, str, str, object]] = []
    route = ""
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## POST "):
            route = line.removeprefix("## POST ").strip()
        elif route and (match := ROW.match(line)):
            found.append((route, match["param"], match["status"], json.loads(match["example"])))
    return found


def test_the_document_lists_parameters() -> None:
    assert len(rows()) > 40


@pytest.mark.parametrize(("route", "param", "status", "example"), rows())
async def test_row_is_true(stack: FastStack, route: str, param: str, status: str,
                           example: object) -> None:
    if route.startswith("/v1/audio/"):
        await _check_audio_row(stack, route, param, status, example)
        return
    body = {**BASES[route], param: example}
    if param in ("stream_options",):
        body["stream"] = True
    if param == "top_logprobs":
        body["logprobs"] = True
    if param == "output_compression":
        body["output_format"] = "jpeg"  # png is lossless: compression needs jpeg or webp
    response = await stack.http.post(route, json=body,
                                     headers={"authorization": f"Bearer {API_KEY}"})
    if status == "rejected":
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    else:
        assert status in ("honoured", "accepted")
        assert response.status_code == 200, response.text


async def _check_audio_row(stack: FastStack, route: str, param: str, status: str,
                           example: object) -> None:
    """Audio routes take multipart forms: lists go as repeated ``param[]`` fields."""
    data: dict[str, object] = {"model": "whisper-1"}
    if isinstance(example, list):
        data[f"{param}[]"] = [str(item) for item in example]
    else:
        data[param] = str(example).lower() if isinstance(example, bool) else str(example)
    response = await stack.http.post(route, data=data,
                                     files={"file": ("a.wav", b"RIFF" + b"\0" * 64)},
                                     headers={"authorization": f"Bearer {API_KEY}"})
    if status == "rejected":
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    else:
        assert response.status_code == 200, response.text
