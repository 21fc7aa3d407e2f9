"""OpenAI's four shapes for text-or-tokens inputs: a string, strings, token ids, lists of ids.

Used by /v1/embeddings (``input``) and /v1/completions (``prompt``).
"""

from __future__ import annotations

from typing import Any

from appliance.errors import InvalidRequest


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def texts_or_token_lists(raw: str | list[Any], param: str, max_items: int,
                         allow_empty_text: bool = False) -> list[str] | list[list[int]]:
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise InvalidRequest(f"'{param}' must not be empty.", param=param, code="invalid_value")
    # A flat list of token ids is one item, however long (its length is the engine's to
    # bound: it knows the context), so the count is checked once the shape is known.
    if _is_token_list(raw):
        return [list(raw)]
    if len(raw) > max_items:
        raise InvalidRequest(f"'{param}' takes at most {max_items} items.", param=param,
                             code="invalid_value")
    if all(isinstance(item, str) for item in raw):
        if not allow_empty_text and any(not item for item in raw):
            raise InvalidRequest(f"'{param}' strings must not be empty.", param=param,
                                 code="invalid_value")
        return list(raw)
    if all(_is_token_list(item) for item in raw):
        return [list(item) for item in raw]
    raise InvalidRequest(f"'{param}' must be a string, a list of strings, a list of token ids "
                         "or a list of lists of token ids.", param=param, code="invalid_type")
