"""Model kinds as one registry: the catalog's one accessor, the per-kind configuration whose
keys are its dataclasses' fields, and the kind each /v1/models entry carries."""

from __future__ import annotations

from dataclasses import fields

import pytest

from appliance import config
from appliance.engines.base import CHAT, EMBEDDING, IMAGE, SPEECH, TRANSCRIPTION, Listing
from appliance.engines.catalog import Catalog
from appliance.engines.loader import BUILDERS
from appliance.errors import InvalidRequest, ModelNotFound
from tests.conftest import API_KEY, FastStack
from tests.fakes import FakeChatEngine, FakeEmbeddingEngine
from tests.openapi_contract import validate

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_the_catalog_answers_by_kind() -> None:
    chat, embed = FakeChatEngine(), FakeEmbeddingEngine()
    catalog = Catalog([Listing(CHAT, chat, ("gpt-4o-mini",)), Listing(EMBEDDING, embed)])
    assert catalog.get(CHAT, "gpt-4o-mini") is chat
    assert catalog.get(EMBEDDING, "fake-embed") is embed
    with pytest.raises(InvalidRequest) as wrong:
        catalog.get(EMBEDDING, "gpt-4o-mini")
    assert wrong.value.param == "model" and wrong.value.code == "model_not_supported"
    assert "does not support embeddings" in wrong.value.message
    with pytest.raises(ModelNotFound) as unknown:
        catalog.get(CHAT, "nope")
    assert unknown.value.param == "model"
    assert catalog.engines_of(CHAT) == [chat] and catalog.engines() == [chat, embed]
    assert catalog.kind_of("gpt-4o-mini") is CHAT


def test_every_kind_has_a_configuration_and_a_builder() -> None:
    assert tuple(config.MODEL_CONFIGS) == config.MODEL_KINDS == tuple(BUILDERS)
    assert [kind.name for kind in (CHAT, EMBEDDING, TRANSCRIPTION, IMAGE, SPEECH)] == \
        list(BUILDERS)
    for kind, cls in config.MODEL_CONFIGS.items():
        assert cls.kind == kind and BUILDERS[kind].config is cls


def test_known_keys_are_the_dataclass_fields() -> None:
    every = {f.name for cls in config.MODEL_CONFIGS.values() for f in fields(cls)}
    assert every | {"kind"} == config._MODEL_KEYS
    chat = {f.name for f in fields(config.ChatModelConfig)}
    assert {"stop", "chat_template", "context_length", "queue_limit"} <= chat
    assert "pooling" not in chat
    assert config._KIND_ONLY_KEYS["context_length"] == ("chat", "embedding")
    assert config._KIND_ONLY_KEYS["workers"] == ("transcription", "image", "speech")
    assert config._KIND_ONLY_KEYS["voices"] == ("speech",)
    assert "queue_limit" not in config._KIND_ONLY_KEYS  # every kind takes it


@pytest.mark.anyio
async def test_models_carry_their_kind(stack: FastStack) -> None:
    body = (await stack.http.get("/v1/models", headers=AUTH)).json()
    validate(body, "ListModelsResponse")
    kinds = {m["id"]: m["kind"] for m in body["data"]}
    assert {"fake-chat": "chat", "gpt-4o-mini": "chat", "text-embedding-3-small": "embedding",
            "whisper-1": "transcription", "dall-e-2": "image",
            "tts-1": "speech"}.items() <= kinds.items()
    one = (await stack.http.get("/v1/models/whisper-1", headers=AUTH)).json()
    validate(one, "Model")
    assert one["kind"] == "transcription"

