"""The Starlette application: the route table, the middleware order and the error handlers.

Each route carries its policy (``route_policy.RoutePolicy``: who may call it, whether it is
ledgered, the kind of model it serves, how a cut stream ends, whether it is a probe): the
middlewares, the drain and the usage reports read it, so no path string is matched anywhere
else.

Outer to inner: CORS (only when configured) -> request context (id, durable ledger row,
catch-all 500) -> failed-auth gate (an address over its allowance of 401s gets a quiet 429; a
URL or head over its bound a 400; every 401 counts) -> drain (503 while shutting down) ->
bearer auth (unknown, malformed, revoked, expired keys) -> admission (audience, quota,
concurrency, rate, "started" row, the key's model list) -> router.
Engines, ledger and keys arrive through ``Services``; nothing here is module-global, so tests
build as many apps as they like.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from appliance.api.errors import handle_appliance_error, handle_http_exception
from appliance.api.image_files import sweeping
from appliance.api.middleware.admission import AdmissionMiddleware
from appliance.api.middleware.auth import BearerAuthMiddleware
from appliance.api.middleware.drain import DrainMiddleware
from appliance.api.middleware.failed_auth import FailedAuthGate
from appliance.api.middleware.key_concurrency import KeyConcurrency
from appliance.api.middleware.key_quota import KeyQuota
from appliance.api.middleware.key_rate import KeyRate
from appliance.api.middleware.key_scope import KeyScopedCatalog
from appliance.api.middleware.request_context import RequestContextMiddleware
from appliance.api.route_policy import (
    ADMIN,
    KEYED,
    LIVENESS,
    OPEN,
    READINESS,
    Access,
    RoutePolicy,
    RouteTable,
    route,
    serving,
    with_policy,
)
from appliance.api.routes.admin_keys import (
    create_key,
    list_keys,
    retrieve_key,
    revoke_key,
    update_key,
)
from appliance.api.routes.audio import create_transcription, create_translation
from appliance.api.routes.chat import create_chat_completion
from appliance.api.routes.completions import create_completion
from appliance.api.routes.conversations import conversations_routes
from appliance.api.routes.embeddings import create_embeddings
from appliance.api.routes.images import IMAGE_FILE_ROUTE, create_image, image_file, not_served
from appliance.api.routes.key_usage import key_usage
from appliance.api.routes.models import list_models, retrieve_model
from appliance.api.routes.ops import health, metrics, openapi_endpoint, ready
from appliance.api.routes.org_usage import organization_costs, organization_usage
from appliance.api.routes.responses import responses_routes
from appliance.api.routes.responses_background import BackgroundResponses
from appliance.api.routes.speech import create_speech
from appliance.api.routes.stored_completions import stored_completions_routes
from appliance.api.routes.stored_responses import stored_responses_routes
from appliance.api.routes.web import web_routes
from appliance.api.services import Services
from appliance.api.telemetry.metrics import each
from appliance.api.warmup import warm_request_path
from appliance.engines.base import CHAT, EMBEDDING, IMAGE, SPEECH, TRANSCRIPTION
from appliance.errors import ApplianceError


def create_app(services: Services) -> Starlette:
    chat, embedding = serving(CHAT.name, ends_with_done=True), serving(EMBEDDING.name)
    transcription, image = serving(TRANSCRIPTION.name), serving(IMAGE.name)
    # Prometheus scrapes a bare path: an admin key unless the operator made it public. Not
    # ledgered: a scrape every few seconds is no usage.
    scrape = OPEN if services.exposure.metrics_public else RoutePolicy(Access.ADMIN,
                                                                        ledgered=False)
    # Background responses are the app's: created and cancelled in routes/responses.py,
    # forgotten by its DELETE in routes/stored_responses.py.
    background = BackgroundResponses()
    routes: list[BaseRoute] = [
        route("/health", health, "GET", LIVENESS),
        route("/ready", ready, "GET", READINESS),
        route("/openapi.json", openapi_endpoint(), "GET", OPEN),
        route("/metrics", metrics, "GET", scrape),
        route("/v1/models", list_models, "GET", KEYED),
        route("/v1/models/{model:path}", retrieve_model, "GET", KEYED),
        route("/v1/chat/completions", create_chat_completion, "POST", chat),
        *responses_routes(background),
        route("/v1/completions", create_completion, "POST", chat),
        route("/v1/embeddings", create_embeddings, "POST", embedding),
        route("/v1/audio/transcriptions", create_transcription, "POST", transcription),
        route("/v1/audio/translations", create_translation, "POST", transcription),
        route("/v1/audio/speech", create_speech, "POST", serving(SPEECH.name)),
        route("/v1/images/generations", create_image, "POST", image),
        route("/v1/images/edits", not_served, "POST", image),
        route("/v1/images/variations", not_served, "POST", image),
        # Image URLs are fetched without a key (the unguessable name is the key).
        route("/files/images/{name}", image_file, "GET", OPEN, name=IMAGE_FILE_ROUTE),
        route("/v1/usage", key_usage, "GET", KEYED),
        *with_policy(stored_responses_routes(background), KEYED),
        *with_policy(conversations_routes(), KEYED),
        *with_policy(stored_completions_routes(), KEYED),
        *with_policy(web_routes(), OPEN),  # the browser playground, served without a key
        route("/v1/organization/api_keys", list_keys, "GET", ADMIN),
        route("/v1/organization/api_keys", create_key, "POST", ADMIN),
        route("/v1/organization/api_keys/{key_id}", retrieve_key, "GET", ADMIN),
        route("/v1/organization/api_keys/{key_id}", update_key, "POST", ADMIN),
        route("/v1/organization/api_keys/{key_id}", revoke_key, "DELETE", ADMIN),
        route("/v1/organization/usage/{kind}", organization_usage, "GET", ADMIN),
        route("/v1/organization/costs", organization_costs, "GET", ADMIN),
    ]
    # A path no route has: under /v1 it is still knocked on with a key (401 before 404, and
    # a ledger row); elsewhere it is a plain 404.
    table = RouteTable(routes, lambda path: KEYED if path.startswith("/v1/") else OPEN)
    services = _with_key_scope(services)
    services.metrics.routes.bind(routes)
    services.metrics.health.track(info.id for info in services.catalog.models())
    middleware = _cors(services.exposure.cors_origins) + _middleware(services, table)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await warm_request_path(services)
        async with sweeping(services.image_files):
            yield

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={
            ApplianceError: handle_appliance_error,
            HTTPException: handle_http_exception,
        },
    )
    app.state.services = services
    return app


def _with_key_scope(services: Services) -> Services:
    """The services with a catalog that shows each key only its own models."""
    if isinstance(services.catalog, KeyScopedCatalog):
        return services
    return dataclasses.replace(services, catalog=KeyScopedCatalog(services.catalog))


def _middleware(services: Services, table: RouteTable) -> list[Middleware]:
    """Outer to inner, inside CORS. Needs the services ``_with_key_scope`` returned."""
    assert isinstance(services.catalog, KeyScopedCatalog)
    quota = KeyQuota(services.reports, services.pricing.currency, services.wall_clock)
    return [
        Middleware(RequestContextMiddleware, ledger=services.ledger, pricing=services.pricing,
                   table=table,
                   commit_wait=services.commit_wait_seconds,
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
        Middleware(AdmissionMiddleware,
                   rate=KeyRate(services.rate_window_seconds, services.clock),
                   concurrency=KeyConcurrency(), quota=quota, catalog=services.catalog,
                   ledger=services.ledger, currency=services.pricing.currency,
                   commit_wait=services.commit_wait_seconds),
    ]


def _cors(origins: tuple[str, ...]) -> list[Middleware]:
    """Outermost, so preflights are answered before auth (browsers send them without keys)."""
    if not origins:
        return []
    return [Middleware(
        CORSMiddleware, allow_origins=list(origins), allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["x-request-id", "retry-after", "retry-after-ms",
                        "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                        "x-ratelimit-reset-requests"])]
