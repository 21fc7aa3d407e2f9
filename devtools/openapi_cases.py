"""What fuzzing our ``/openapi.json`` with schemathesis shares between the fast test (fakes,
over ASGI: tests/fast/test_openapi_fuzz.py) and scripts/fuzz_api.py (the real server on
loopback): which modes an operation is fuzzed in, how a drawn case gets a served model, ids of
stored state and a key, how it becomes bytes on the wire, and what an error body must look
like.

No server, no engines here: the script imports this module without pytest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode

# schemathesis' generic classes, with the type parameters this module never needs to name.
Operation = APIOperation[Any, Any, Any, Any]


@dataclass(frozen=True)
class Wire:
    """One request as it travels: what httpx2 sends."""

    method: str
    url: str
    headers: dict[str, str | bytes]
    body: bytes | None


def prepare(kwargs: Mapping[str, Any]) -> Wire:
    """``case.as_transport_kwargs()`` (requests' keywords) -> bytes.

    requests prepares the body and URL (query lists, multipart files, raw bytes) exactly as
    schemathesis' own transport would send them; httpx2 only carries the bytes.
    """
    prepared = requests.Request(
        method=kwargs["method"], url=kwargs["url"], headers=kwargs.get("headers"),
        params=kwargs.get("params"), data=kwargs.get("data"), files=kwargs.get("files"),
        json=kwargs.get("json"), cookies=kwargs.get("cookies")).prepare()
    body = prepared.body.encode() if isinstance(prepared.body, str) else prepared.body
    assert prepared.method is not None and prepared.url is not None
    assert body is None or isinstance(body, bytes)  # prepare() encodes every body it builds
    return Wire(prepared.method, prepared.url, dict(prepared.headers), body)


def envelope_problem(status: int, content: bytes) -> str | None:
    """Why a 4xx or 5xx body is not OpenAI's ``{"error": {message, type, param, code}}``;
    None when it is one, or when the status is not an error."""
    if status < 400:
        return None
    try:
        payload = json.loads(content)
    except ValueError:
        return f"a {status} that is not JSON: {content[:200]!r}"
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys():
        return None
    return f"a {status} without OpenAI's envelope: {payload}"


def openai_error_envelope(ctx: Any, response: Any, case: Any) -> bool | None:
    """The same rule as a schemathesis check (for ``case.validate_response``)."""
    problem = envelope_problem(response.status_code, response.content)
    if response.status_code < 400:
        return None
    assert problem is None, problem
    return True


def _breakable(parameter: Any) -> bool:
    """Negative cases need a constraint to break: any string is a valid path segment, and
    the only header is the key, fixed by the caller."""
    if parameter.location.value == "query":
        return True
    return parameter.location.value == "path" and set(parameter.definition["schema"]) != {
        "type"}


def modes(operation: Operation) -> list[GenerationMode]:
    """Positive always; negative where the operation has something to break."""
    if operation.body or any(map(_breakable, operation.iter_parameters())):
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


def needs_admin(operation: Operation) -> bool:
    return operation.path.startswith("/v1/organization/") or operation.path == "/metrics"


def draw_case(data: st.DataObject, operation: Operation, mode: GenerationMode, key: str,
              models: Mapping[str, str], ids: Mapping[str, str] | None = None) -> Case[Any]:
    """A case with ``key`` as its bearer token. Half the JSON bodies of the operations in
    ``models`` (path -> a served name) get that name, so that generated requests also get past
    the model lookup to the engines; likewise half the path parameters named in ``ids``
    (``conversation_id`` -> the id of a conversation ``key`` owns, ...), so that they get past
    the lookup to the stored state (a random id is only ever a 404)."""
    case = data.draw(operation.as_strategy(mode, headers={"Authorization": f"Bearer {key}"}),
                     label="case")
    model = models.get(operation.path)
    if model is not None and isinstance(case.body, dict) and data.draw(
            st.booleans(), label="served model"):
        case.body = {**case.body, "model": model}
    for name in sorted(case.path_parameters or {}):
        stored = (ids or {}).get(name)
        if stored is not None and data.draw(st.booleans(), label=f"stored {name}"):
            case.path_parameters = {**(case.path_parameters or {}), name: stored}
    return case
