"""Builds ``appliance/api/routes/openapi_served.json``, what ``GET /openapi.json`` serves.

The OpenAI routes keep OpenAI's own operations and schemas, cut from OpenAI's OpenAPI document
(MIT licence, carried in third_party/openai_openapi/ with a sha256 check):
only the paths and methods the appliance serves, only the components they reach, without
vendor extensions (``x-oaiMeta`` ...), examples or all but the first paragraph of each
description. The appliance's own routes (health, metrics, usage, keys, image files, the
playground) are described by hand below. ``tests/fast/test_openapi_doc.py`` checks that the
committed file is what this script writes and that it lists exactly the served routes.

    scripts/build-openapi            # rewrite the committed file
    scripts/build-openapi --check    # exit 1 when the committed file is stale
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the carried spec is a package at the root
    sys.path.insert(0, str(ROOT))
from third_party.openai_openapi import official_document  # noqa: E402

SERVED = ROOT / "appliance" / "api" / "routes" / "openapi_served.json"

# Our path -> (OpenAI's path, methods): OpenAI's servers URL ends in /v1, ours is the root.
OPENAI_OPERATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "/v1/models": ("/models", ("get",)),
    "/v1/models/{model}": ("/models/{model}", ("get",)),
    "/v1/chat/completions": ("/chat/completions", ("post",)),
    "/v1/responses": ("/responses", ("post",)),
    "/v1/responses/{response_id}": ("/responses/{response_id}", ("get",)),
    "/v1/responses/{response_id}/cancel": ("/responses/{response_id}/cancel", ("post",)),
    "/v1/responses/input_tokens": ("/responses/input_tokens", ("post",)),
    "/v1/completions": ("/completions", ("post",)),
    "/v1/embeddings": ("/embeddings", ("post",)),
    "/v1/audio/transcriptions": ("/audio/transcriptions", ("post",)),
    "/v1/audio/translations": ("/audio/translations", ("post",)),
    "/v1/audio/speech": ("/audio/speech", ("post",)),
    "/v1/images/generations": ("/images/generations", ("post",)),
    **{f"/v1/organization/usage/{kind}": (f"/organization/usage/{kind}", ("get",))
       for kind in ("completions", "embeddings", "audio_transcriptions", "audio_speeches",
                    "images")},
    "/v1/organization/costs": ("/organization/costs", ("get",)),
}
# The stored-state routes (appliance/api/routes/stored_*.py, conversations.py), methods added
# to their paths beside the ones above (GET and POST /v1/chat/completions share a path).
STATE_OPERATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "/v1/chat/completions": ("/chat/completions", ("get",)),
    "/v1/chat/completions/{completion_id}": ("/chat/completions/{completion_id}",
                                             ("get", "post", "delete")),
    "/v1/chat/completions/{completion_id}/messages": (
        "/chat/completions/{completion_id}/messages", ("get",)),
    "/v1/conversations": ("/conversations", ("post",)),
    "/v1/conversations/{conversation_id}": ("/conversations/{conversation_id}",
                                            ("get", "post", "delete")),
    "/v1/conversations/{conversation_id}/items": ("/conversations/{conversation_id}/items",
                                                  ("get", "post")),
    "/v1/conversations/{conversation_id}/items/{item_id}": (
        "/conversations/{conversation_id}/items/{item_id}", ("get", "delete")),
    "/v1/responses/{response_id}": ("/responses/{response_id}", ("delete",)),
    "/v1/responses/{response_id}/input_items": ("/responses/{response_id}/input_items",
                                                ("get",)),
}
# Keys whose values are maps of names chosen by the document's author, not keywords: a
# property may well be called "example" or "x-request-id".
NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "paths",
                       "schemas", "responses", "parameters", "headers", "content",
                       "securitySchemes", "mapping", "encoding"})
DROPPED_KEYWORDS = frozenset({"example", "examples"})

ERROR = {"$ref": "#/components/responses/Error"}
PUBLIC: list[dict[str, list[str]]] = []  # an operation's `security: []`: no key needed
ADMIN = [{"AdminApiKeyAuth": []}]


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(media_type: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {media_type: {"schema": {"type": "string"}}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _operation(operation_id: str, summary: str, tag: str, ok: dict[str, Any], *,
               security: list[dict[str, list[str]]] | None = None,
               parameters: list[dict[str, Any]] | None = None,
               body: dict[str, Any] | None = None, status: str = "200") -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if security is not None:
        operation["security"] = security
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = {status: ok, "default": ERROR}
    return operation


def _path_param(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", **schema}}


KEY_ID = _path_param("key_id", "The key's id (`key_...`).")
MAX_INTEGER = 2**53  # appliance/api/wire/keys.py
KEY_LIMITS = {
    "models": {"type": ["array", "null"], "items": {"type": "string"},
               "description": "Models the key may call; null: every model."},
    "rpm": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_INTEGER,
            "description": "Requests per minute."},
    "max_concurrent": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_INTEGER},
    "monthly_requests": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_INTEGER},
    "monthly_budget": {"type": ["number", "null"], "exclusiveMinimum": 0,
                       "description": "In the server's currency, per calendar month (UTC)."},
    "expires_at": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_INTEGER,
                   "description": "Unix seconds."},
}
OWN_SCHEMAS: dict[str, Any] = {
    "ApplianceApiKey": {
        "type": "object",
        "description": "OpenAI's project API key object plus the appliance's limits.",
        "required": ["object", "id", "name", "redacted_value", "created_at", "admin"],
        "properties": {
            "object": {"type": "string", "enum": ["organization.project.api_key"]},
            "id": {"type": "string"},
            "name": {"type": "string"},
            "redacted_value": {"type": "string"},
            "value": {"type": "string", "description": "The secret; only when created."},
            "created_at": {"type": "integer"},
            "last_used_at": {"type": "null"},
            "owner_project_access": {"type": "string", "enum": ["active", "inactive"]},
            "owner": {"type": "object"},
            "revoked_at": {"type": ["integer", "null"]},
            "admin": {"type": "boolean"},
            **KEY_LIMITS,
        },
    },
    "ApplianceApiKeyList": {
        "type": "object", "required": ["object", "data", "has_more"],
        "properties": {"object": {"type": "string", "enum": ["list"]},
                       "data": {"type": "array", "items": _ref("ApplianceApiKey")},
                       "first_id": {"type": ["string", "null"]},
                       "last_id": {"type": ["string", "null"]},
                       "has_more": {"type": "boolean"}},
    },
    "ApplianceApiKeyCreate": {
        "type": "object", "required": ["name"], "additionalProperties": False,
        "properties": {"name": {"type": "string"}, "admin": {"type": "boolean"},
                       **KEY_LIMITS},
    },
    "ApplianceApiKeyUpdate": {
        "type": "object", "additionalProperties": False,
        "description": "Only the fields sent change; a field sent as null clears that limit.",
        "properties": KEY_LIMITS,
    },
    "ApplianceApiKeyDeleted": {
        "type": "object", "required": ["object", "id", "deleted"],
        "properties": {"object": {"type": "string",
                                  "enum": ["organization.project.api_key.deleted"]},
                       "id": {"type": "string"}, "deleted": {"type": "boolean"}},
    },
    "KeyUsage": {
        "type": "object",
        "required": ["object", "api_key_id", "currency", "start_time", "end_time", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "api_key_id": {"type": "string"}, "api_key_name": {"type": "string"},
            "currency": {"type": "string"}, "start_time": {"type": "integer"},
            "end_time": {"type": "integer"},
            "data": {"type": "array", "items": {
                "type": "object",
                "properties": {"object": {"type": "string", "enum": ["usage.day"]},
                               "date": {"type": "string"}, "start_time": {"type": "integer"},
                               "model": {"type": ["string", "null"]},
                               "requests": {"type": "integer"},
                               "input_tokens": {"type": "integer"},
                               "output_tokens": {"type": "integer"},
                               "audio_seconds": {"type": "number"},
                               "images": {"type": "integer"}, "characters": {"type": "integer"},
                               "cost": {"type": "number"}}}},
        },
    },
}


def own_paths() -> dict[str, dict[str, Any]]:
    """The appliance's own routes, and OpenAI's image edits and variations (refused here)."""
    json_body = {"required": True,
                 "content": {"application/json": {"schema": {"type": "object"}}}}
    unserved = {"required": False, "content": {
        "multipart/form-data": {"schema": {"type": "object"}},
        "application/json": {"schema": {"type": "object"}}}}
    return {
        "/health": {"get": _operation(
            "health", "Liveness: 200 while the process serves.", "Appliance",
            _json({"type": "object", "required": ["status"],
                   "properties": {"status": {"type": "string", "enum": ["ok"]}}}),
            security=PUBLIC)},
        "/ready": {"get": _operation(
            "ready", "Readiness: the served models, and those failing at run time (still "
            "200: the others serve); 503 while shutting down.", "Appliance",
            _json({"type": "object", "required": ["status", "models"], "properties": {
                "status": {"type": "string", "enum": ["ready", "degraded"]},
                "models": {"type": "array", "items": {"type": "string"}},
                "failing": {"type": "object", "additionalProperties": {
                    "type": "object", "properties": {
                        "consecutive_failures": {"type": "integer"},
                        "since": {"type": "integer"},
                        "last_error_code": {"type": ["string", "null"]}}}}}}),
            security=PUBLIC)},
        "/metrics": {"get": _operation(
            "metrics", "Prometheus metrics; an admin key unless `metrics_public = true`.",
            "Appliance", _text("text/plain", "Prometheus' text exposition format."),
            security=ADMIN)},
        "/openapi.json": {"get": _operation(
            "openapi", "This document.", "Appliance", _json({"type": "object"}),
            security=PUBLIC)},
        "/v1/usage": {"get": _operation(
            "keyUsage", "The calling key's own usage per UTC day and model.", "Usage",
            _json(_ref("KeyUsage")),
            parameters=[{"name": "days", "in": "query", "required": False,
                         "description": "Days back from today, today included.",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 31,
                                    "default": 7}}])},
        "/v1/images/edits": {"post": _operation(
            "createImageEdit", "Not served: answers 400 `unsupported_endpoint`.", "Images",
            {"$ref": "#/components/responses/Error"}, body=unserved, status="400")},
        "/v1/images/variations": {"post": _operation(
            "createImageVariation", "Not served: answers 400 `unsupported_endpoint`.",
            "Images", {"$ref": "#/components/responses/Error"}, body=unserved,
            status="400")},
        "/files/images/{name}": {"get": _operation(
            "imageFile", "An image behind a `url` response; its unguessable name is the key.",
            "Images", {"description": "The image.", "content": {
                f"image/{kind}": {"schema": {"type": "string", "format": "binary"}}
                for kind in ("png", "jpeg", "webp")}},
            security=PUBLIC,
            parameters=[_path_param("name", "The file name from the image URL.")])},
        "/v1/organization/api_keys": {
            "get": _operation("listApplianceApiKeys", "List the keys.", "Keys",
                              _json(_ref("ApplianceApiKeyList")), security=ADMIN),
            "post": _operation(
                "createApplianceApiKey", "Create a key; the answer carries its secret once.",
                "Keys", _json(_ref("ApplianceApiKey"), "Created"), security=ADMIN,
                body={**json_body, "content": {"application/json": {
                    "schema": _ref("ApplianceApiKeyCreate")}}}, status="201"),
        },
        "/v1/organization/api_keys/{key_id}": {
            "get": _operation("retrieveApplianceApiKey", "Retrieve a key.", "Keys",
                              _json(_ref("ApplianceApiKey")), security=ADMIN,
                              parameters=[KEY_ID]),
            "post": _operation(
                "updateApplianceApiKey", "Change a key's limits.", "Keys",
                _json(_ref("ApplianceApiKey")), security=ADMIN, parameters=[KEY_ID],
                body={**json_body, "content": {"application/json": {
                    "schema": _ref("ApplianceApiKeyUpdate")}}}),
            "delete": _operation("revokeApplianceApiKey", "Revoke a key.", "Keys",
                                 _json(_ref("ApplianceApiKeyDeleted")), security=ADMIN,
                                 parameters=[KEY_ID]),
        },
        "/": {"get": _operation("playground", "The browser playground.", "Playground",
                                _text("text/html", "The page."), security=PUBLIC)},
        "/web/{name}": {"get": _operation(
            "playgroundAsset", "The playground's script and style sheet.", "Playground",
            {"description": "The file.", "content": {
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}}}},
            security=PUBLIC,
            parameters=[_path_param("name", "The file.", enum=["app.js", "style.css"])])},
    }


def _rewrite(node: Any, fix: Callable[[dict[str, Any]], dict[str, Any]], *,
             names: bool = False) -> Any:
    """Applies ``fix`` bottom-up to every keyword object (not to maps of names, whose keys
    are chosen by the author: a property may well be called "default" or "x-request-id")."""
    if isinstance(node, list):
        return [_rewrite(item, fix) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _rewrite(value, fix, names=not names and key in NAME_MAPS)
            for key, value in node.items()}
    return node if names else fix(node)


def _trim(node: dict[str, Any]) -> dict[str, Any]:
    """Drops vendor extensions, examples and all but the first paragraph of descriptions."""
    node = {key: value for key, value in node.items()
            if not key.startswith("x-") and key not in DROPPED_KEYWORDS}
    for key in ("description", "summary"):
        if isinstance(node.get(key), str):
            node[key] = node[key].strip().split("\n\n", 1)[0].strip()
    return node


def _nullable_to_union(node: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's document mixes 3.0's ``nullable: true`` into 3.1 schemas, where JSON Schema
    ignores it; fuzzers and validators then think null is invalid. Rewrite it as 3.1 says."""
    nullable = node.pop("nullable", False)
    if nullable is not True:
        return node
    kind = node.get("type")
    if isinstance(kind, str):
        node["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        node["type"] = [*kind, "null"]
    if "enum" in node and None not in node["enum"]:
        node["enum"] = [*node["enum"], None]
    if "type" not in node:
        node = {"anyOf": [node, {"type": "null"}]}
    return node


def _drop_invalid_default(node: dict[str, Any]) -> dict[str, Any]:
    """A few of OpenAI's defaults break their own schema (``stream_options: default null``
    on a non-null object, ``default: []`` on a string): validators reject the document, and
    such a default tells a client nothing. Only schemas without references can be checked."""
    if "default" in node and not _refs(node):
        schema = {key: value for key, value in node.items() if key != "default"}
        if not jsonschema.Draft202012Validator(schema).is_valid(node["default"]):
            del node["default"]
    elif "default" in node and node["default"] is None and not _takes_null(node):
        del node["default"]  # with references (``conversation``): null where no branch is
    return node


def _takes_null(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    branches = [*node.get("anyOf", []), *node.get("oneOf", [])]
    return kind == "null" or (isinstance(kind, list) and "null" in kind) or any(
        isinstance(branch, dict) and _takes_null(branch) for branch in branches)


def _self_reference(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fix(node: dict[str, Any]) -> dict[str, Any]:
        return {"$ref": f"#/components/schemas/{name}"} if node.get("$recursiveRef") == "#" \
            else node
    return fix


def _anchors_to_refs(schemas: dict[str, Any]) -> None:
    """JSON Schema 2019-09's ``$recursiveAnchor`` / ``$recursiveRef: "#"`` (OpenAI's file
    search filters, which the Responses tools reach) are no keywords of OpenAPI 3.1's dialect;
    a reference to the schema itself says the same."""
    for name, schema in schemas.items():
        if isinstance(schema, dict) and schema.pop("$recursiveAnchor", None):
            schemas[name] = _rewrite(schema, _self_reference(name))


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value)
            elif key == "mapping" and isinstance(value, dict):
                found.update(v for v in value.values() if isinstance(v, str))
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _refs(item)
    return found


def _reachable(roots: Any, components: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The components ``roots`` reach, transitively, in the official document's order."""
    wanted: set[tuple[str, str]] = set()
    pending = list(_refs(roots))
    while pending:
        ref = pending.pop()
        parts = ref.removeprefix("#/components/").split("/")
        if not ref.startswith("#/components/") or len(parts) != 2:
            raise ValueError(f"unexpected reference {ref!r}")
        section, name = parts
        if (section, name) in wanted or section not in components:
            continue
        if name not in components[section]:
            continue  # ours (the appliance's own schemas): added later
        wanted.add((section, name))
        pending.extend(_refs(components[section][name]))
    return {section: {name: value for name, value in entries.items()
                      if (section, name) in wanted}
            for section, entries in components.items()
            if any(s == section for s, _ in wanted)}


def _version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def _speech_content(operation: dict[str, Any]) -> None:
    """OpenAI's spec says application/octet-stream for the audio; the answer's real content
    type is the format's (OpenAI's servers send those too): say each one."""
    from appliance.api.wire.speech_audio import MEDIA_TYPES

    ok = operation["responses"]["200"]
    audio = {media: {"schema": {"type": "string", "format": "binary"}}
             for media in MEDIA_TYPES.values()}
    ok["content"] = {**audio, "text/event-stream": ok["content"]["text/event-stream"]}


def build(official_path: Path | None = None) -> dict[str, Any]:
    """``official_path``: another openapi.yaml than the carried copy (to try an update)."""
    if official_path is None:
        official = official_document()
    else:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        official = yaml.load(official_path.read_text(encoding="utf-8"), Loader=loader)
    paths: dict[str, dict[str, Any]] = {}
    for ours, (theirs, methods) in OPENAI_OPERATIONS.items():
        item = official["paths"][theirs]
        paths[ours] = {method: copy.deepcopy(item[method]) for method in methods}
        for operation in paths[ours].values():
            operation.setdefault("responses", {})["default"] = ERROR
    _speech_content(paths["/v1/audio/speech"]["post"])
    for ours, (theirs, methods) in STATE_OPERATIONS.items():
        item = official["paths"][theirs]
        for method in methods:
            operation = paths.setdefault(ours, {})[method] = copy.deepcopy(item[method])
            operation.setdefault("responses", {})["default"] = ERROR
    for path, item in own_paths().items():
        paths[path] = item
    own: dict[str, dict[str, Any]] = {
        "schemas": copy.deepcopy(OWN_SCHEMAS),
        "responses": {"Error": _json(_ref("ErrorResponse"), "An error in OpenAI's envelope.")},
    }
    kept = {key: value for key, value in official["components"].items()
            if key != "securitySchemes"}
    components = _reachable([paths, own], kept)
    _anchors_to_refs(components.get("schemas", {}))
    for section, entries in own.items():
        clash = entries.keys() & components.get(section, {}).keys()
        if clash:
            raise ValueError(f"our {section} {sorted(clash)} shadow OpenAI's")
        components[section] = dict(sorted({**components.get(section, {}),
                                           **entries}.items()))
    components["securitySchemes"] = {
        "ApiKeyAuth": {"type": "http", "scheme": "bearer",
                       "description": "A regular key (`appliance keys create`)."},
        "AdminApiKeyAuth": {"type": "http", "scheme": "bearer",
                            "description": "An admin key (`appliance keys create --admin`)."},
    }
    tags = sorted({tag for item in paths.values() for operation in item.values()
                   for tag in operation.get("tags", ())})
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Appliance API",
            "version": _version(),
            "description": (
                "A self-hosted, OpenAI-compatible inference appliance. The /v1 routes that "
                "OpenAI also serves keep the operations and schemas of OpenAI's OpenAPI "
                f"document, version {official['info']['version']} (Copyright (c) OpenAI, "
                "MIT licence), cut to what is served here. Errors always use OpenAI's "
                "envelope."),
        },
        "servers": [{"url": "/"}],
        "security": [{"ApiKeyAuth": []}],
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": components,
    }
    for fix in (_trim, _nullable_to_union, _drop_invalid_default):
        document = _rewrite(document, fix)
    return document


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--official", type=Path, default=None,
                        help="OpenAI's openapi.yaml (default: the copy in third_party/)")
    parser.add_argument("--check", action="store_true",
                        help="only report whether the committed file is up to date")
    args = parser.parse_args(argv)
    text = render(build(args.official))
    if args.check:
        current = SERVED.read_text(encoding="utf-8") if SERVED.exists() else ""
        if current != text:
            print(f"{SERVED.relative_to(ROOT)} is stale: run scripts/build-openapi",
                  file=sys.stderr)
            return 1
        return 0
    SERVED.write_text(text, encoding="utf-8")
    print(f"wrote {SERVED.relative_to(ROOT)} ({len(text.encode()) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
