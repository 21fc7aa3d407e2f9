"""Hostile pictures against the real server's vision fixture (SmolLM2 with the tiny random
projector): an image bomb (a PNG of a few dozen bytes declaring 60000 x 60000) is a 400 before
anything decodes it, and a flood of the largest pictures the bounds let through is answered
in bounded memory, while /health keeps answering under a second."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx2
from PIL import Image

from tests.hostile.conftest import VISION_MODEL
from tests.hostile.harness import Bounds, HostileServer
from tests.hostile.test_schemas import ledger_kib

URL = "messages[0].content[1].image_url.url"
SIDE = 4096  # the largest square picture the default pixel bound lets through


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def _bomb(width: int, height: int) -> str:
    png = (b"\x89PNG\r\n\x1a\n"
           + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + _chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _padded_png(total_bytes: int) -> str:
    """A 4 x 4 PNG padded with a private chunk after its pixels to ``total_bytes``."""
    head = (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 52)))
    tail = _chunk(b"IEND", b"")
    png = head + _chunk(b"prVt", b"\0" * (total_bytes - len(head) - len(tail) - 12)) + tail
    assert len(png) == total_bytes
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _largest(shade: int) -> str:
    """A 4096 x 4096 PNG (16.7 megapixels, 48 MiB once decoded), a few dozen KiB as sent."""
    out = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (shade, 255 - shade, 90)).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _body(*urls: str, model: str = VISION_MODEL) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "What is this?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"model": model, "max_tokens": 2, "temperature": 0,
            "messages": [{"role": "user", "content": parts}]}


def _refused(answer: httpx2.Response, param: str, says: str, status: int = 400) -> None:
    assert answer.status_code == status, answer.text[:2000]
    error = answer.json()["error"]
    assert error["param"] == param and says in error["message"], error


def test_an_image_bomb_is_a_400_before_any_decode(hostile: HostileServer) -> None:
    bomb = _bomb(60000, 60000)
    assert len(bomb) < 200
    responses_body = {"model": VISION_MODEL, "max_output_tokens": 16, "input": [{
        "role": "user", "content": [{"type": "input_image", "image_url": bomb,
                                     "detail": "high"}]}]}
    with hostile.attack("image bomb: a PNG declaring 60000 x 60000, x40",
                        Bounds(peak_rss_mib=40, log_kib=16, ledger_kib=ledger_kib(40))), \
            hostile.http() as http:
        for _ in range(20):
            _refused(http.post("/v1/chat/completions", json=_body(bomb)), URL, "pixels")
            _refused(http.post("/v1/responses", json=responses_body),
                     "input[0].content[0].image_url", "pixels")


def test_past_the_count_size_and_total_bounds_is_refused(hostile: HostileServer) -> None:
    small = _bomb(4, 4)
    with hostile.attack("17 pictures; 5 MiB + 1 byte; 3 of the largest in one request",
                        Bounds(peak_rss_mib=80, log_kib=16, ledger_kib=ledger_kib(10))), \
            hostile.http() as http:
        _refused(http.post("/v1/chat/completions", json=_body(*[small] * 17)),
                 "messages[0].content[17]", "at most 16")
        past_bytes = _padded_png(5 * 1024 * 1024 + 1)
        _refused(http.post("/v1/chat/completions", json=_body(past_bytes)), URL,
                 "at most 5242880 bytes", status=413)
        largest = [_largest(shade) for shade in (10, 20, 30)]
        _refused(http.post("/v1/chat/completions", json=_body(*largest)),
                 "messages[0].content[3]", "pixels in all")


def _truncated(image_format: str, media_type: str) -> str:
    """A picture cut in half: its header reads, its pixels do not decode."""
    out = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 40, 90)).save(out, format=image_format)
    half = out.getvalue()[:len(out.getvalue()) // 2]
    return f"data:{media_type};base64," + base64.b64encode(half).decode()


def test_a_picture_that_fails_to_decode_names_its_part(hostile: HostileServer) -> None:
    pictures = [_truncated("PNG", "image/png"), _truncated("JPEG", "image/jpeg")]
    with hostile.attack("truncated PNG and JPEG, refused by the engine's decode",
                        Bounds(peak_rss_mib=40, log_kib=16, ledger_kib=ledger_kib(4))), \
            hostile.http() as http:
        for url in pictures:
            _refused(http.post("/v1/chat/completions", json=_body(url)), URL,
                     "could not be decoded")
            _refused(http.post("/v1/responses", json={
                "model": VISION_MODEL, "max_output_tokens": 16, "input": [{
                    "role": "user", "content": [
                        {"type": "input_text", "text": "What is this?"},
                        {"type": "input_image", "image_url": url, "detail": "auto"}]}]}),
                "input[0].content[1].image_url", "could not be decoded")


def test_a_flood_of_the_largest_pictures_is_bounded(hostile: HostileServer) -> None:
    """Twelve clients at once, each with two of the largest pictures (twice 48 MiB decoded,
    the most one request may hold). What it costs is set by how many pictures are decoded and
    projected at once (the engine's two prompt threads and its slots), not by the number of
    clients: measured here, the peak grew by about 650 MiB with 4 clients and with 12 (one
    4096 x 4096 picture passes through Pillow's 4-byte pixels, the RGB copy, the projector's
    bitmap and its preprocessing before it becomes 16 tokens). The bound is that, with room."""
    bodies = [_body(_largest(shade), _largest(shade + 1)) for shade in range(0, 240, 20)]

    def send(body: dict[str, Any]) -> int:
        with hostile.http(timeout=300) as http:
            return http.post("/v1/chat/completions", json=body).status_code

    with hostile.attack("12 clients x 2 pictures of 4096 x 4096",
                        Bounds(peak_rss_mib=900, log_kib=64, ledger_kib=ledger_kib(12))), \
            ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        statuses = list(pool.map(send, bodies))
    assert statuses == [200] * len(bodies)
