"""The admin key routes on the wire: the key fields a request may set, and OpenAI's project
API key object (``organization.project.api_key``) plus the appliance's limits.

Unknown fields are a 400 (``extra="forbid"``), unlike the model routes: a mistyped limit must
not be silently dropped.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from appliance.ledger import MAX_AMOUNT, MIN_AMOUNT, KeyRecord

_MAX_INTEGER = 2**53  # JSON clients round larger integers
_YEAR_9999_ENDS = 253_402_300_799  # the last second a date can be written in (CLI, logs)


class KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] | None = None
    # The bounds keep numbers within SQLite's 64-bit integers (beyond, the key store failed
    # with a 500; found by tests/fast/test_openapi_fuzz.py).
    rpm: int | None = Field(default=None, ge=1, le=_MAX_INTEGER)
    max_concurrent: int | None = Field(default=None, ge=1, le=_MAX_INTEGER)
    monthly_requests: int | None = Field(default=None, ge=1, le=_MAX_INTEGER)
    monthly_budget: float | None = Field(default=None, ge=MIN_AMOUNT, le=MAX_AMOUNT)
    expires_at: int | None = Field(default=None, ge=0, le=_YEAR_9999_ENDS)  # unix seconds


class CreateKey(KeyFields):
    name: str
    admin: bool = False


def key_json(record: KeyRecord) -> dict[str, Any]:
    limits = record.limits
    return {
        "object": "organization.project.api_key",
        "id": record.id,
        "name": record.name,
        "redacted_value": f"{record.prefix}...",
        "created_at": int(record.created_at),
        "last_used_at": None,  # not tracked: it would cost a key-table write per request
        "owner_project_access": "active" if record.active else "inactive",
        # Appliance keys belong to no person: OpenAI's closest owner is a service account.
        "owner": {"type": "service_account", "service_account": {
            "id": record.id, "name": record.name, "created_at": int(record.created_at),
            "role": "owner" if record.admin else "member"}},
        "revoked_at": None if record.revoked_at is None else int(record.revoked_at),
        "expires_at": None if limits.expires_at is None else int(limits.expires_at),
        "admin": record.admin,
        "models": None if limits.models is None else list(limits.models),
        "rpm": limits.rpm,
        "max_concurrent": limits.max_concurrent,
        "monthly_requests": limits.monthly_requests,
        "monthly_budget": limits.monthly_budget,
    }
