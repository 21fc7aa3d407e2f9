"""/v1/models and the ledger rows the middleware writes for each request."""

from __future__ import annotations

import openai
import pytest

from tests.conftest import FastStack
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
USER = [{"role": "user", "content": "Say hello"}]


async def test_models_list_includes_ids_and_aliases(stack: FastStack) -> None:
    raw = await stack.client.models.with_raw_response.list()
    validate(raw.http_response.json(), "ListModelsResponse")
    ids = [m.id for m in raw.parse().data]
    assert ids[:6] == ["fake-chat", "gpt-4o-mini", "fake-embed", "text-embedding-3-small",
                       "fake-whisper", "whisper-1"]


async def test_retrieve_model_and_alias(stack: FastStack) -> None:
    model = await stack.client.models.retrieve("fake-chat")
    validate(model.model_dump(), "Model")
    assert model.owned_by == "appliance"
    alias = await stack.client.models.retrieve("gpt-4o-mini")
    assert alias.id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        await stack.client.models.retrieve("nope")


async def test_successful_chat_is_ledgered_with_price_and_tokens(stack: FastStack) -> None:
    completion = await stack.client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    row = stack.ledger.rows[-1]
    assert row.status == "ok"
    assert row.http_status == 200
    assert row.endpoint == "/v1/chat/completions"
    assert row.model == "fake-chat"
    assert row.key_id == stack.keys.secrets[next(iter(stack.keys.secrets))].id
    assert completion.usage is not None
    assert row.prompt_tokens == completion.usage.prompt_tokens
    assert row.completion_tokens == completion.usage.completion_tokens
    assert row.price == 0.25
    assert row.ttft_ms is not None and row.latency_ms >= row.ttft_ms


async def test_streamed_chat_is_ledgered(stack: FastStack) -> None:
    stream = await stack.client.chat.completions.create(
        model="fake-chat", messages=USER, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    row = stack.ledger.rows[-1]
    assert row.stream is True
    assert row.status == "ok"
    assert chunks[-1].usage is not None
    assert row.completion_tokens == chunks[-1].usage.completion_tokens


async def test_refused_request_costs_nothing(stack: FastStack) -> None:
    with pytest.raises(openai.BadRequestError):
        await stack.client.chat.completions.create(model="fake-chat", messages=USER,
                                                   top_logprobs=2)
    row = stack.ledger.rows[-1]
    assert row.status == "error"
    assert row.http_status == 400
    assert row.price == 0.0


async def test_health_is_not_ledgered(stack: FastStack) -> None:
    await stack.http.get("/health")
    assert stack.ledger.rows == []
