"""Wires keys, limits and the ledger into an app: the middleware stack and the admin routes.

Outer to inner: request context (id, durable ledger row, catch-all 500) -> failed-auth gate
(an address over its allowance of 401s gets a quiet 429; a URL or head over its bound a
400; every 401 counts) -> drain (503 while shutting down) -> bearer auth (unknown,
malformed, revoked, expired keys) -> admission (audience, quota, concurrency, rate,
"started" row, the key's model list) -> router. ``create_app`` calls these three functions.
"""

from __future__ import annotations

import dataclasses

from starlette.middleware import Middleware
from starlette.routing import Route

from appliance.api.middleware.auth import BearerAuthMiddleware
from appliance.api.middleware.drain import DrainMiddleware
from appliance.api.middleware.failed_auth import FailedAuthGate
from appliance.api.middleware.key_policy import AdmissionMiddleware
from appliance.api.middleware.key_quota import QuotaBook
from appliance.api.middleware.key_rate import ConcurrencyGate, RequestRate
from appliance.api.middleware.key_scope import KeyScopedCatalog
from appliance.api.middleware.request_context import RequestContextMiddleware
from appliance.api.routes.admin_keys import (
    create_key,
    list_keys,
    retrieve_key,
    revoke_key,
    update_key,
)
from appliance.api.routes.org_usage import organization_costs, organization_usage
from appliance.api.services import Services
from appliance.api.telemetry.metrics import each


def with_key_scope(services: Services) -> Services:
    """The services with a catalog that shows each key only its own models."""
    if isinstance(services.catalog, KeyScopedCatalog):
        return services
    return dataclasses.replace(services, catalog=KeyScopedCatalog(services.catalog))


def gate_middleware(services: Services) -> list[Middleware]:
    """Needs the services ``with_key_scope`` returned."""
    assert isinstance(services.catalog, KeyScopedCatalog)
    limits = services.limits
    quota = QuotaBook(services.reports, services.pricing.currency, services.wall_clock)
    return [
        Middleware(RequestContextMiddleware, ledger=services.ledger, pricing=services.pricing,
                   commit_wait=limits.commit_wait_seconds,
                   on_final_row=each(quota.charge, services.metrics.observe)),
        # Before anything that costs: a flooding address is turned away here. Inside the
        # request context, so its refusals still carry a request id.
        Middleware(FailedAuthGate, failures=services.auth_failures,
                   max_url_bytes=services.bounds.max_url_bytes,
                   max_header_bytes=services.bounds.max_header_bytes),
        # Inside the request context: a request refused while draining still gets its id
        # and ledger row.
        Middleware(DrainMiddleware, state=services.drain),
        Middleware(BearerAuthMiddleware, keys=services.keys, wall_clock=services.wall_clock),
        Middleware(AdmissionMiddleware, rate=RequestRate(limits.rate_window_seconds,
                                                         services.clock),
                   gate=ConcurrencyGate(), quota=quota, catalog=services.catalog,
                   ledger=services.ledger, currency=services.pricing.currency,
                   commit_wait=limits.commit_wait_seconds),
    ]


def admin_routes() -> list[Route]:
    return [
        Route("/v1/organization/api_keys", list_keys, methods=["GET"]),
        Route("/v1/organization/api_keys", create_key, methods=["POST"]),
        Route("/v1/organization/api_keys/{key_id}", retrieve_key, methods=["GET"]),
        Route("/v1/organization/api_keys/{key_id}", update_key, methods=["POST"]),
        Route("/v1/organization/api_keys/{key_id}", revoke_key, methods=["DELETE"]),
        Route("/v1/organization/usage/{kind}", organization_usage, methods=["GET"]),
        Route("/v1/organization/costs", organization_costs, methods=["GET"]),
    ]
