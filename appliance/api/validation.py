"""Reading a JSON request body into a pydantic model, with OpenAI-shaped 400s and 413s.

Invalid input names the offending field in ``param`` (dotted, with list indexes:
``messages[0].content``), so a client sees exactly what to fix.
"""

from __future__ import annotations

import json
import logging
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from appliance.errors import InvalidRequest, PayloadTooLarge

log = logging.getLogger("appliance.api")
ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"Request body is larger than the limit of {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"Request body is larger than the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json(request: Request, model: type[ModelT], max_bytes: int) -> ModelT:
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type.split(";")[0].lower():
        raise InvalidRequest(
            f"Unsupported content type {content_type!r}: send a JSON body "
            "with Content-Type: application/json."
        )
    body = await read_body(request, max_bytes)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    extra = sorted((parsed.model_extra or {}).keys())
    if extra:
        # Clients send fields newer than this server; accepting keeps them working.
        log.info("ignoring unknown request fields: %s", ", ".join(extra))
    return parsed


def dotted(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    # Drop pydantic's union-branch labels (e.g. "str", "list[...]") from the location.
    location = tuple(
        p for p in first["loc"] if isinstance(p, int) or not _is_union_label(str(p))
    )
    param = dotted(location) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}."
    return InvalidRequest(message, param=param, code="invalid_value"
                          if first["type"] != "missing" else "missing_required_parameter")


def _is_union_label(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "none"} or "[" in part or part.startswith(
        ("list", "dict", "function-", "literal", "constrained")
    )
