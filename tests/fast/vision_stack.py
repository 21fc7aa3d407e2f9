"""The fast tier's stack for image input: the app over a fake vision model (alias
``gpt-4.1-mini``) and a text-only one (``gpt-4o-mini``), with the bounds and the image fetcher
a test asks for; and the pictures the tests send (made with Pillow, as data URLs)."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
from PIL import Image

from appliance.api.app import create_app
from appliance.api.bounds import RequestBounds
from appliance.api.image_fetch import ImageFetcher
from appliance.api.services import Services
from appliance.engines.base import CHAT, Listing
from appliance.engines.catalog import Catalog
from tests.fakes import FakeChatEngine, FakeKeys, FakeVisionEngine, ListLedger

API_KEY = "sk-app-vision-key-0123456789"
VISION = "gpt-4.1-mini"
TEXT_ONLY = "gpt-4o-mini"


@dataclass
class VisionStack:
    vision: FakeVisionEngine
    ledger: ListLedger
    client: openai.AsyncOpenAI
    http: httpx2.AsyncClient

    async def post(self, path: str, body: dict[str, Any]) -> httpx2.Response:
        return await self.http.post(path, json=body,
                                    headers={"authorization": f"Bearer {API_KEY}"})


@asynccontextmanager
async def vision_stack(bounds: RequestBounds | None = None,
                       image_fetch: ImageFetcher | None = None) -> AsyncIterator[VisionStack]:
    vision = FakeVisionEngine()
    ledger = ListLedger()
    keys = FakeKeys()
    keys.add(API_KEY)
    services = Services(
        catalog=Catalog([Listing(CHAT, vision, (VISION,)),
                         Listing(CHAT, FakeChatEngine(), (TEXT_ONLY,))]),
        ledger=ledger, keys=keys, bounds=bounds or RequestBounds(), image_fetch=image_fetch)
    transport = httpx2.ASGITransport(app=create_app(services))
    async with httpx2.AsyncClient(transport=transport, base_url="http://appliance.test",
                                  timeout=30) as http:
        client = openai.AsyncOpenAI(base_url="http://appliance.test/v1", api_key=API_KEY,
                                    http_client=http, max_retries=0)
        yield VisionStack(vision, ledger, client, http)


def picture(width: int, height: int, image_format: str = "PNG",
            colour: tuple[int, int, int] = (200, 40, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format=image_format)
    return out.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_declaring(width: int, height: int, padding: int = 0) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` (an image bomb
    when large); ``padding`` bytes of a private chunk after the pixel data make it bigger
    without changing what its header says."""
    body = (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 16)))
    if padding:
        body += _chunk(b"prVt", b"\0" * padding)
    return body + _chunk(b"IEND", b"")


def padded_png(total_bytes: int) -> bytes:
    """A 4 x 4 PNG of exactly ``total_bytes`` bytes."""
    small = png_declaring(4, 4, padding=1)
    return png_declaring(4, 4, padding=1 + total_bytes - len(small))


def image_part(url: str, detail: str | None = None) -> dict[str, Any]:
    image_url: dict[str, Any] = {"url": url}
    if detail is not None:
        image_url["detail"] = detail
    return {"type": "image_url", "image_url": image_url}


def user_turn(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(parts)}


def chat_body(*messages: dict[str, Any], model: str = VISION) -> dict[str, Any]:
    return {"model": model, "messages": list(messages), "max_tokens": 16}


def error_of(response: httpx2.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error
