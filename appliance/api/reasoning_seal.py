"""The sealed reasoning of the Responses API: the ``encrypted_content`` of a reasoning item,
an opaque token only this server can read back.

A stateless client (``store: false``, as Codex runs) cannot keep the model's reasoning on the
server, so it carries it: ``include: ["reasoning.encrypted_content"]`` gives each reasoning
item a token, and the next turn hands the item back. The token is AES-256-GCM (authenticated:
a changed byte fails to open) of the reasoning text, with the owner's key id as associated
data, so a token opens only for the key it was made for (another key's reasoning cannot be
fed to a model through it). The key is 32 random bytes kept in the data dir, created on first
boot with mode 0600 and read at every boot after, so tokens outlive restarts; a server with
another key (another data dir) cannot open them, and says so with a 400 naming the field.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.errors import ConfigError, InvalidRequest

log = logging.getLogger("appliance.api")
KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # GCM's standard nonce; random per token (2^-32 collision odds at 2^32)
_VERSION = b"\x01"  # the token format, first byte of every token
# Associated data: what a token is for, and whose it is (the key id), authenticated with it.
_PURPOSE = b"appliance reasoning.encrypted_content v1\x00"
_TOKEN_OVERHEAD = len(_VERSION) + _NONCE_BYTES + 16  # + the GCM tag
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_-]*={0,2}")  # base64url, as seal() writes it


def sealed_chars(text_bytes: int) -> int:
    """The length of the token that seals ``text_bytes`` bytes of UTF-8 (base64url)."""
    return 4 * -(-(text_bytes + _TOKEN_OVERHEAD) // 3)


def _unreadable(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {why}. Send the reasoning item back as this "
                          "server returned it, to the key it was made for, or leave "
                          "'encrypted_content' out.", param=param, code="invalid_encrypted_content")


class ReasoningSeal:
    """Seals reasoning text into tokens and opens them, under one key."""

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise ValueError(f"a reasoning seal key is {KEY_BYTES} bytes, not {len(key)}")
        self._cipher = AESGCM(key)

    @classmethod
    def ephemeral(cls) -> ReasoningSeal:
        """A seal whose key lives as long as this object (tests, a server without a data dir):
        its tokens do not survive a restart."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_key_file(cls, path: Path) -> ReasoningSeal:
        """The seal of the key in ``path``, created there (mode 0600) if it is missing."""
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(_read_key(path))
        # O_EXCL: of two processes booting on one data dir, one writes the key, and the other
        # reads it (it never overwrites a key whose tokens are out there).
        key = secrets.token_bytes(KEY_BYTES)
        with os.fdopen(descriptor, "w") as file:
            file.write(base64.b64encode(key).decode() + "\n")
        log.info("created the reasoning seal key %s", path)
        return cls(key)

    @staticmethod
    def _aad(owner: str | None) -> bytes:
        return _PURPOSE + (owner or "").encode()

    def seal(self, text: str, owner: str | None) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._cipher.encrypt(nonce, text.encode(), self._aad(owner))
        return base64.urlsafe_b64encode(_VERSION + nonce + sealed).decode()

    def open(self, token: str, owner: str | None, param: str, max_chars: int) -> str:
        """The reasoning text of ``token``; a 400 naming ``param`` if it is longer than
        ``max_chars``, not a token, or not one this server made for ``owner``."""
        if len(token) > max_chars:
            raise InvalidRequest(f"Invalid '{param}': a string of {len(token)} characters; "
                                 f"this server allows at most {max_chars}.", param=param,
                                 code="string_above_max_length")
        # Only the alphabet our tokens are written in: the lenient decoder would skip other
        # characters and open the token anyway.
        if _TOKEN_TEXT.fullmatch(token) is None:
            raise _unreadable(param, "it is not an encrypted_content this server made")
        try:
            raw = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            raise _unreadable(param, "it is not an encrypted_content this server made") from None
        if len(raw) < _TOKEN_OVERHEAD or raw[:1] != _VERSION:
            raise _unreadable(param, "it is not an encrypted_content this server made")
        nonce, sealed = raw[1:1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES:]
        try:
            text = self._cipher.decrypt(nonce, sealed, self._aad(owner))
        except InvalidTag:
            raise _unreadable(param, "it does not open: it was changed, made by another "
                              "server, or made for another key") from None
        return text.decode()


def _read_key(path: Path) -> bytes:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Anyone who reads it can read every token and make new ones: say so at every boot.
        log.warning("the reasoning seal key %s is readable by others (mode %o): chmod 600 it",
                    path, stat.S_IMODE(mode))
    text = path.read_text().strip()
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path}: not a reasoning seal key ({KEY_BYTES} bytes in base64). "
                          "Restore it, or delete it to make a new one (the encrypted_content "
                          "tokens given out so far then stop opening).")
    return key
