"""``GET /openapi.json``: a valid OpenAPI document that lists exactly the served routes, is
served without a key, says truthfully which routes need one, and is what
``scripts/build-openapi`` writes from OpenAI's document."""

from __future__ import annotations

import importlib.util
import json
import re
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx2
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Route

from appliance.api.app import create_app
from appliance.api.middleware.failed_auth import FailedAuthLimiter
from appliance.api.services import Services
from appliance.engines.base import CHAT, Listing
from appliance.engines.catalog import Catalog
from tests.fakes import FakeChatEngine, FakeKeys, ListLedger

ROOT = Path(__file__).resolve().parents[2]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _document() -> dict[str, Any]:
    text = resources.files("appliance.api.routes").joinpath("openapi_served.json").read_text()
    document: dict[str, Any] = json.loads(text)
    return document


def _app() -> Starlette:
    # Every keyless probe below is a failed authentication: allow all of them.
    return create_app(Services(catalog=Catalog([Listing(CHAT, FakeChatEngine(), ("gpt-4o-mini",))]),
                               ledger=ListLedger(), keys=FakeKeys(),
                               auth_failures=FailedAuthLimiter(max_failures=1000)))


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method.upper(), operation)
            for path, item in document["paths"].items()
            for method, operation in item.items() if method in METHODS]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-name", path)


def _route_for(app: Starlette, path: str, method: str) -> Route:
    matches = [route for route in app.routes if isinstance(route, Route)
               and route.path_regex.match(_concrete(path)) and method in (route.methods or ())]
    assert len(matches) == 1, (path, method, [route.path for route in matches])
    return matches[0]


def test_the_document_is_valid_openapi() -> None:
    document = _document()
    validate(document)
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": "/"}]
    assert "x-oaiMeta" not in json.dumps(document)


def test_the_document_lists_exactly_the_served_routes() -> None:
    app = _app()
    served = {(route.path, method) for route in app.routes if isinstance(route, Route)
              for method in route.methods or () if method != "HEAD"}  # Starlette adds HEAD
    documented = set()
    for path, method, _ in _operations(_document()):
        route = _route_for(app, path, method)
        # A templated path names the route's own parameters ({model} for {model:path}).
        assert set(re.findall(r"\{(\w+)\}", path)) <= route.param_convertors.keys(), path
        documented.add((route.path, method))
    assert documented == served


def test_openai_routes_keep_openai_shapes() -> None:
    paths = _document()["paths"]
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["operationId"] == "createChatCompletion"
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateChatCompletionRequest"}
    error = _document()["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"message", "type", "param", "code"}


@pytest.mark.anyio
async def test_served_without_a_key_and_security_tells_the_truth() -> None:
    document = _document()
    transport = httpx2.ASGITransport(app=_app())
    async with httpx2.AsyncClient(transport=transport, base_url="http://appliance.test") as http:
        response = await http.get("/openapi.json")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json() == document
        for path, method, operation in _operations(document):
            # No key: operations that declare none must not answer 401, the others must.
            answer = await http.request(method, _concrete(path))
            needs_key = operation.get("security", document["security"]) != []
            assert (answer.status_code == 401) == needs_key, (method, path, answer.text)


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_openapi", ROOT / "scripts" / "build_openapi.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_document_is_what_the_script_builds() -> None:
    script = _build_script()
    built = script.render(script.build())
    committed = (ROOT / "appliance" / "api" / "routes" / "openapi_served.json").read_text(
        encoding="utf-8")
    assert built == committed, ("stale appliance/api/routes/openapi_served.json: "
                                "run scripts/build-openapi")
