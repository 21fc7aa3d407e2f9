"""The Responses API's response object, and the framing of its event stream.

Every body of one response (queued, in progress, final) repeats its id, ``created_at``, model
and the echoed request fields (``ResponseShape``); ``usage`` carries
``input_tokens_details.cached_tokens`` and ``output_tokens_details.reasoning_tokens`` (of the
output tokens, those the model spent reasoning; 0 on a model that does not reason). A stream is
``event: <type>`` + ``data: <json>`` frames whose ``sequence_number`` counts from 0 without
gaps, and, unlike chat, has no ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from appliance.engines.base import Usage
from appliance.errors import ApplianceError

JSON = dict[str, Any]
Status = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
FINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})
# The stream event that ends a response of each final status (a cancelled one: failed's
# shape is the nearest the spec has; its body says "cancelled").
ENDING_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete",
                 "failed": "response.failed", "cancelled": "response.failed"}


def usage_json(usage: Usage) -> JSON:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def error_json(error: ApplianceError) -> JSON:
    """A failed response's ``error``: the spec's codes are few; the message says the rest."""
    if error.status == 429:
        code = "rate_limit_exceeded"
    elif 400 <= error.status < 500:
        code = "invalid_prompt"
    else:
        code = "server_error"
    return {"code": code, "message": error.message}


@dataclass(frozen=True)
class ResponseShape:
    """What every body of one response repeats."""

    id: str
    created_at: int
    model: str
    echo: JSON  # the request fields, as wire/responses.echoed fills them in

    def body(self, status: Status, output: Sequence[JSON] = (), *, usage: Usage | None = None,
             error: JSON | None = None, incomplete: str | None = None,
             completed_at: int | None = None) -> JSON:
        body: JSON = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": completed_at,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "model": self.model,
            "output": list(output),
            **self.echo,
        }
        if usage is not None:
            body["usage"] = usage_json(usage)
        return body


def without_logprobs(body: JSON) -> JSON:
    """A stored body as a retrieve without ``include: message.output_text.logprobs`` shows
    it: every output_text part's logprobs empty."""
    def part(p: Any) -> Any:
        return {**p, "logprobs": []} if isinstance(p, dict) and "logprobs" in p else p

    def item(i: Any) -> Any:
        if isinstance(i, dict) and i.get("type") == "message":
            return {**i, "content": [part(p) for p in i.get("content", [])]}
        return i

    return {**body, "output": [item(i) for i in body.get("output", [])]}


def with_sealed_reasoning(body: JSON, seal: Callable[[str], str] | None) -> JSON:
    """A stored body as a retrieve shows it: with ``include: reasoning.encrypted_content``
    (``seal`` given) every reasoning item carries its sealed text, made anew; without, none
    does (a body stored by a create that included it keeps it, but shows it only when asked)."""
    def item(i: Any) -> Any:
        if not isinstance(i, dict) or i.get("type") != "reasoning":
            return i
        bare = {k: v for k, v in i.items() if k != "encrypted_content"}
        if seal is None:
            return bare
        text = "".join(str(p.get("text", "")) for p in i.get("content", [])
                       if isinstance(p, dict))
        return {**bare, "encrypted_content": seal(text)}

    return {**body, "output": [item(i) for i in body.get("output", [])]}


def error_event(error: ApplianceError) -> JSON:
    return {"type": "error", "code": error.code or error.error_type, "message": error.message,
            "param": error.param}


class EventNumbers:
    """Numbers one stream's events from ``start`` on, without gaps."""

    def __init__(self, start: int = 0):
        self.next = start

    def number(self, event: JSON) -> JSON:
        numbered = {**event, "sequence_number": self.next}
        self.next += 1
        return numbered


def sse_frame(event: JSON) -> bytes:
    """One event as OpenAI frames it: its type on the ``event:`` line, then its data."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
