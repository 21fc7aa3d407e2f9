"""API keys: creation, listing, revocation and the constant-time lookup the auth layer uses.

Owns the ``api_keys`` table of its own SQLite file. A secret is ``sk-app-`` followed by 32
random bytes (urlsafe base64); only its SHA-256 is stored, so a copied database file grants
nothing. One connection serves every thread (the server looks keys up via
``anyio.to_thread``), serialised by a lock.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from appliance.ledger.records import KeyRecord
from appliance.ledger.schema import open_database

SECRET_PREFIX = "sk-app-"
# Enough of the random part to tell keys apart in a list, far too little to guess the rest.
_SHOWN_CHARS = 4
_FIELDS = "id, name, prefix, created_at, revoked_at"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class KeyStore:
    """The key table behind one lock-guarded connection. Thread-safe; ``close()`` when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = open_database(path, check_same_thread=False)
        self._closed = False

    def create(self, name: str) -> tuple[KeyRecord, str]:
        """Creates a key; returns it with its secret, which is never available again."""
        name = name.strip()
        if not name:
            raise ValueError("a key needs a non-empty name")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id="key_" + secrets.token_hex(6),
            name=name,
            prefix=secret[: len(SECRET_PREFIX) + _SHOWN_CHARS],
            created_at=time.time(),
            revoked_at=None,
        )
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO api_keys (id, name, prefix, secret_hash, created_at, revoked_at)"
                    " VALUES (?, ?, ?, ?, ?, NULL)",
                    [record.id, record.name, record.prefix, hash_secret(secret), record.created_at],
                )
            except sqlite3.IntegrityError as error:
                # idx_api_keys_active_name; an id or hash collision is not worth a retry path.
                raise ValueError(f"an active key named {name!r} already exists") from error
        return record, secret

    def list(self) -> builtins.list[KeyRecord]:
        """Every key, revoked ones included, oldest first."""
        return self._select(f"SELECT {_FIELDS} FROM api_keys ORDER BY created_at, id", [])

    def revoke(self, key_id_or_name_or_prefix: str) -> KeyRecord:
        """Revokes the one active key whose id, name or prefix equals the argument.

        Raises KeyError when no active key matches, or when several do (say which to pick).
        """
        ident = key_id_or_name_or_prefix.strip()
        with self._lock:
            matches = self._select_locked(
                f"SELECT {_FIELDS} FROM api_keys WHERE (id = ? OR name = ? OR prefix = ?)"
                " AND revoked_at IS NULL ORDER BY created_at",
                [ident, ident, ident],
            )
            if not matches:
                raise KeyError(f"no active key has the id, name or prefix {ident!r}")
            if len(matches) > 1:
                ids = ", ".join(f"{m.id} ({m.name})" for m in matches)
                raise KeyError(f"{ident!r} matches several active keys: {ids}; revoke by id")
            revoked_at = time.time()
            self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ?", [revoked_at, matches[0].id]
            )
        found = matches[0]
        return KeyRecord(found.id, found.name, found.prefix, found.created_at, revoked_at)

    def lookup(self, secret: str) -> KeyRecord | None:
        """The active key with this secret, or None (unknown or revoked)."""
        digest = hash_secret(secret)
        with self._lock:
            row = self._db.execute(
                f"SELECT {_FIELDS}, secret_hash FROM api_keys WHERE secret_hash = ?", [digest]
            ).fetchone()
        # The indexed lookup finds the row; the digest comparison is what decides, in constant
        # time, so a timing side channel can tell nothing about how close a guess came.
        if row is None or not hmac.compare_digest(row[5], digest):
            return None
        record = _record(row)
        return record if record.revoked_at is None else None

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

    def _select(self, sql: str, params: builtins.list[Any]) -> builtins.list[KeyRecord]:
        with self._lock:
            return self._select_locked(sql, params)

    def _select_locked(self, sql: str, params: builtins.list[Any]) -> builtins.list[KeyRecord]:
        return [_record(row) for row in self._db.execute(sql, params).fetchall()]


def _record(row: tuple[Any, ...]) -> KeyRecord:
    return KeyRecord(id=row[0], name=row[1], prefix=row[2], created_at=row[3], revoked_at=row[4])
