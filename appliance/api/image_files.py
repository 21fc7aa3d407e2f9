"""Generated images kept for ``response_format: "url"``: saved under the data dir, served at an
unguessable URL for a limited time (OpenAI's URLs last 60 minutes), then deleted.

Each file is ``<folder>/<token>.<format>`` with a 256-bit random token: the URL is the
capability, as OpenAI's signed blob URLs are, so fetching it takes no API key (clients and
browsers fetch image URLs without one). A file's age comes from its modification time, so
images left by an earlier run expire on schedule too. Expiry is checked on every read, and a
sweeper deletes expired files in the background.

A URL starts with ``[server] public_url`` when one is configured (what clients reach the
server as, through a proxy or a DNS name), else with the address of the socket the request
came in on: never with the client's ``Host`` header, which would let anyone make the server
hand out links to a host of their choosing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread

log = logging.getLogger("appliance.api")
DEFAULT_TTL_S = 3600.0
# token_urlsafe(32) + format, matched whole (fullmatch: "$" would take a trailing newline)
NAME = re.compile(r"[A-Za-z0-9_-]{43}\.(png|jpeg|webp)")
MAX_SWEEP_INTERVAL_S = 60.0


@dataclass(frozen=True)
class StoredImage:
    content: bytes
    extension: str
    seconds_left: float


class ImageFiles:
    def __init__(self, folder: Path, ttl_s: float = DEFAULT_TTL_S,
                 public_url: str | None = None):
        self.folder = folder
        self.ttl_s = ttl_s
        self.public_url = None if public_url is None else public_url.rstrip("/")

    def url(self, scope: Mapping[str, Any], path: str) -> str:
        """The absolute URL of ``path`` (the file route's path) for the request in ``scope``."""
        return (self.public_url or socket_origin(scope)) + path

    def save(self, content: bytes, extension: str) -> str:
        """Writes one image; returns its file name (the last part of its URL)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        name = f"{secrets.token_urlsafe(32)}.{extension}"
        partial = self.folder / f".{name}.partial"
        partial.write_bytes(content)
        # Renamed into place: a reader never sees half a file under its final name.
        os.replace(partial, self.folder / name)
        return name

    def read(self, name: str, now: float | None = None) -> StoredImage | None:
        """The image behind a URL, or None if there is none or it has expired."""
        if NAME.fullmatch(name) is None:
            return None
        path = self.folder / name
        try:
            with path.open("rb") as handle:
                seconds_left = os.fstat(handle.fileno()).st_mtime + self.ttl_s \
                    - (time.time() if now is None else now)
                if seconds_left <= 0:
                    return None
                content = handle.read()
        except FileNotFoundError:
            return None
        return StoredImage(content, name.rsplit(".", 1)[1], seconds_left)

    def sweep(self, now: float | None = None) -> int:
        """Deletes expired images (and leftovers of interrupted writes); returns how many."""
        cutoff = (time.time() if now is None else now) - self.ttl_s
        removed = 0
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # a concurrent sweep or read got there first
                continue
        return removed

    @property
    def sweep_interval_s(self) -> float:
        return min(MAX_SWEEP_INTERVAL_S, max(self.ttl_s / 2, 0.5))


def socket_origin(scope: Mapping[str, Any]) -> str:
    """``scheme://host:port`` of the local socket the request arrived on (uvicorn puts it in
    ``scope["server"]``), the port left out when it is the scheme's default."""
    scheme = scope.get("scheme", "http")
    server = scope.get("server")
    if not server:
        raise RuntimeError("no [server] public_url and no local address in the request scope")
    host, port = str(server[0]), server[1]
    if ":" in host:
        host = f"[{host}]"  # IPv6
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" if port in (None, default) else f"{scheme}://{host}:{port}"


async def _sweep_forever(files: ImageFiles) -> None:
    while True:
        try:
            removed = await anyio.to_thread.run_sync(files.sweep)
            if removed:
                log.info("deleted %d expired image file(s)", removed)
        except OSError as exc:  # a full or read-only disk must not end the sweeping
            log.warning("sweeping %s failed: %s", files.folder, exc)
        await asyncio.sleep(files.sweep_interval_s)


@contextlib.asynccontextmanager
async def sweeping(files: ImageFiles | None) -> AsyncIterator[None]:
    """Runs the sweeper for the app's lifetime (nothing when no image files are kept)."""
    if files is None:
        yield
        return
    task = asyncio.create_task(_sweep_forever(files))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
