"""Embeddings from the real SmolLM2 (mean pooling), through the official SDK."""

from __future__ import annotations

import asyncio
import math

import openai
import pytest

from appliance.config import EmbeddingModelConfig
from appliance.engines.llm.embedder import LlamaEmbeddingEngine
from devtools.server_harness import SMOLLM2
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


def test_another_keys_request_is_embedded_between_the_batches_of_a_long_one() -> None:
    engine = LlamaEmbeddingEngine.load(EmbeddingModelConfig(id="embed", path=SMOLLM2,
                                                            context_length=1024))
    engine.warm_up()
    # Each input is past half a batch's 512 tokens, so each is a decode of its own (1-3 s
    # here): the five are several steps of about a second.
    long = [f"Paragraph {i}: " + "the appliance embeds text one batch at a time. " * 27
            for i in range(5)]
    finished: list[str] = []
    try:
        async def embed(inputs: list[str], owner: str) -> list[tuple[float, ...]]:
            result = await engine.embed(inputs, owner=owner)
            finished.append(owner)
            return list(result.vectors)

        async def run() -> tuple[list[tuple[float, ...]], list[tuple[float, ...]]]:
            first = asyncio.ensure_future(embed(long, "key_a"))
            while engine.occupancy.busy == 0:  # key_a's request holds the worker
                await asyncio.sleep(0.01)
            second = await embed(["A short question."], "key_b")
            return await first, second

        long_vectors, _ = asyncio.run(run())
        alone = asyncio.run(engine.embed(long[-1:], owner="key_a")).vectors[0]
    finally:
        engine.close()
    assert finished == ["key_b", "key_a"]  # a step of key_a's, not all five batches, went first
    assert len(long_vectors) == 5
    assert long_vectors[-1] == pytest.approx(alone, abs=1e-4)  # its batches are unchanged
