"""The ledger's row types: one request as it is billed, one API key as humans see it.

Plain frozen dataclasses so the api can build them without importing sqlite, and the ledger
can write them without knowing about HTTP. Field names are the column names of the ``requests``
and ``api_keys`` tables (``schema.py``); a test holds the two together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RequestStatus = Literal["ok", "error", "cancelled"]


@dataclass(frozen=True)
class RequestRecord:
    """One /v1 request, written once it ends (and possibly earlier, then overwritten by id)."""

    request_id: str
    started_at: float  # unix seconds
    endpoint: str  # e.g. "/v1/chat/completions"
    method: str
    key_id: str | None
    model: str | None
    status: RequestStatus
    http_status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    price: float = 0.0
    currency: str = "USD"
    error_code: str | None = None
    stream: bool = False
    audio_seconds: float = 0.0  # transcriptions and translations: the audio's duration
    images: int = 0  # image requests: how many images were made


@dataclass(frozen=True)
class KeyRecord:
    """An API key without its secret: the secret is shown once at creation and never stored."""

    id: str  # "key_" + 12 hex chars
    name: str
    prefix: str  # the secret's first characters, e.g. "sk-app-AbCd", so humans can tell keys apart
    created_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None
