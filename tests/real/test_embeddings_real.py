"""Embeddings from the real SmolLM2 (mean pooling), through the official SDK."""

from __future__ import annotations

import math

import openai
import pytest

from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
EMBED = "smollm2-135m-embed"


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings_are_unit_vectors_that_rank_similar_text_closer(
    real_server: RealServer,
) -> None:
    sdk = real_server.sdk
    texts = ["The cat sat on the mat.", "A kitten is sitting on a rug.",
             "Quarterly revenue grew by eight percent."]
    # With numpy installed the SDK asks for base64 and decodes it: this checks that path.
    result = sdk.embeddings.create(model="text-embedding-3-small", input=texts)
    assert result.model == EMBED
    vectors = [d.embedding for d in result.data]
    assert len(vectors) == 3 and len(vectors[0]) == 576
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(v * v for v in vector)), 1.0, rel_tol=1e-4)
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert result.usage.prompt_tokens > 10
    floats = sdk.embeddings.create(model=EMBED, input=texts[0], encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(vectors[0], abs=1e-5)
    alone = sdk.embeddings.create(model=EMBED, input=[texts[0]])
    assert alone.data[0].embedding == pytest.approx(vectors[0], abs=1e-4)


def test_over_long_input_is_400_not_truncated(real_server: RealServer) -> None:
    sdk = real_server.sdk
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model=EMBED, input="word " * 2000)
    assert caught.value.param == "input[0]"
    assert caught.value.code == "context_length_exceeded"
