"""The Starlette application: routes, middleware order and error handlers.

Outer to inner: CORS (only when configured) -> request context (id, durable ledger row,
catch-all 500) -> drain (503 while shutting down) -> bearer auth -> admission (limits,
quotas, the key's models) -> router; see ``gatekeeping.py``.
Engines, ledger and keys arrive through ``Services``; nothing here is module-global, so tests
build as many apps as they like.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance.api.errors import handle_appliance_error, handle_http_exception
from appliance.api.gatekeeping import admin_routes, gate_middleware, with_key_scope
from appliance.api.image_files import sweeping
from appliance.api.routes.audio import create_transcription, create_translation
from appliance.api.routes.chat import create_chat_completion
from appliance.api.routes.completions import create_completion
from appliance.api.routes.embeddings import create_embeddings
from appliance.api.routes.images import IMAGE_FILE_ROUTE, create_image, image_file, not_served
from appliance.api.routes.key_usage import key_usage
from appliance.api.routes.models import list_models, retrieve_model
from appliance.api.routes.openapi import openapi_endpoint
from appliance.api.routes.ops import metrics
from appliance.api.routes.web import web_routes
from appliance.api.services import Services
from appliance.api.warmup import warm_request_path
from appliance.errors import ApplianceError


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    """200 once every model is loaded and warm (503 while draining, see shutdown.py). A model
    failing at run time leaves the others serving: still 200, ``status: "degraded"``, and the
    failing models named under ``failing``."""
    services: Services = request.app.state.services
    models = [info.id for info in services.catalog.models()]
    failing = services.metrics.health.failing()
    return JSONResponse({
        "status": "degraded" if failing else "ready",
        "models": models,
        "failing": {model: {"consecutive_failures": f.failures, "since": int(f.since),
                            "last_error_code": f.last_code}
                    for model, f in sorted(failing.items())},
    })


def create_app(services: Services) -> Starlette:
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint(), methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", retrieve_model, methods=["GET"]),
        Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
        Route("/v1/completions", create_completion, methods=["POST"]),
        Route("/v1/embeddings", create_embeddings, methods=["POST"]),
        Route("/v1/audio/transcriptions", create_transcription, methods=["POST"]),
        Route("/v1/audio/translations", create_translation, methods=["POST"]),
        Route("/v1/images/generations", create_image, methods=["POST"]),
        Route("/v1/images/edits", not_served, methods=["POST"]),
        Route("/v1/images/variations", not_served, methods=["POST"]),
        # Outside /v1: image URLs are fetched without a key (the unguessable name is the key).
        Route("/files/images/{name}", image_file, methods=["GET"], name=IMAGE_FILE_ROUTE),
        Route("/v1/usage", key_usage, methods=["GET"]),
        *web_routes(),  # the browser playground: outside /v1, served without a key
    ]
    routes += admin_routes()
    services = with_key_scope(services)
    services.metrics.routes.bind(routes)
    services.metrics.health.track(info.id for info in services.catalog.models())
    middleware = _cors(services.exposure.cors_origins) + gate_middleware(services)

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
