"""Model ids and aliases -> loaded engines, by capability.

An unknown name is a ModelNotFound (404), never the default model; a known model asked for
the wrong capability is a 400 naming ``model``. Aliases resolve to the canonical id, which is
what responses report (as OpenAI reports a dated snapshot for an alias).
"""

from __future__ import annotations

from collections.abc import Iterable

from appliance.engines.base import (
    ChatEngine,
    EmbeddingEngine,
    ImageEngine,
    ModelInfo,
    TranscriptionEngine,
)
from appliance.errors import InvalidRequest, ModelNotFound

Engine = ChatEngine | EmbeddingEngine | TranscriptionEngine | ImageEngine


class Catalog:
    def __init__(self, chat: Iterable[tuple[ChatEngine, tuple[str, ...]]],
                 embedding: Iterable[tuple[EmbeddingEngine, tuple[str, ...]]] = (),
                 transcription: Iterable[tuple[TranscriptionEngine, tuple[str, ...]]] = (),
                 image: Iterable[tuple[ImageEngine, tuple[str, ...]]] = ()):
        """Takes each engine with its aliases; names are unique (config checked it)."""
        self._chat: dict[str, ChatEngine] = {}
        self._embedding: dict[str, EmbeddingEngine] = {}
        self._transcription: dict[str, TranscriptionEngine] = {}
        self._image: dict[str, ImageEngine] = {}
        self._canonical: dict[str, str] = {}
        self._infos: dict[str, ModelInfo] = {}
        self._engines: list[Engine] = []
        for engine, aliases in chat:
            self._add(engine, aliases)
            self._chat.update({name: engine for name in (engine.info.id, *aliases)})
        for embedder, aliases in embedding:
            self._add(embedder, aliases)
            self._embedding.update({name: embedder for name in (embedder.info.id, *aliases)})
        for listener, aliases in transcription:
            self._add(listener, aliases)
            self._transcription.update({name: listener
                                        for name in (listener.info.id, *aliases)})
        for painter, aliases in image:
            self._add(painter, aliases)
            self._image.update({name: painter for name in (painter.info.id, *aliases)})

    def _add(self, engine: Engine, aliases: tuple[str, ...]) -> None:
        info = engine.info
        self._infos[info.id] = info
        self._engines.append(engine)
        for name in (info.id, *aliases):
            self._canonical[name] = info.id

    def chat(self, name: str) -> ChatEngine:
        engine = self._chat.get(name)
        if engine is None:
            raise self._missing(name, "chat completions")
        return engine

    def embedding(self, name: str) -> EmbeddingEngine:
        engine = self._embedding.get(name)
        if engine is None:
            raise self._missing(name, "embeddings")
        return engine

    def transcription(self, name: str) -> TranscriptionEngine:
        engine = self._transcription.get(name)
        if engine is None:
            raise self._missing(name, "audio transcriptions and translations")
        return engine

    def image(self, name: str) -> ImageEngine:
        engine = self._image.get(name)
        if engine is None:
            raise self._missing(name, "image generation")
        return engine

    def _missing(self, name: str, capability: str) -> Exception:
        if name in self._canonical:
            return InvalidRequest(f"The model `{name}` does not support {capability}.",
                                  param="model", code="model_not_supported")
        return ModelNotFound(name)

    def resolve(self, name: str) -> ModelInfo:
        """The model behind an id or alias, whatever its kind."""
        canonical = self._canonical.get(name)
        if canonical is None:
            raise ModelNotFound(name, param=None)
        return self._infos[canonical]

    def models(self) -> list[ModelInfo]:
        return list(self._infos.values())

    def names(self) -> list[str]:
        """Every id and alias, for /v1/models (aliases listed so clients can discover them)."""
        return list(self._canonical)

    def chat_engines(self) -> list[ChatEngine]:
        return list({engine.info.id: engine for engine in self._chat.values()}.values())

    def engines(self) -> list[Engine]:
        return list(self._engines)
