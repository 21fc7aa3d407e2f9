"""Model ids and aliases -> loaded engines, by capability.

An unknown name is a ModelNotFound (404), never the default model. Aliases resolve to the
canonical id, which is what responses report (as OpenAI reports a dated snapshot for an alias).
"""

from __future__ import annotations

from collections.abc import Iterable

from appliance.engines.base import ChatEngine, ModelInfo
from appliance.errors import InvalidRequest, ModelNotFound


class Catalog:
    def __init__(self, chat: Iterable[tuple[ChatEngine, tuple[str, ...]]]):
        """Takes each engine with its aliases; names are unique (config checked it)."""
        self._chat: dict[str, ChatEngine] = {}
        self._canonical: dict[str, str] = {}
        self._infos: dict[str, ModelInfo] = {}
        for engine, aliases in chat:
            info = engine.info
            self._infos[info.id] = info
            for name in (info.id, *aliases):
                self._chat[name] = engine
                self._canonical[name] = info.id

    def chat(self, name: str) -> ChatEngine:
        engine = self._chat.get(name)
        if engine is None:
            if name in self._canonical:
                raise InvalidRequest(
                    f"The model `{name}` does not support chat completions.", param="model"
                )
            raise ModelNotFound(name)
        return engine

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

    def engines(self) -> list[ChatEngine]:
        seen: dict[str, ChatEngine] = {}
        for engine in self._chat.values():
            seen.setdefault(engine.info.id, engine)
        return list(seen.values())
