"""A key's model list: models outside it do not exist for that key.

``KeyScopedCatalog`` wraps the real catalog for the api. The admission middleware sets the
current key's allowed ids in a context variable for the duration of the request, so every
handler's ``catalog.get(CHAT, name)`` (and ``/v1/models``) sees only the key's models without
knowing about keys. A model outside the list gets the same 404 as an unknown one: the answer
must not reveal that it exists. The variable belongs to the instance (one per app), and its
values to each request's task, so no state is shared between requests or apps.

Every public Catalog method is overridden (a test checks), so a method added to Catalog later
cannot silently bypass the list.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from appliance.engines.base import E, Kind, ModelInfo
from appliance.engines.catalog import Catalog, Engine
from appliance.errors import ModelNotFound


class KeyScopedCatalog(Catalog):
    def __init__(self, inner: Catalog):
        # No super().__init__(): this object holds no engines of its own, it filters inner's.
        self._inner = inner
        self.allowed: ContextVar[frozenset[str] | None] = ContextVar(
            f"allowed_models_{id(self)}", default=None)

    def _visible(self, model_id: str) -> bool:
        allowed = self.allowed.get()
        return allowed is None or model_id in allowed

    def _hide(self, name: str) -> None:
        """Raises the unknown-model 404 for a known model outside the key's list."""
        try:
            info = self._inner.resolve(name)
        except ModelNotFound:
            return  # unknown anyway: the inner catalog gives its own answer
        if not self._visible(info.id):
            raise ModelNotFound(name)

    def get(self, kind: Kind[E], name: str) -> E:
        self._hide(name)
        return self._inner.get(kind, name)

    def resolve(self, name: str) -> ModelInfo:
        info = self._inner.resolve(name)
        if not self._visible(info.id):
            raise ModelNotFound(name, param=None)
        return info

    def kind_of(self, name: str) -> Kind[Any]:
        self.resolve(name)
        return self._inner.kind_of(name)

    def models(self) -> list[ModelInfo]:
        return [info for info in self._inner.models() if self._visible(info.id)]

    def names(self) -> list[str]:
        return [name for name in self._inner.names()
                if self._visible(self._inner.resolve(name).id)]

    # The server's own use (warm-up, shutdown): every engine, whoever asks.
    def engines_of(self, kind: Kind[E]) -> list[E]:
        return self._inner.engines_of(kind)

    def engines(self) -> list[Engine]:
        return self._inner.engines()
