"""API keys: creation, limits, revocation and the constant-time lookup the auth layer uses.

Owns the ``api_keys`` table of its own SQLite file. A secret is ``sk-app-`` followed by 32
random bytes (urlsafe base64); only its SHA-256 is stored, so a copied database file grants
nothing. One connection serves every thread (the server looks keys up via
``anyio.to_thread``), serialised by a lock. Every statement binds its values: no SQL is ever
built from a name or a limit.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from appliance.ledger.records import MAX_AMOUNT, MIN_AMOUNT, KeyLimits, KeyRecord
from appliance.ledger.schema import open_database

SECRET_PREFIX = "sk-app-"
# Enough of the random part to tell keys apart in a list, far too little to guess the rest.
_SHOWN_CHARS = 4
_FIELDS = ("id, name, prefix, created_at, revoked_at, admin, models, rpm, max_concurrent,"
           " monthly_requests, monthly_budget, expires_at")
# Names appear in tables, CSV and URLs: printable, no leading space, no separators of our own.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}")
# Keys are named by id, name or prefix alike: a name shaped like an id or a secret's prefix
# could shadow another key's (a decoy named after a leaked key's id kept it from revocation).
_LIKE_AN_ID = re.compile(r"key_[0-9a-f]{12}|sk-.*", re.IGNORECASE)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class InvalidKeyField(ValueError):
    """A key's field no key can have; ``field`` names it (the API's ``param``)."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def check_key_name(name: str) -> str:
    """The name stripped, or ValueError saying what a name may contain."""
    name = name.strip()
    if not _NAME.fullmatch(name):
        shown = repr(name) if len(name) <= 64 else f"of {len(name)} characters"
        raise InvalidKeyField(
            f"invalid key name {shown}: 1 to 64 characters, letters, digits, space and . _ @ -,"
            " starting with a letter or digit", "name")
    if _LIKE_AN_ID.fullmatch(name):
        raise InvalidKeyField(f"invalid key name {name!r}: it has the shape of a key's id "
                              "(key_ and 12 hex digits) or secret (sk-...), which name keys too",
                              "name")
    return name


def check_limits(limits: KeyLimits, *, admin: bool = False) -> KeyLimits:
    """Raises ValueError for a limit no key can have; returns ``limits`` unchanged."""
    for label, value in (("rpm", limits.rpm), ("max_concurrent", limits.max_concurrent),
                         ("monthly_requests", limits.monthly_requests)):
        if value is not None and (isinstance(value, bool) or value < 1):
            raise InvalidKeyField(f"{label} must be a whole number of at least 1, got "
                                  f"{value!r}", label)
    budget = limits.monthly_budget
    if budget is not None and not MIN_AMOUNT <= budget <= MAX_AMOUNT:
        raise InvalidKeyField(f"monthly_budget must be from {MIN_AMOUNT:g} to {MAX_AMOUNT:g}, "
                              f"got {budget!r}", "monthly_budget")
    if limits.models is not None and not limits.models:
        raise InvalidKeyField("models must name at least one model (leave it out for every "
                              "model)", "models")
    if admin and limits != KeyLimits(expires_at=limits.expires_at):
        given = next(f.name for f in dataclasses.fields(limits)
                     if f.name != "expires_at" and getattr(limits, f.name) is not None)
        raise InvalidKeyField("admin keys call no models: only an expiry date applies to them, "
                              f"not {given}", given)
    return limits


class KeyStore:
    """The key table behind one lock-guarded connection. Thread-safe; ``close()`` when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_database(path, check_same_thread=False)
        self._closed = False

    def create(
        self, name: str, limits: KeyLimits | None = None, *, admin: bool = False
    ) -> tuple[KeyRecord, str]:
        """Creates a key; returns it with its secret, which is never available again."""
        name = check_key_name(name)
        limits = check_limits(limits or KeyLimits(), admin=admin)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id="key_" + secrets.token_hex(6),
            name=name,
            prefix=secret[: len(SECRET_PREFIX) + _SHOWN_CHARS],
            created_at=time.time(),
            revoked_at=None,
            limits=limits,
            admin=admin,
        )
        with self._lock:
            try:
                self._db.execute(
                    f"INSERT INTO api_keys ({_FIELDS}, secret_hash)"
                    " VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [record.id, record.name, record.prefix, record.created_at, int(admin),
                     *_limit_values(limits), hash_secret(secret)],
                )
            except sqlite3.IntegrityError as error:
                # idx_api_keys_active_name; an id or hash collision is not worth a retry path.
                raise InvalidKeyField(f"an active key named {name!r} already exists",
                                      "name") from error
        return record, secret

    def list(self) -> builtins.list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        return self._select(f"SELECT {_FIELDS} FROM api_keys ORDER BY created_at, id", [])

    def get(self, ident: str) -> KeyRecord:
        """The key whose id, name or prefix equals ``ident``; active keys win over revoked ones.

        Raises KeyError when none matches, or when several equally good ones do.
        """
        ident = ident.strip()
        with self._lock:
            return self._one_locked(ident, active_only=False)

    def update(self, ident: str, limits: KeyLimits) -> KeyRecord:
        """Replaces the limits of the one active key matching ``ident`` (see ``get``)."""
        ident = ident.strip()
        with self._lock:
            found = self._one_locked(ident, active_only=True)
            check_limits(limits, admin=found.admin)
            self._db.execute(
                "UPDATE api_keys SET models = ?, rpm = ?, max_concurrent = ?,"
                " monthly_requests = ?, monthly_budget = ?, expires_at = ? WHERE id = ?",
                [*_limit_values(limits), found.id],
            )
            return self._one_locked(found.id, active_only=True)

    def revoke(self, key_id_or_name_or_prefix: str) -> KeyRecord:
        """Revokes the one active key whose id, name or prefix equals the argument.

        Raises KeyError when no active key matches, or when several do (say which to pick).
        """
        ident = key_id_or_name_or_prefix.strip()
        with self._lock:
            found = self._one_locked(ident, active_only=True)
            self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ?", [time.time(), found.id]
            )
            return self._one_locked(found.id, active_only=False)

    def lookup(self, secret: str) -> KeyRecord | None:
        """The key with this secret, revoked or expired ones included (the caller says which
        it is, so a client learns why it was refused), or None for an unknown secret."""
        digest = hash_secret(secret)
        with self._lock:
            row = self._db.execute(
                f"SELECT {_FIELDS}, secret_hash FROM api_keys WHERE secret_hash = ?", [digest]
            ).fetchone()
        # The indexed lookup finds the row; the digest comparison is what decides, in constant
        # time, so a timing side channel can tell nothing about how close a guess came.
        if row is None or not hmac.compare_digest(row[-1], digest):
            return None
        return _record(row)

    def count_active(self) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"
            ).fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _one_locked(self, ident: str, *, active_only: bool) -> KeyRecord:
        matches = self._select_locked(
            f"SELECT {_FIELDS} FROM api_keys WHERE (id = ? OR name = ? OR prefix = ?)"
            " ORDER BY created_at",
            [ident, ident, ident],
        )
        exact = [m for m in matches if m.id == ident]
        if exact:  # an id names one key, whatever other keys are called
            if active_only and not exact[0].active:
                raise KeyError(f"the key {ident!r} is not active")
            return exact[0]
        active = [m for m in matches if m.active]
        candidates = active if (active or active_only) else matches
        if not candidates:
            state = "active key" if active_only else "key"
            raise KeyError(f"no {state} has the id, name or prefix {ident!r}")
        if len(candidates) > 1:
            ids = ", ".join(f"{m.id} ({m.name})" for m in candidates)
            raise KeyError(f"{ident!r} matches several keys: {ids}; name it by id")
        return candidates[0]

    def _select(self, sql: str, params: builtins.list[Any]) -> builtins.list[KeyRecord]:
        with self._lock:
            return self._select_locked(sql, params)

    def _select_locked(self, sql: str, params: builtins.list[Any]) -> builtins.list[KeyRecord]:
        return [_record(row) for row in self._db.execute(sql, params).fetchall()]


def _limit_values(limits: KeyLimits) -> builtins.list[Any]:
    models = None if limits.models is None else json.dumps(list(limits.models))
    return [models, limits.rpm, limits.max_concurrent, limits.monthly_requests,
            limits.monthly_budget, limits.expires_at]


def _record(row: tuple[Any, ...]) -> KeyRecord:
    models = None if row[6] is None else tuple(json.loads(row[6]))
    limits = KeyLimits(models=models, rpm=row[7], max_concurrent=row[8],
                       monthly_requests=row[9], monthly_budget=row[10], expires_at=row[11])
    return KeyRecord(id=row[0], name=row[1], prefix=row[2], created_at=row[3],
                     revoked_at=row[4], limits=limits, admin=bool(row[5]))
