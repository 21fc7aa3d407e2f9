"""Model ids and aliases -> loaded engines, by kind.

An unknown name is a ModelNotFound (404), never the default model; a known model asked for
the wrong kind is a 400 naming ``model``. Aliases resolve to the canonical id, which is
what responses report (as OpenAI reports a dated snapshot for an alias).

One accessor serves every kind: ``get(CHAT, name)`` returns a ChatEngine, ``get(IMAGE,
name)`` an ImageEngine; a new kind is a new token in engines/base.py, not a new method here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from appliance.engines.base import E, Engine, Kind, Listing, ModelInfo
from appliance.errors import InvalidRequest, ModelNotFound

__all__ = ["Catalog", "Engine"]


class Catalog:
    def __init__(self, listings: Iterable[Listing[Any]]):
        """Takes each engine with its kind and aliases; names are unique (config checked it)."""
        self._listings: dict[str, Listing[Any]] = {}  # every id and alias -> its listing
        self._infos: dict[str, ModelInfo] = {}
        for listing in listings:
            info = listing.engine.info
            self._infos[info.id] = info
            self._listings.update({name: listing for name in (info.id, *listing.aliases)})

    def get(self, kind: Kind[E], name: str) -> E:
        listing = self._listings.get(name)
        if listing is None:
            raise ModelNotFound(name)
        if listing.kind is not kind:
            raise InvalidRequest(f"The model `{name}` does not support {kind.serves}.",
                                 param="model", code="model_not_supported")
        # The listing was built as Listing[E] for this very kind token (Listing ties the two
        # together when it is made), so its engine is an E; the dict only forgot which E.
        return cast(E, listing.engine)

    def resolve(self, name: str) -> ModelInfo:
        """The model behind an id or alias, whatever its kind."""
        listing = self._listings.get(name)
        if listing is None:
            raise ModelNotFound(name, param=None)
        return self._infos[listing.engine.info.id]

    def kind_of(self, name: str) -> Kind[Any]:
        """The kind of the model behind an id or alias (for /v1/models)."""
        listing = self._listings.get(name)
        if listing is None:
            raise ModelNotFound(name, param=None)
        return listing.kind

    def models(self) -> list[ModelInfo]:
        return list(self._infos.values())

    def names(self) -> list[str]:
        """Every id and alias, for /v1/models (aliases listed so clients can discover them)."""
        return list(self._listings)

    def engines_of(self, kind: Kind[E]) -> list[E]:
        """Every engine of one kind, once each."""
        return [self.get(kind, model_id) for model_id in self._infos
                if self._listings[model_id].kind is kind]

    def engines(self) -> list[Engine]:
        return [self._listings[model_id].engine for model_id in self._infos]
