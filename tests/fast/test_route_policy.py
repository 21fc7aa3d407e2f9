"""Route policy: declared once per route in app.py, read by the middlewares and the reports."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from appliance.api.app import create_app
from appliance.api.route_policy import (
    KEYED,
    OPEN,
    Access,
    PolicyRoute,
    RouteTable,
    route,
    serving,
)
from appliance.api.services import Services
from appliance.engines.base import CHAT, KINDS, Listing
from appliance.engines.catalog import Catalog
from tests.fakes import FakeChatEngine, FakeKeys, ListLedger


async def _endpoint(request: object) -> None:  # never called
    raise AssertionError


def _scope(path: str, method: str = "GET") -> dict[str, object]:
    return {"type": "http", "path": path, "method": method, "root_path": ""}


def test_every_route_of_the_app_declares_its_policy() -> None:
    app = create_app(_services())
    assert all(isinstance(r, PolicyRoute) for r in app.routes)
    by_path = {(r.path, tuple(sorted(r.methods or ()))): r.policy
               for r in app.routes if isinstance(r, PolicyRoute)}
    assert by_path[("/health", ("GET", "HEAD"))].drains is False
    assert by_path[("/ready", ("GET", "HEAD"))].gated is False
    assert by_path[("/v1/chat/completions", ("POST",))].ends_with_done
    assert by_path[("/v1/embeddings", ("POST",))].kind == "embedding"
    assert by_path[("/metrics", ("GET", "HEAD"))].access is Access.ADMIN
    assert not by_path[("/metrics", ("GET", "HEAD"))].ledgered
    # Every kind of model is served by some route, so every kind is counted in the reports.
    assert {p.kind for p in by_path.values()} - {None} == {k.name for k in KINDS}


def test_a_route_without_a_policy_is_refused_when_the_table_is_built() -> None:
    with pytest.raises(TypeError, match="/plain"):
        RouteTable([Route("/plain", _endpoint)], lambda path: OPEN)


def test_the_table_finds_a_policy_by_path_whatever_the_method() -> None:
    chat = serving("chat", ends_with_done=True)
    table = RouteTable([route("/v1/things/{id}", _endpoint, "GET", KEYED),
                        route("/v1/chat", _endpoint, "POST", chat)],
                       lambda path: KEYED if path.startswith("/v1/") else OPEN)
    assert table.policy_for(_scope("/v1/chat", "POST")) is chat
    assert table.policy_for(_scope("/v1/chat", "GET")) is chat  # a 405, still the chat route's
    assert table.policy_for(_scope("/v1/things/7")) is KEYED
    assert table.policy_for(_scope("/v1/nothing")) is KEYED
    assert table.policy_for(_scope("/nothing")) is OPEN


def _services() -> Services:
    return Services(catalog=Catalog([Listing(CHAT, FakeChatEngine())]), ledger=ListLedger(),
                    keys=FakeKeys())
