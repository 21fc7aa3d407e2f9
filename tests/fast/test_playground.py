"""The browser playground's server side: ``GET /`` and its files without a key, and
``GET /v1/usage`` (a regular key's own usage), over the ASGI app with a real ledger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from appliance.api.app import create_app
from appliance.api.services import Pricing, Services
from appliance.engines.base import CHAT as CHAT_KIND
from appliance.engines.base import Listing
from appliance.engines.catalog import Catalog
from appliance.ledger import KeyLimits, KeyStore, LedgerReports, LedgerWriter
from tests.fakes import FakeChatEngine

pytestmark = pytest.mark.anyio
CHAT = {"model": "fake-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[httpx2.AsyncClient, KeyStore]]:
    with KeyStore(tmp_path / "keys.sqlite") as keys, \
            LedgerWriter(tmp_path / "ledger.sqlite") as ledger:
        services = Services(
            catalog=Catalog([Listing(CHAT_KIND, FakeChatEngine(), ("gpt-4o-mini",))]),
            ledger=ledger, keys=keys, key_admin=keys,
            reports=LedgerReports(tmp_path / "ledger.sqlite"),
            pricing=Pricing(per_request={"fake-chat": 0.25}, currency="USD"),
        )
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=create_app(services)),
                                      base_url="http://appliance.test") as http:
            yield http, keys


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


async def test_the_page_and_its_files_need_no_key(
        served: tuple[httpx2.AsyncClient, KeyStore]) -> None:
    http, _ = served
    page = await http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/web/app.js"' in page.text and "/web/style.css" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
    script = await http.get("/web/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "sessionStorage" in script.text and "localStorage" not in script.text
    style = await http.get("/web/style.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    for name in ("index.html", "..%2Fapi%2Fweb.py", "nothing.js"):
        missing = await http.get(f"/web/{name}")
        assert missing.status_code == 404 and missing.json()["error"]["type"]


async def test_a_key_reads_its_own_usage_only(
        served: tuple[httpx2.AsyncClient, KeyStore]) -> None:
    http, keys = served
    alice = keys.create("alice", KeyLimits())[1]
    bob = keys.create("bob", KeyLimits())[1]
    for _ in range(2):
        done = await http.post("/v1/chat/completions", json=CHAT, headers=bearer(alice))
        assert done.status_code == 200
    assert (await http.post("/v1/chat/completions", json=CHAT,
                            headers=bearer(bob))).status_code == 200
    for _ in range(50):  # the ledger writer commits on its own thread
        usage = (await http.get("/v1/usage?days=2", headers=bearer(alice))).json()
        if usage["data"] and usage["data"][0]["requests"] == 2:
            break
        await asyncio.sleep(0.02)
    assert usage["object"] == "list" and usage["api_key_name"] == "alice"
    assert usage["currency"] == "usd"
    [row] = usage["data"]
    assert row["model"] == "fake-chat" and row["requests"] == 2 and row["cost"] == 0.5
    assert len(row["date"]) == 10 and row["output_tokens"] > 0


async def test_usage_days_are_checked_and_admins_use_the_organization_routes(
        served: tuple[httpx2.AsyncClient, KeyStore]) -> None:
    http, keys = served
    alice = keys.create("alice", KeyLimits())[1]
    for bad in ("0", "32", "x", "%C2%B2", "9" * 5000):  # '²' passes str.isdigit(), not int()
        refused = await http.get(f"/v1/usage?days={bad}", headers=bearer(alice))
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "days"
    admin = keys.create("root", KeyLimits(), admin=True)[1]
    assert (await http.get("/v1/usage", headers=bearer(admin))).status_code == 403
    assert (await http.get("/v1/usage")).status_code == 401


async def test_the_chat_can_attach_an_image(
        served: tuple[httpx2.AsyncClient, KeyStore]) -> None:
    """The page offers a picture input (the four formats the server reads), shown for models
    whose /v1/models entry takes images, and sends it as an image_url data URL part."""
    http, _ = served
    page = (await http.get("/")).text
    assert '<input id="chat-image" type="file" ' \
        'accept="image/png,image/jpeg,image/webp,image/gif">' in page
    script = (await http.get("/web/app.js")).text
    assert 'includes("image")' in script and "input_modalities" in script
    assert 'type: "image_url", image_url: { url }' in script and "readAsDataURL" in script
