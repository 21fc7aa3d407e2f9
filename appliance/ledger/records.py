"""The ledger's row types: one request as it is billed, one API key as humans see it.

Plain frozen dataclasses so the api can build them without importing sqlite, and the ledger
can write them without knowing about HTTP. Field names are the column names of the ``requests``
and ``api_keys`` tables (``schema.py``); a test holds the two together.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass, field
from typing import Literal

# Amounts of money (prices, budgets) lie between these: spend is summed in billionths, and a
# trillion keeps those within a 64-bit integer, far from a double's range (a budget of 1e300
# failed every request of its key and the key listing).
MIN_AMOUNT = 1e-9
MAX_AMOUNT = 1e12


def money(amount: float) -> str:
    """An amount as people write it: with cents, or every digit when it has a finer part
    (a budget of 0.0025 is not "0.00")."""
    # The decimal the float was written as (its repr), to a billionth: float arithmetic on
    # amounts this large or small would misjudge the cents.
    exact = decimal.Context(prec=60).quantize(decimal.Decimal(repr(amount)),
                                              decimal.Decimal("1e-9")).normalize()
    if int(exact.as_tuple().exponent) >= -2:
        return f"{exact:.2f}"
    return f"{exact:f}"


# "started": written at admission, overwritten by the final status when the request ends.
# "interrupted": a "started" row found at the next start, i.e. the process died mid-request.
RequestStatus = Literal["started", "ok", "error", "cancelled", "interrupted"]


@dataclass(frozen=True)
class RequestRecord:
    """One /v1 request: a "started" row at admission, then its final row (upserted by id)."""

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
    # The kind of model the route serves ("chat", "embedding", "transcription", "image");
    # None for routes that call no model. The usage reports select rows by it.
    kind: str | None = None
    characters: int = 0  # speech requests: the input text's characters (migration m007)


@dataclass(frozen=True)
class KeyLimits:
    """What one key may do. None means "no limit" (``models``: every served model)."""

    models: tuple[str, ...] | None = None  # canonical model ids
    rpm: int | None = None  # requests admitted per rolling minute
    max_concurrent: int | None = None  # requests in flight at once
    monthly_requests: int | None = None  # requests admitted per calendar month (UTC)
    monthly_budget: float | None = None  # spend per calendar month (UTC), server currency
    expires_at: float | None = None  # unix seconds; the key stops working at that instant


@dataclass(frozen=True)
class KeyRecord:
    """An API key without its secret: the secret is shown once at creation and never stored."""

    id: str  # "key_" + 12 hex chars
    name: str
    prefix: str  # the secret's first characters, e.g. "sk-app-AbCd", so humans can tell keys apart
    created_at: float
    revoked_at: float | None
    limits: KeyLimits = field(default_factory=KeyLimits)
    # Admin keys manage keys and read usage over HTTP; they cannot call models (as OpenAI's).
    admin: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def expired(self, now: float) -> bool:
        return self.limits.expires_at is not None and now >= self.limits.expires_at
