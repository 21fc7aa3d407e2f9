"""docs/compatibility.md stays true over fakes: every row's example is sent to the API and
checked. tests/real/test_compatibility_real.py sends the same rows to the real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compatibility_rows import STATUSES, Row, form_fields, rows
from tests.conftest import API_KEY, FastStack
from tests.fast.responses_stack import responses_stack

pytestmark = pytest.mark.anyio
BASES: dict[str, dict[str, object]] = {
    "/v1/chat/completions": {"model": "fake-chat",
                             "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "fake-chat", "prompt": "hi"},
    "/v1/embeddings": {"model": "fake-embed", "input": "hi"},
    "/v1/images/generations": {"model": "fake-image", "prompt": "a red barn",
                               "response_format": "b64_json"},
    "/v1/responses": {"model": "fake-chat", "input": "hi"},
    "/v1/audio/speech": {"model": "tts-1", "voice": "alloy", "input": "Hello there."},
}


def test_the_document_lists_parameters() -> None:
    found = rows()
    assert len(found) > 40
    assert {row.status for row in found} <= set(STATUSES)
    assert {row.route for row in found} == {*BASES, "/v1/audio/transcriptions",
                                            "/v1/audio/translations"}


@pytest.mark.parametrize("row", [row for row in rows() if row.route == "/v1/responses"],
                         ids=lambda row: row.id)
async def test_responses_row_is_true(tmp_path: Path, row: Row) -> None:
    # A stack with a state store: `store` and `background` need one.
    async with responses_stack(tmp_path) as stack:
        body = {**BASES[row.route], **row.companions(), row.param: row.example}
        response = await stack.http.post(row.route, json=body, headers=stack.auth())
        if row.status == "rejected":
            assert response.status_code == 400, response.text
            assert response.json()["error"]["param"] == row.param
        else:
            assert response.status_code == 200, response.text


@pytest.mark.parametrize("row", [row for row in rows() if row.route != "/v1/responses"],
                         ids=lambda row: row.id)
async def test_row_is_true(stack: FastStack, row: Row) -> None:
    headers = {"authorization": f"Bearer {API_KEY}"}
    if row.is_audio:
        # Audio routes take multipart forms; the fake engine needs no real speech.
        response = await stack.http.post(
            row.route, data={"model": "whisper-1", **form_fields(row.param, row.example)},
            files={"file": ("a.wav", b"RIFF" + b"\0" * 64)}, headers=headers)
    else:
        body = {**BASES[row.route], **row.companions(), row.param: row.example}
        response = await stack.http.post(row.route, json=body, headers=headers)
    if row.status == "rejected":
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == row.param
    else:
        assert response.status_code == 200, response.text
