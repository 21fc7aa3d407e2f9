"""The per-request note: what handlers learn about a request, for its ledger row and logs.

The request-context middleware creates one per HTTP request and writes it to the ledger when
the response ends (or the client leaves); handlers fill in the model and token counts. Its
``method`` and ``path`` are what the ledger and the log keep of the client's: bounded and
escaped (``request_context.RECORDED_PATH_CHARS``); the scope keeps the real ones.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


@dataclass
class RequestNote:
    request_id: str
    method: str
    path: str
    started_at: float = field(default_factory=time.time)
    started_perf: float = field(default_factory=time.perf_counter)
    key_id: str | None = None
    model: str | None = None
    kind: str | None = None  # the kind of model its route serves (route_policy.RoutePolicy)
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    first_token_perf: float | None = None
    error_code: str | None = None
    failed_mid_stream: bool = False
    client_gone: bool = False
    audio_seconds: float = 0.0
    images: int = 0
    characters: int = 0  # speech: the characters of the input text
    # A refusal of an address over its failed-auth allowance: no ledger row, no access line
    # (middleware/failed_auth.py), so a flood from one address cannot grow either.
    quiet: bool = False
    # Work that outlives the response (a background response): the final ledger row is
    # written when this is done, with the work's outcome, not when the response ends.
    outlives_response: asyncio.Future[None] | None = None

    def mark_first_token(self) -> None:
        if self.first_token_perf is None:
            self.first_token_perf = time.perf_counter()

    def ttft_ms(self) -> float | None:
        if self.first_token_perf is None:
            return None
        return (self.first_token_perf - self.started_perf) * 1000.0

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started_perf) * 1000.0
