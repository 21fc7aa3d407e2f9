"""Image generation on the real server with the tiny random-weights SD pipeline, through the
official SDK: formats, sizes, n, URLs that fetch and then expire, 400s, ledger rows, and a
client that leaves mid-generation."""

from __future__ import annotations

import asyncio
import base64
import io
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from PIL import Image

from appliance.config import ImageModelConfig
from appliance.engines.base import CancelToken, ImageParams
from appliance.errors import EngineFailure
from devtools.server_harness import TINY_SD, build_tiny_sd
from tests.openapi_contract import validate
from tests.real.conftest import RealServer
from tests.real.session_server import IMAGE_URL_TTL_S
from tests.real.test_chat_real import ledger_row

pytestmark = pytest.mark.real
MODEL = "tiny-random-sd"


def picture(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    return image


def last_cancelled_image_row(server: RealServer, timeout: float = 10.0) -> dict[str, Any]:
    """The client that timed out never saw its request id: the row is found by its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{server.server.ledger_path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("select * from requests where endpoint = ? and status = "
                             "'cancelled' order by started_at desc limit 1",
                             ("/v1/images/generations",)).fetchone()
        db.close()
        if row is not None:
            return dict(row)
        time.sleep(0.1)
    raise AssertionError("no cancelled image request in the ledger")


def image_files(server: RealServer) -> Path:
    return server.server.config.parent / "data" / "images"


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"),
                                                 ("webp", "WEBP")])
def test_b64_images_decode_to_the_size_and_format_asked_for(real_server: RealServer, fmt: Any,
                                                            pil_format: str) -> None:
    raw = real_server.sdk.images.with_raw_response.generate(
        model=MODEL, prompt="a lighthouse at dawn", n=2, size="128x64",
        response_format="b64_json", output_format=fmt,
        **({"output_compression": 80} if fmt != "png" else {}))
    validate(raw.http_response.json(), "ImagesResponse")
    result = raw.parse()
    assert result.data is not None and len(result.data) == 2
    images = [picture(base64.b64decode(item.b64_json or "")) for item in result.data]
    assert [(i.format, i.size, i.mode) for i in images] == [(pil_format, (128, 64), "RGB")] * 2
    assert result.output_format == fmt
    assert result.usage is not None and result.usage.input_tokens > 2
    row = ledger_row(real_server, raw.http_response.headers["x-request-id"])
    assert (row["endpoint"], row["model"], row["status"], row["http_status"]) == \
        ("/v1/images/generations", MODEL, "ok", 200)
    assert (row["images"], row["price"]) == (2, 0.03)
    assert row["prompt_tokens"] == result.usage.input_tokens


def test_a_seed_repeats_and_each_image_has_its_own(real_server: RealServer) -> None:
    def pixels(n: int, seed: int) -> list[bytes]:
        result = real_server.sdk.images.generate(model=MODEL, prompt="a red barn", n=n,
                                                 response_format="b64_json",
                                                 extra_body={"seed": seed})
        assert result.data is not None
        return [picture(base64.b64decode(d.b64_json or "")).tobytes() for d in result.data]

    first = pixels(2, 41)
    assert first == pixels(2, 41)
    assert first[0] != first[1]
    assert pixels(1, 42)[0] != first[0]


def test_default_model_size_and_format(real_server: RealServer) -> None:
    """OpenAI code that names no model, size or format: dall-e-2 (an alias here), the
    model's first size, PNG, and a URL (OpenAI's default response format)."""
    result = real_server.sdk.images.generate(prompt="a cat")
    assert result.data is not None and len(result.data) == 1
    fetched = httpx2.get(result.data[0].url or "")
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert picture(fetched.content).size == (64, 64)


def test_urls_fetch_without_a_key_then_expire_and_are_deleted(real_server: RealServer) -> None:
    result = real_server.sdk.images.generate(model=MODEL, prompt="a boat", n=2,
                                             response_format="url", output_format="jpeg")
    assert result.data is not None
    urls = [item.url or "" for item in result.data]
    assert all(url.startswith(real_server.server.base_url + "/files/images/") for url in urls)
    with httpx2.Client() as http:  # no Authorization header: the URL alone is the key
        for url in urls:
            fetched = http.get(url)
            assert fetched.status_code == 200, fetched.text
            assert fetched.headers["content-type"] == "image/jpeg"
            assert picture(fetched.content).size == (64, 64)
        names = {url.rsplit("/", 1)[1] for url in urls}
        assert names <= {p.name for p in image_files(real_server).iterdir()}
        deadline = time.monotonic() + IMAGE_URL_TTL_S + 60
        while time.monotonic() < deadline and any(http.get(u).status_code == 200 for u in urls):
            time.sleep(0.5)
        assert [http.get(url).status_code for url in urls] == [404, 404]
        # The sweeper deletes expired files from the data dir too.
        while time.monotonic() < deadline and \
                names & {p.name for p in image_files(real_server).iterdir()}:
            time.sleep(0.5)
        assert not names & {p.name for p in image_files(real_server).iterdir()}


@pytest.mark.parametrize(("fields", "param"), [
    ({"size": "512x512"}, "size"),
    ({"size": "wide"}, "size"),
    ({"n": 11}, "n"),
    ({"output_format": "gif"}, "output_format"),
    ({"background": "transparent"}, "background"),
    ({"model": "gpt-4o-mini"}, "model"),
    ({"extra_body": {"negative_prompt": "blur", "guidance": 1.0}}, "negative_prompt"),
    ({"extra_body": {"steps": 0}}, "steps"),
])
def test_errors_are_400s_naming_the_param(real_server: RealServer, fields: dict[str, Any],
                                          param: str) -> None:
    arguments: dict[str, Any] = {"model": MODEL, "prompt": "x", "response_format": "b64_json",
                                 **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        real_server.sdk.images.generate(**arguments)
    assert caught.value.param == param
    row = ledger_row(real_server, caught.value.response.headers["x-request-id"])
    assert (row["http_status"], row["status"], row["price"], row["images"]) == \
        (400, "error", 0.0, 0)


def test_edits_are_a_400_saying_not_served(real_server: RealServer) -> None:
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, "PNG")
    with pytest.raises(openai.BadRequestError) as caught:
        real_server.sdk.images.edit(model=MODEL, image=("a.png", png.getvalue(), "image/png"),
                                    prompt="x")
    assert "not served" in caught.value.message


def test_a_client_that_leaves_stops_generation_between_steps(real_server: RealServer) -> None:
    """A long request whose client gives up: the server stops at the next denoising step
    (its log says so), the row is cancelled and uncharged, and the worker is free again."""
    body = {"model": MODEL, "prompt": "a long one", "size": "128x64", "steps": 150,
            "response_format": "b64_json"}
    headers = {"authorization": f"Bearer {real_server.key}"}
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.post(real_server.base_url + "/images/generations", json=body, headers=headers,
                    timeout=httpx2.Timeout(10.0, read=1.0))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "a cancelled request stopped after step" \
            not in real_server.server.log():
        time.sleep(0.2)
    assert "a cancelled request stopped after step" in real_server.server.log()
    assert "of 150" in real_server.server.log()
    row = last_cancelled_image_row(real_server)
    assert (row["model"], row["price"], row["images"]) == (MODEL, 0.0, 0)
    quick = real_server.sdk.images.generate(model=MODEL, prompt="next", response_format="b64_json")
    assert quick.data is not None and len(quick.data) == 1


# -- the engine in this process: queue order and cancellation, observed without timing -------


class CountingToken(CancelToken):
    """A cancel token that counts how often the engine's worker threads ask it (before and
    between steps: a request waiting for its turn is asked on the event loop's thread too,
    uncounted), turns itself on after ``cancel_after`` asks, and can hold the asking worker
    thread until ``release`` is set."""

    def __init__(self, cancel_after: int | None = None, hold: bool = False):
        super().__init__()
        self.asked = 0
        self.cancel_after = cancel_after
        self.release = threading.Event()
        self.holding = threading.Event()
        if not hold:
            self.release.set()

    @property
    def cancelled(self) -> bool:
        if threading.current_thread() is threading.main_thread():
            return super().cancelled
        self.asked += 1
        self.holding.set()
        self.release.wait()
        if self.cancel_after is not None and self.asked > self.cancel_after:
            self.cancel()
        return super().cancelled


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    from appliance.engines.diffusion import DiffusionEngine

    build_tiny_sd()
    loaded = DiffusionEngine.load(ImageModelConfig(id=MODEL, path=TINY_SD, steps=2,
                                                   sizes=("64x64",), workers=1))
    try:
        loaded.warm_up()
        yield loaded
    finally:
        loaded.close()


def test_a_cancel_stops_between_denoising_steps(engine: Any) -> None:
    token = CountingToken(cancel_after=3)
    with pytest.raises(EngineFailure):
        asyncio.run(engine.generate(ImageParams("x", width=64, height=64, steps=50), token))
    # Asked once before the first step, then after each step: it stopped after step 3 of 50.
    assert token.asked == 4


def test_requests_run_in_arrival_order_and_a_queued_cancel_never_runs(engine: Any) -> None:
    async def scenario() -> tuple[list[str], CountingToken]:
        first_token = CountingToken(hold=True)
        finished: list[str] = []

        async def make(name: str, token: CancelToken) -> None:
            await engine.generate(ImageParams(name, width=64, height=64), token)
            finished.append(name)

        first = asyncio.ensure_future(make("first", first_token))
        await asyncio.to_thread(first_token.holding.wait)  # the only worker is now busy
        dropped_token = CountingToken()
        dropped = asyncio.ensure_future(make("dropped", dropped_token))
        rest = [asyncio.ensure_future(make(name, CancelToken())) for name in ("a", "b", "c")]
        await asyncio.sleep(0)  # every request is queued behind the first
        dropped.cancel()
        first_token.release.set()
        await asyncio.gather(first, *rest)
        assert dropped.cancelled()
        return finished, dropped_token

    finished, dropped_token = asyncio.run(scenario())
    assert finished == ["first", "a", "b", "c"]
    assert dropped_token.asked == 0


def test_a_burst_from_one_key_does_not_starve_another(engine: Any) -> None:
    async def scenario() -> list[str]:
        first_token = CountingToken(hold=True)
        finished: list[str] = []

        async def make(name: str, owner: str, token: CancelToken) -> None:
            await engine.generate(ImageParams(name, width=64, height=64, owner=owner), token)
            finished.append(name)

        first = asyncio.ensure_future(make("a0", "key_a", first_token))
        await asyncio.to_thread(first_token.holding.wait)  # the only worker is now busy
        burst = [asyncio.ensure_future(make(f"a{i}", "key_a", CancelToken()))
                 for i in (1, 2, 3)]
        await asyncio.sleep(0)
        late = asyncio.ensure_future(make("b0", "key_b", CancelToken()))
        await asyncio.sleep(0)
        first_token.release.set()
        await asyncio.gather(first, *burst, late)
        return finished

    # key_a holds its one place (a worker's worth), so the second place waits for another
    # key: b0 takes it on arrival, ahead of key_a's a1, a2 and a3.
    assert asyncio.run(scenario()) == ["a0", "b0", "a1", "a2", "a3"]


def test_another_keys_image_is_made_between_the_steps_of_a_long_one(engine: Any) -> None:
    async def scenario() -> list[str]:
        finished: list[str] = []

        async def make(owner: str, steps: int) -> None:
            await engine.generate(ImageParams("x", width=64, height=64, steps=steps,
                                              owner=owner), CancelToken())
            finished.append(owner)

        long = asyncio.ensure_future(make("key_a", 150))  # some 4 s here
        while engine.occupancy.busy == 0:  # key_a computes
            await asyncio.sleep(0.01)
        await make("key_b", 2)
        await long
        return finished

    assert asyncio.run(scenario()) == ["key_b", "key_a"]  # key_b waited for a turn, not all
    assert engine.occupancy.busy == 0 and engine.occupancy.waiting == 0


def test_one_keys_two_long_images_leave_a_place_for_another_keys(engine: Any) -> None:
    async def scenario() -> list[str]:
        finished: list[str] = []

        async def make(name: str, owner: str, steps: int) -> None:
            await engine.generate(ImageParams(name, width=64, height=64, steps=steps,
                                              owner=owner), CancelToken())
            finished.append(name)

        longs = [asyncio.ensure_future(make(f"a{i}", "key_a", 150)) for i in (1, 2)]
        while engine.occupancy.busy == 0 or engine.occupancy.waiting == 0:
            await asyncio.sleep(0.01)  # a1 computes, a2 waits for a place key_a may take
        await make("b", "key_b", 2)
        await asyncio.gather(*longs)
        return finished

    # b took the place a2 was not given, and its turn between a1's steps: it did not wait
    # for the whole of a1 (some 4 s here), as it would if key_a held both places.
    assert asyncio.run(scenario()) == ["b", "a1", "a2"]
    assert engine.occupancy.busy == 0 and engine.occupancy.waiting == 0


def test_a_request_that_leaves_while_it_waits_for_its_turn_gives_its_place_up(
        engine: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        long = asyncio.ensure_future(engine.generate(
            ImageParams("x", width=64, height=64, steps=150, owner="key_a"), CancelToken()))
        while engine.occupancy.busy == 0:
            await asyncio.sleep(0.01)
        leaving = asyncio.ensure_future(engine.generate(
            ImageParams("y", width=64, height=64, steps=150, owner="key_b"), CancelToken()))
        # key_b takes its turns with key_a: wait until one of them waits for the other.
        while engine.occupancy.waiting == 0:
            await asyncio.sleep(0.01)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await long
        # The place and the turn were given back: the next request runs at once.
        await engine.generate(ImageParams("z", width=64, height=64, owner="key_c"),
                              CancelToken())

    with caplog.at_level("INFO", logger="appliance.engines.diffusion"):
        asyncio.run(scenario())
    stops = [r.getMessage() for r in caplog.records if "a cancelled request" in r.getMessage()]
    assert len(stops) == 1, stops  # key_b's, logged once
    assert engine.occupancy.busy == 0 and engine.occupancy.waiting == 0


def test_closing_stops_a_request_waiting_for_its_turn_even_from_the_event_loop() -> None:
    from appliance.engines.diffusion import DiffusionEngine

    closing = DiffusionEngine.load(ImageModelConfig(id=MODEL, path=TINY_SD, steps=2,
                                                    sizes=("64x64",), workers=1))

    async def scenario() -> list[BaseException | Any]:
        requests = [asyncio.ensure_future(closing.generate(
            ImageParams("x", width=64, height=64, steps=150, owner=owner), CancelToken()))
            for owner in ("key_a", "key_b")]
        while closing.occupancy.waiting == 0:  # one computes, the other waits its turn
            await asyncio.sleep(0.01)
        closing.close()  # blocks this loop until both threads have stopped
        return await asyncio.gather(*requests, return_exceptions=True)

    started = time.monotonic()
    outcomes = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert time.monotonic() - started < 30
    assert [type(o).__name__ for o in outcomes] == ["ServiceUnavailable"] * 2, outcomes
