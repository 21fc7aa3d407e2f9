"""What the api needs from the rest of the appliance, handed to ``create_app`` by the server.

Tests hand in fakes that implement the same Protocols.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from appliance.engines.catalog import Catalog
from appliance.ledger import KeyRecord, RequestRecord


class LedgerSink(Protocol):
    def record(self, row: RequestRecord) -> None: ...


class KeyLookup(Protocol):
    def lookup(self, secret: str) -> KeyRecord | None: ...


@dataclass(frozen=True)
class Pricing:
    """Flat price per request, by canonical model id, recorded on each row at request time."""

    per_request: Mapping[str, float] = field(default_factory=dict)
    currency: str = "USD"

    def price(self, model: str | None) -> float:
        return self.per_request.get(model, 0.0) if model else 0.0


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024  # JSON bodies
    max_upload_bytes: int = 25 * 1024 * 1024  # audio uploads (the largest any model accepts)


@dataclass(frozen=True)
class Services:
    catalog: Catalog
    ledger: LedgerSink
    keys: KeyLookup
    pricing: Pricing = field(default_factory=Pricing)
    limits: Limits = field(default_factory=Limits)
