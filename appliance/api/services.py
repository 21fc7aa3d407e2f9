"""What the api needs from the rest of the appliance, handed to ``create_app`` by the server.

Tests hand in fakes that implement the same Protocols.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from appliance.api.bounds import RequestBounds
from appliance.api.image_fetch import ImageFetcher
from appliance.api.image_files import ImageFiles
from appliance.api.middleware.drain import DrainState
from appliance.api.middleware.failed_auth import FailedAuthLimiter
from appliance.api.reasoning_seal import ReasoningSeal
from appliance.api.stored_state import StateStore
from appliance.api.telemetry.metrics import ApplianceMetrics
from appliance.config import ReasoningField
from appliance.engines.catalog import Catalog
from appliance.ledger import (
    BucketQuery,
    BucketTotal,
    KeyLimits,
    KeyRecord,
    MonthToDate,
    OnCommit,
    RequestRecord,
)


class LedgerSink(Protocol):
    def record(self, row: RequestRecord, on_commit: OnCommit | None = None) -> None: ...


class KeyLookup(Protocol):
    def lookup(self, secret: str) -> KeyRecord | None: ...


class KeyAdmin(Protocol):
    """What the admin HTTP API does with keys (the KeyStore)."""

    def create(self, name: str, limits: KeyLimits | None = None, *,
               admin: bool = False) -> tuple[KeyRecord, str]: ...
    def list(self) -> builtins.list[KeyRecord]: ...
    def get(self, ident: str) -> KeyRecord: ...
    def update(self, ident: str, limits: KeyLimits) -> KeyRecord: ...
    def revoke(self, key_id_or_name_or_prefix: str) -> KeyRecord: ...


class LedgerReader(Protocol):
    """The read side of the ledger: quota seeds and the organization usage endpoints."""

    def month_to_date(self, key_id: str, since: float) -> MonthToDate: ...
    def bucket_totals(self, query: BucketQuery) -> builtins.list[BucketTotal]: ...


@dataclass(frozen=True)
class Pricing:
    """Flat price per request, by canonical model id, recorded on each row at request time."""

    per_request: Mapping[str, float] = field(default_factory=dict)
    currency: str = "USD"

    def price(self, model: str | None) -> float:
        return self.per_request.get(model, 0.0) if model else 0.0


@dataclass(frozen=True)
class Exposure:
    """How the service faces its network ([server] in models.toml)."""

    metrics_public: bool = False  # False: /metrics needs an admin key
    cors_origins: tuple[str, ...] = ()  # empty: no CORS middleware at all


@dataclass(frozen=True)
class Services:
    catalog: Catalog
    ledger: LedgerSink
    keys: KeyLookup
    pricing: Pricing = field(default_factory=Pricing)
    bounds: RequestBounds = field(default_factory=RequestBounds)  # sizes and counts of inputs
    image_files: ImageFiles | None = None  # None: no `response_format: "url"` images
    # Fetches remote image URLs of chat/Responses image parts from the hosts an operator
    # allowed ([server] remote_image_hosts). None: remote image URLs are a 400 (data URLs only).
    image_fetch: ImageFetcher | None = None
    key_admin: KeyAdmin | None = None  # None: the admin key routes answer 404
    reports: LedgerReader | None = None  # None: usage endpoints report nothing, quotas start at 0
    # Stored responses, conversations and stored chat completions. None: `store: true` is a 400
    # naming `store`, and the stored-state routes answer 404.
    state: StateStore | None = None
    # Seals reasoning into encrypted_content (Responses API). The server's key lives in its
    # data dir; this default's lives as long as the Services (tests).
    reasoning_seal: ReasoningSeal = field(default_factory=ReasoningSeal.ephemeral)
    clock: Callable[[], float] = time.monotonic  # rate windows (tests freeze it)
    wall_clock: Callable[[], float] = time.time  # key expiry, calendar months
    rate_window_seconds: float = 60.0  # the "minute" of a key's rpm (tests shorten it)
    # A response's last byte waits for its ledger row to be on disk, at most this long.
    commit_wait_seconds: float = 5.0
    exposure: Exposure = field(default_factory=Exposure)
    # Which field(s) of a chat completion carry a reasoning model's thinking ([server]).
    reasoning_field: ReasoningField = "both"
    metrics: ApplianceMetrics = field(default_factory=ApplianceMetrics)
    auth_failures: FailedAuthLimiter = field(default_factory=FailedAuthLimiter)
    drain: DrainState = field(default_factory=DrainState)  # the server flips it on SIGTERM
