"""/v1/images/generations over a fake engine, through the official SDK, checked against
OpenAI's spec; the URL files; the 400s; the ledger row; a client that leaves."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from PIL import Image

from appliance.api.app import create_app
from appliance.api.image_files import ImageFiles
from appliance.api.services import Services
from appliance.config import load_config
from appliance.engines.base import CHAT, IMAGE, Listing
from appliance.engines.catalog import Catalog
from appliance.errors import ConfigError
from tests.conftest import API_KEY, FastStack
from tests.fakes import FakeChatEngine, FakeImageEngine, ListLedger
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
AUTH = {"authorization": f"Bearer {API_KEY}"}


def picture(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


async def test_b64_images_of_the_size_asked_for_validate_and_are_ledgered(
        stack: FastStack) -> None:
    raw = await stack.client.images.with_raw_response.generate(
        model="fake-image", prompt="a lighthouse at dawn", n=3, size="128x64",
        response_format="b64_json")
    body = raw.http_response.json()
    validate(body, "ImagesResponse")
    result = raw.parse()
    assert result.data is not None and len(result.data) == 3
    for item in result.data:
        assert item.url is None and item.b64_json is not None
        image = picture(item.b64_json)
        assert (image.format, image.size, image.mode) == ("PNG", (128, 64), "RGB")
    assert result.output_format == "png"
    assert result.usage is not None
    assert result.usage.input_tokens == 6 == result.usage.input_tokens_details.text_tokens
    assert abs(body["created"] - time.time()) < 60
    row = stack.ledger.rows[-1]
    assert (row.endpoint, row.model, row.status, row.http_status) == \
        ("/v1/images/generations", "fake-image", "ok", 200)
    assert (row.images, row.price, row.prompt_tokens) == (3, 0.04, 6)


async def test_each_image_has_its_own_seed_and_a_seed_repeats(stack: FastStack) -> None:
    first = await stack.client.images.generate(model="fake-image", prompt="x", n=2,
                                               size="64x64", response_format="b64_json",
                                               extra_body={"seed": 7})
    again = await stack.client.images.generate(model="fake-image", prompt="x", n=1,
                                               size="64x64", response_format="b64_json",
                                               extra_body={"seed": 8})
    assert first.data is not None and again.data is not None
    colours = [picture(d.b64_json or "").convert("RGB").getpixel((0, 0)) for d in first.data]
    assert colours == [FakeImageEngine.colour(7), FakeImageEngine.colour(8)]
    assert again.data[0].b64_json == first.data[1].b64_json


async def test_url_images_fetch_without_a_key_until_they_expire(stack: FastStack) -> None:
    result = await stack.client.images.generate(model="fake-image", prompt="a red barn", n=2,
                                                response_format="url")
    assert result.data is not None and len(result.data) == 2
    urls = [d.url or "" for d in result.data]
    assert all(d.b64_json is None for d in result.data)
    assert len(set(urls)) == 2
    for url in urls:
        assert url.startswith("http://appliance.test/files/images/") and url.endswith(".png")
        fetched = await stack.http.get(url)  # no Authorization header, as browsers fetch it
        assert fetched.status_code == 200
        assert fetched.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(fetched.content)).size == (64, 64)
    stored = sorted(stack.image_files.folder.iterdir())
    assert len(stored) == 2
    old = time.time() - stack.image_files.ttl_s - 1
    os.utime(stored[0], (old, old))
    gone = [await stack.http.get(url) for url in urls]
    assert sorted(r.status_code for r in gone) == [200, 404]
    assert stack.image_files.sweep() == 1
    assert len(list(stack.image_files.folder.iterdir())) == 1


@pytest.mark.parametrize("name", ["nope.png", "../ledger.sqlite", "%2e%2e%2fsecret.png",
                                  "A" * 43 + ".gif", "A" * 43 + ".png"])
async def test_unknown_or_malformed_file_names_are_404(stack: FastStack, name: str) -> None:
    response = await stack.http.get(f"/files/images/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("fmt", "compression", "pil_format"), [
    ("png", None, "PNG"), ("jpeg", 60, "JPEG"), ("jpeg", None, "JPEG"), ("webp", 50, "WEBP"),
    ("webp", 100, "WEBP")])
async def test_output_formats(stack: FastStack, fmt: Any, compression: int | None,
                              pil_format: str) -> None:
    extra = {} if compression is None else {"output_compression": compression}
    result = await stack.client.images.generate(model="fake-image", prompt="x",
                                                response_format="b64_json", output_format=fmt,
                                                **extra)
    assert result.output_format == fmt and result.data is not None
    image = picture(result.data[0].b64_json or "")
    assert image.format == pil_format and image.size == (64, 64)


async def test_url_keeps_the_output_format(stack: FastStack) -> None:
    result = await stack.client.images.generate(model="fake-image", prompt="x",
                                                response_format="url", output_format="webp")
    assert result.data is not None and (result.data[0].url or "").endswith(".webp")
    fetched = await stack.http.get(result.data[0].url or "")
    assert fetched.headers["content-type"] == "image/webp"


async def test_lossless_webp_keeps_every_pixel(stack: FastStack) -> None:
    result = await stack.client.images.generate(model="fake-image", prompt="x",
                                                response_format="b64_json",
                                                output_format="webp", output_compression=100,
                                                extra_body={"seed": 3})
    assert result.data is not None
    image = picture(result.data[0].b64_json or "").convert("RGB")
    assert set(image.get_flattened_data()) == {FakeImageEngine.colour(3)}


@pytest.mark.parametrize(("fields", "steps", "guidance"), [
    ({}, 4, 7.5),
    ({"quality": "auto"}, 4, 7.5),
    ({"quality": "standard"}, 4, 7.5),
    ({"quality": "medium"}, 4, 7.5),
    ({"quality": "low"}, 2, 7.5),
    ({"quality": "high"}, 8, 7.5),
    ({"quality": "hd"}, 8, 7.5),
    ({"style": "vivid"}, 4, 7.5),
    ({"style": "natural"}, 4, 4.25),
    ({"quality": "hd", "steps": 3}, 3, 7.5),
    ({"style": "natural", "guidance": 2.0}, 4, 2.0),
])
async def test_quality_and_style_map_to_steps_and_guidance(
        stack: FastStack, fields: dict[str, Any], steps: int, guidance: float) -> None:
    response = await stack.http.post("/v1/images/generations", headers=AUTH, json={
        "model": "fake-image", "prompt": "x", "response_format": "b64_json", **fields})
    assert response.status_code == 200, response.text
    params = stack.painter.calls[-1]
    assert (params.steps, params.guidance) == (steps, guidance)


async def test_extensions_reach_the_engine(stack: FastStack) -> None:
    await stack.client.images.generate(
        model="fake-image", prompt="a cat", size="128x64", response_format="b64_json",
        extra_body={"seed": 11, "negative_prompt": "blurry", "steps": 5})
    params = stack.painter.calls[-1]
    assert (params.prompt, params.width, params.height) == ("a cat", 128, 64)
    assert (params.seed, params.negative_prompt, params.steps) == (11, "blurry", 5)


async def test_size_auto_is_the_models_first_size_and_aliases_resolve(stack: FastStack) -> None:
    result = await stack.client.images.generate(model="dall-e-2", prompt="x", size="auto",
                                                response_format="b64_json")
    assert result.data is not None
    assert picture(result.data[0].b64_json or "").size == (64, 64)
    assert stack.ledger.rows[-1].model == "fake-image"


async def test_leaving_out_model_uses_openais_default_name(stack: FastStack) -> None:
    result = await stack.client.images.generate(prompt="x", response_format="b64_json")
    assert result.data is not None and stack.ledger.rows[-1].model == "fake-image"


async def test_leaving_out_model_without_a_default_alias_is_a_400(stack: FastStack) -> None:
    services = Services(catalog=Catalog([Listing(CHAT, FakeChatEngine()),
                                         Listing(IMAGE, FakeImageEngine())]),
                        ledger=ListLedger(), keys=stack.keys)
    app = create_app(services)
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app),
                                  base_url="http://other.test") as http:
        response = await http.post("/v1/images/generations", headers=AUTH,
                                   json={"prompt": "x", "response_format": "b64_json"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "model"
        # No image files kept by this app: url is a 400 naming response_format.
        response = await http.post("/v1/images/generations", headers=AUTH,
                                   json={"model": "fake-image", "prompt": "x"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "response_format"


@pytest.mark.parametrize(("fields", "param"), [
    ({"size": "1024x1024"}, "size"),
    ({"size": "big"}, "size"),
    ({"size": "64x64x2"}, "size"),
    ({"size": "64x64\n"}, "size"),  # a size is matched whole: no trailing newline
    ({"size": 64}, "size"),
    ({"n": 0}, "n"),
    ({"n": 11}, "n"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"response_format": "png"}, "response_format"),
    ({"output_format": "gif"}, "output_format"),
    ({"output_format": "jpeg", "output_compression": 101}, "output_compression"),
    ({"output_compression": 50}, "output_compression"),
    ({"quality": "ultra"}, "quality"),
    ({"style": "moody"}, "style"),
    ({"stream": True}, "stream"),
    ({"partial_images": 2}, "partial_images"),
    ({"background": "transparent"}, "background"),
    ({"steps": 0}, "steps"),
    ({"steps": 151}, "steps"),
    ({"seed": -1}, "seed"),
    ({"guidance": -1}, "guidance"),
    ({"model": "gpt-4o-mini"}, "model"),
])
async def test_bad_requests_are_400s_naming_the_param(stack: FastStack, fields: dict[str, Any],
                                                      param: str) -> None:
    body = {"model": "fake-image", "prompt": "x", "response_format": "b64_json", **fields}
    response = await stack.http.post("/v1/images/generations", headers=AUTH, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert stack.ledger.rows[-1].price == 0.0 and stack.ledger.rows[-1].images == 0
    assert stack.painter.calls == []


async def test_the_sdk_raises_bad_request_for_an_unsupported_size(stack: FastStack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await stack.client.images.generate(model="fake-image", prompt="x", size="1024x1024")
    assert caught.value.param == "size"
    assert "64x64, 128x64" in caught.value.message


async def test_unknown_model_is_404(stack: FastStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await stack.client.images.generate(model="dall-e-3", prompt="x")
    assert caught.value.param == "model"


async def test_edits_and_variations_are_400s_saying_not_served(stack: FastStack) -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    with pytest.raises(openai.BadRequestError) as edit:
        await stack.client.images.edit(image=("a.png", png.getvalue(), "image/png"),
                                       prompt="x", model="fake-image")
    assert "not served" in edit.value.message and edit.value.param == "image"
    # The SDK marks create_variation deprecated: the form is posted as it would send it.
    variation = await stack.http.post("/v1/images/variations", headers=AUTH,
                                      files={"image": ("a.png", png.getvalue(), "image/png")},
                                      data={"model": "dall-e-2", "n": "1"})
    assert variation.status_code == 400
    assert "not served" in variation.json()["error"]["message"]
    assert variation.json()["error"]["param"] == "image"
    assert [r.http_status for r in stack.ledger.rows[-2:]] == [400, 400]


async def test_accepted_fields_change_nothing(stack: FastStack) -> None:
    result = await stack.client.images.generate(
        model="fake-image", prompt="x", response_format="b64_json", user="u-1",
        moderation="low", background="opaque", stream=False, safety_identifier="s-1",
        extra_body={"future_field": 1})
    assert result.data is not None and len(result.data) == 1


async def test_a_client_that_leaves_stops_generation_uncharged(stack: FastStack) -> None:
    """ASGITransport cannot drop a connection, so the app is called as the server calls it:
    the body arrives, generation starts, then the client's disconnect message comes."""
    stack.painter.hold = asyncio.Event()
    payload = json.dumps({"model": "fake-image", "prompt": "x", "n": 2,
                          "response_format": "b64_json"}).encode()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await stack.painter.started.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/images/generations",
             "raw_path": b"/v1/images/generations", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"appliance.test"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {API_KEY}".encode())],
             "client": ("127.0.0.1", 1), "server": ("appliance.test", 80)}
    app = stack.http._transport.app  # type: ignore[attr-defined]
    await app(scope, receive, send)
    assert len(stack.painter.stopped) == 1
    row = stack.ledger.rows[-1]
    assert (row.status, row.price, row.images) == ("cancelled", 0.0, 0)


def _image_config(tmp_path: Path, server: str) -> Path:
    (tmp_path / "pipeline").mkdir()
    path = tmp_path / "models.toml"
    path.write_text(f'[server]\n{server}\n\n[[models]]\nid = "sd"\nkind = "image"\n'
                    'path = "pipeline"\nsizes = ["512x512"]\n', encoding="utf-8")
    return path


def test_url_lifetime_is_a_server_key_with_an_env_override(tmp_path: Path) -> None:
    path = _image_config(tmp_path, "image_url_ttl_s = 90")
    assert load_config(path, env={}).server.image_url_ttl_s == 90.0
    overridden = load_config(path, env={"APPLIANCE_IMAGE_URL_TTL_S": "2.5"})
    assert overridden.server.image_url_ttl_s == 2.5
    (tmp_path / "default").mkdir()
    default = load_config(_image_config(tmp_path / "default", ""), env={})
    assert default.server.image_url_ttl_s == 3600.0


@pytest.mark.parametrize(("server", "env"), [("image_url_ttl_s = 0", {}),
                                             ('image_url_ttl_s = "1h"', {}),
                                             ("", {"APPLIANCE_IMAGE_URL_TTL_S": "soon"}),
                                             ("", {"APPLIANCE_IMAGE_URL_TTL_S": "-5"})])
def test_bad_url_lifetimes_are_config_errors_naming_the_key(tmp_path: Path, server: str,
                                                            env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="image_url_ttl_s"):
        load_config(_image_config(tmp_path, server), env=env)


def test_a_file_name_is_matched_whole(tmp_path: Path) -> None:
    files = ImageFiles(tmp_path / "images", ttl_s=60)
    name = files.save(b"kept", "png")
    assert files.read(name) is not None
    (files.folder / (name + "\n")).write_bytes(b"not one of ours")  # "$" would take it
    assert files.read(name + "\n") is None


def test_sweep_deletes_expired_files_and_stale_partial_writes(tmp_path: Path) -> None:
    files = ImageFiles(tmp_path / "images", ttl_s=60)
    fresh = files.save(b"fresh", "png")
    stale = files.save(b"stale", "jpeg")
    partial = files.folder / ".leftover.partial"
    partial.write_bytes(b"half")
    old = time.time() - 61
    for path in (files.folder / stale, partial):
        os.utime(path, (old, old))
    assert files.read(stale) is None
    assert files.sweep() == 2
    assert sorted(p.name for p in files.folder.iterdir()) == [fresh]
    stored = files.read(fresh)
    assert stored is not None and stored.content == b"fresh" and 0 < stored.seconds_left <= 60
