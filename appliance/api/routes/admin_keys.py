"""The admin HTTP API for keys: create, list, retrieve, update, revoke (admin keys only).

    GET    /v1/organization/api_keys            list (OpenAI's list shape)
    POST   /v1/organization/api_keys            create; the answer carries the secret once
    GET    /v1/organization/api_keys/{key_id}
    POST   /v1/organization/api_keys/{key_id}   update limits (a field sent as null clears it)
    DELETE /v1/organization/api_keys/{key_id}   revoke (OpenAI's ``deleted`` shape)

The key object is OpenAI's project API key (``organization.project.api_key``:
``redacted_value``, ``owner_project_access``, a service-account ``owner`` ...) plus the
appliance's limits. Unknown fields are a 400 here, unlike the model routes: a mistyped limit
must not be silently dropped. The same rules as ``appliance keys`` apply (KeyStore).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.bounds import check_label
from appliance.api.services import KeyAdmin, Services
from appliance.api.wire.keys import CreateKey, KeyFields, key_json
from appliance.api.wire.validation import parse_json
from appliance.errors import InvalidRequest, ModelNotFound, NotFound
from appliance.ledger import InvalidKeyField, KeyLimits, KeyRecord, check_key_name


def _admin(request: Request) -> tuple[Services, KeyAdmin]:
    services: Services = request.app.state.services
    if services.key_admin is None:
        raise NotFound(f"Unknown request URL: {request.method} {request.url.path}.")
    return services, services.key_admin


def _canonical_models(services: Services, names: list[str] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    if not names:
        raise InvalidRequest("`models` must name at least one model; leave it out (or send "
                             "null) for every model.", param="models")
    ids: list[str] = []
    for index, name in enumerate(names):
        check_label(f"models[{index}]", name, services.bounds)  # before the 400 quoting it
        try:
            ids.append(services.catalog.resolve(name).id)
        except ModelNotFound:
            raise InvalidRequest(f"No served model is named {name!r}.",
                                 param=f"models[{index}]") from None
    return tuple(dict.fromkeys(ids))


async def _find(keys: KeyAdmin, key_id: str) -> KeyRecord:
    # By id only: names and prefixes are for people at a terminal, URLs name ids.
    if not key_id.startswith("key_"):
        raise NotFound(f"No API key has the id {key_id!r}.", param="key_id")
    try:
        record = await anyio.to_thread.run_sync(keys.get, key_id)
    except KeyError:
        raise NotFound(f"No API key has the id {key_id!r}.", param="key_id") from None
    if record.id != key_id:
        raise NotFound(f"No API key has the id {key_id!r}.", param="key_id")
    return record


async def list_keys(request: Request) -> Response:
    _, keys = _admin(request)
    data = [key_json(record) for record in await anyio.to_thread.run_sync(keys.list)]
    return JSONResponse({"object": "list", "data": data,
                         "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": False})


def _check_future(services: Services, expires_at: int | None) -> None:
    """An expiry already past makes a key that never works: refused, as the CLI refuses it."""
    if expires_at is not None and expires_at <= services.wall_clock():
        raise InvalidRequest(f"`expires_at` ({expires_at}) is not in the future: it must be "
                             "a unix time after now (seconds), or null for no expiry.",
                             param="expires_at", code="invalid_value")


async def create_key(request: Request) -> Response:
    services, keys = _admin(request)
    body = await parse_json(request, CreateKey, services.bounds.max_body_bytes)
    try:
        check_key_name(body.name)
    except InvalidKeyField as error:
        raise InvalidRequest(str(error), param=error.field, code="invalid_value") from None
    _check_future(services, body.expires_at)
    limits = KeyLimits(
        models=_canonical_models(services, body.models), rpm=body.rpm,
        max_concurrent=body.max_concurrent, monthly_requests=body.monthly_requests,
        monthly_budget=body.monthly_budget,
        expires_at=None if body.expires_at is None else float(body.expires_at),
    )
    try:
        record, secret = await anyio.to_thread.run_sync(
            lambda: keys.create(body.name, limits, admin=body.admin))
    except InvalidKeyField as error:
        raise InvalidRequest(str(error), param=error.field, code="invalid_value") from None
    return JSONResponse({**key_json(record), "value": secret}, status_code=201)


async def retrieve_key(request: Request) -> Response:
    _, keys = _admin(request)
    return JSONResponse(key_json(await _find(keys, request.path_params["key_id"])))


async def update_key(request: Request) -> Response:
    services, keys = _admin(request)
    record = await _find(keys, request.path_params["key_id"])
    body = await parse_json(request, KeyFields, services.bounds.max_body_bytes)
    changes: dict[str, Any] = {}
    for name in body.model_fields_set:
        value = getattr(body, name)
        if name == "models":
            value = _canonical_models(services, value)
        elif name == "expires_at" and value is not None:
            _check_future(services, value)
            value = float(value)
        changes[name] = value
    if record.revoked_at is not None:
        raise InvalidRequest(f"The key {record.id} is revoked; create a new one.")
    try:
        limits = dataclasses.replace(record.limits, **changes)
        updated = await anyio.to_thread.run_sync(keys.update, record.id, limits)
    except InvalidKeyField as error:
        raise InvalidRequest(str(error), param=error.field, code="invalid_value") from None
    return JSONResponse(key_json(updated))


async def revoke_key(request: Request) -> Response:
    _, keys = _admin(request)
    record = await _find(keys, request.path_params["key_id"])
    if record.revoked_at is None:
        await anyio.to_thread.run_sync(keys.revoke, record.id)
    return JSONResponse({"object": "organization.project.api_key.deleted", "id": record.id,
                         "deleted": True})
