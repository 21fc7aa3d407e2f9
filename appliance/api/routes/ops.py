"""``GET /metrics``: the Prometheus text format, for an admin key unless configured public.

Outside /v1 (Prometheus scrapes a bare path), so the bearer middleware does not see it; the
handler checks the key itself, with the same failed-authentication allowance per address.
"""

from __future__ import annotations

import anyio.to_thread
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from appliance.api.errors import error_response
from appliance.api.middleware.key_rate import retry_headers
from appliance.api.services import Services
from appliance.errors import ApplianceError, AuthenticationFailed, PermissionDenied, RateLimited


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    if not services.exposure.metrics_public:
        try:
            await _require_admin(request, services)
        except RateLimited as refused:
            return error_response(refused, retry_headers(refused.retry_after))
        except ApplianceError as refused:
            return error_response(refused)
    body = await anyio.to_thread.run_sync(generate_latest, services.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _require_admin(request: Request, services: Services) -> None:
    # The failed-auth gate around the app already refuses a shut-out address and counts
    # every 401 answered here.
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise AuthenticationFailed("/metrics needs an admin key: Authorization: Bearer KEY "
                                   "(or set metrics_public = true in [server]).", code=None)
    record = await anyio.to_thread.run_sync(services.keys.lookup, secret)
    if record is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    if record.revoked_at is not None or record.expired(services.wall_clock()):
        raise AuthenticationFailed("This API key is revoked or expired.")
    if not record.admin:
        raise PermissionDenied("/metrics needs an admin key.")
