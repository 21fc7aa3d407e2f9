"""/v1/embeddings over a fake engine, through the official SDK."""

from __future__ import annotations

import base64
import math
import struct

import openai
import pytest

from tests.conftest import API_KEY, FastStack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
AUTH = {"authorization": f"Bearer {API_KEY}"}


async def test_float_embeddings_validate_and_are_unit_length(stack: FastStack) -> None:
    response = await stack.http.post("/v1/embeddings", headers=AUTH, json={
        "model": "text-embedding-3-small", "input": ["hello", "world"],
        "encoding_format": "float"})
    body = response.json()
    validate(body, "CreateEmbeddingResponse")
    assert body["model"] == "fake-embed"
    assert [d["index"] for d in body["data"]] == [0, 1]
    for item in body["data"]:
        assert math.isclose(math.sqrt(sum(v * v for v in item["embedding"])), 1.0, rel_tol=1e-6)
    assert body["usage"] == {"prompt_tokens": 10, "total_tokens": 10}
    assert stack.ledger.rows[-1].model == "fake-embed"
    assert stack.ledger.rows[-1].prompt_tokens == 10


async def test_base64_is_little_endian_float32_of_the_same_vector(stack: FastStack) -> None:
    plain = await stack.client.embeddings.create(model="fake-embed", input="hello",
                                                 encoding_format="float")
    response = await stack.http.post("/v1/embeddings", headers=AUTH, json={
        "model": "fake-embed", "input": "hello", "encoding_format": "base64"})
    raw = base64.b64decode(response.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert decoded == pytest.approx(plain.data[0].embedding, rel=1e-6)
    default = await stack.client.embeddings.create(model="fake-embed", input="hello")
    assert default.data[0].embedding == pytest.approx(plain.data[0].embedding, rel=1e-6)


async def test_token_inputs_and_dimensions(stack: FastStack) -> None:
    ids = await stack.client.embeddings.create(model="fake-embed", input=[[104, 105], [7]],
                                               encoding_format="float")
    assert len(ids.data) == 2
    single = await stack.client.embeddings.create(model="fake-embed", input=[104, 105],
                                                  encoding_format="float")
    assert single.data[0].embedding == pytest.approx(ids.data[0].embedding)
    short = await stack.client.embeddings.create(model="fake-embed", input="hello",
                                                 dimensions=3, encoding_format="float")
    assert len(short.data[0].embedding) == 3
    assert math.isclose(sum(v * v for v in short.data[0].embedding), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-embed", "input": []}, "input"),
        ({"model": "fake-embed", "input": [""]}, "input"),
        ({"model": "fake-embed", "input": [1, "a"]}, "input"),
        ({"model": "fake-embed", "input": "x" * 40}, "input"),
        ({"model": "fake-embed", "input": "x", "dimensions": 9}, "dimensions"),
        ({"model": "fake-embed", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "fake-chat", "input": "x"}, "model"),
    ],
)
async def test_bad_embedding_requests_are_400(stack: FastStack, body: dict[str, object],
                                              param: str) -> None:
    response = await stack.http.post("/v1/embeddings", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_unknown_embedding_model_is_404(stack: FastStack) -> None:
    with pytest.raises(openai.NotFoundError):
        await stack.client.embeddings.create(model="nope", input="x")
