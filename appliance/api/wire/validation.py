"""Reading a JSON request body into a pydantic model, with OpenAI-shaped 400s and 413s.

Invalid input names the offending field in ``param`` (dotted, with list indexes:
``messages[0].content``), so a client sees exactly what to fix. Types are strict, as OpenAI's
are: a string is not a bool or a number and a number is not a string (``"stream": "yes"`` is
a 400 naming ``stream``); an integer is still a valid float. A route's bounds on sizes and
counts (``check``) run on the parsed JSON before validation builds anything from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from appliance.api.wire.json_values import (
    could_hold_unrepresentable,
    find_unrepresentable,
    utf8_text,
)
from appliance.errors import InvalidRequest, PayloadTooLarge

log = logging.getLogger("appliance.api")
ModelT = TypeVar("ModelT", bound=BaseModel)
# OpenAI's request bodies have a few dozen fields; more is not a client we know.
MAX_FIELDS = 256
_LOGGED_FIELDS = 8  # unknown field names in one log line
_LOGGED_NAME_CHARS = 64
Check = Callable[[dict[str, Any]], None]


async def read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and \
            int(declared) > max_bytes:
        raise PayloadTooLarge(f"Request body is larger than the limit of {max_bytes} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"Request body is larger than the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_json(request: Request, model: type[ModelT], max_bytes: int,
                     check: Check | None = None) -> ModelT:
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type.split(";")[0].lower():
        raise InvalidRequest(
            f"Unsupported content type {content_type!r}: send a JSON body "
            "with Content-Type: application/json."
        )
    body = await read_body(request, max_bytes)
    text = utf8_text(body)
    if text is None:
        raise InvalidRequest("The request body is not UTF-8 text: send JSON encoded as UTF-8.")
    try:
        data = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):  # ValueError: also an integer of over 4,300 digits
        raise InvalidRequest(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    found = (await anyio.to_thread.run_sync(find_unrepresentable, text, data)
             if could_hold_unrepresentable(text) else None)
    if found is not None:
        param = dotted(found.location) or None
        where = f"Invalid value for '{param}'" if param else "Invalid field name"
        raise InvalidRequest(f"{where}: {found.reason}", param=param, code="invalid_value")
    if len(data) > MAX_FIELDS:
        raise InvalidRequest(f"The request body has {len(data)} fields; this server allows at "
                             f"most {MAX_FIELDS}.", code="invalid_value")
    if check is not None:
        check(data)
    try:
        parsed = model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise invalid_from_validation(exc) from None
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    extra = list((parsed.model_extra or {}).keys())
    if extra:
        # Clients send fields newer than this server; accepting keeps them working. The line
        # names a few, shortened: the names are the client's, as long as it likes.
        names = [name[:_LOGGED_NAME_CHARS] for name in extra[:_LOGGED_FIELDS]]
        more = f" and {len(extra) - len(names)} more" if len(extra) > len(names) else ""
        log.info("ignoring unknown request fields: %s%s", ", ".join(sorted(names)), more)
    return parsed


def _not_json(constant: str) -> None:
    """NaN and Infinity are Python's extensions, not JSON: no client of ours sends them."""
    raise ValueError(f"{constant} is not JSON")


def dotted(location: tuple[int | str, ...]) -> str:
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def invalid_from_validation(exc: ValidationError) -> InvalidRequest:
    errors = exc.errors(include_url=False)
    first = errors[0]
    location = _location(first["loc"])
    param = dotted(location) or None
    if first["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    # A union (``str | list[str]``) fails once per branch: say every type it would take.
    expected = [_EXPECTED.get(e["type"]) for e in errors if _location(e["loc"]) == location]
    if param and expected and all(expected):
        wanted = " or ".join(dict.fromkeys(e for e in expected if e))
        return InvalidRequest(f"Invalid type for '{param}': expected {wanted}, but got "
                              f"{_json_type(first['input'])} instead.", param=param,
                              code="invalid_type")
    message = f"Invalid value for '{param}': {first['msg']}." if param else first["msg"]
    return InvalidRequest(message, param=param, code="invalid_value")


# pydantic's error types for a value of the wrong JSON type, as OpenAI words the type.
_EXPECTED = {"bool_type": "a boolean", "int_type": "an integer", "float_type": "a number",
             "string_type": "a string", "list_type": "an array", "dict_type": "an object",
             "model_type": "an object", "model_attributes_type": "an object"}


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _location(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # Drop pydantic's union-branch labels (e.g. "str", "list[...]") from the location.
    return tuple(p for p in loc if isinstance(p, int) or not _is_union_label(str(p)))


def _is_union_label(part: str) -> bool:
    return part in {"str", "int", "float", "bool", "none"} or "[" in part or part.startswith(
        ("list", "dict", "function-", "literal", "constrained")
    )
