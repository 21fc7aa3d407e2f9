"""Warms the request path at startup, so the first client request is as fast as the tenth.

Loading and warming the models is the loader's job; this covers what only the HTTP side pays
on first use: anyio's worker threads (its asyncio backend is imported lazily), the first
key lookup in SQLite, request validation and the engine's async hand-off. No ledger row and
no key are involved.
"""

from __future__ import annotations

import logging
import time

import anyio.to_thread

from appliance.api.services import Services
from appliance.api.wire.chat import ChatCompletionRequest, to_chat_params
from appliance.engines.base import CHAT, CancelToken

log = logging.getLogger("appliance.api")


async def warm_request_path(services: Services) -> None:
    started = time.perf_counter()
    await anyio.to_thread.run_sync(services.keys.lookup, "sk-app-warm-up-not-a-key")
    for engine in services.catalog.engines_of(CHAT):
        body = ChatCompletionRequest.model_validate({
            "model": engine.info.id,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 1,
            "temperature": 0,
        })
        cancel = CancelToken()
        async for _ in engine.chat(to_chat_params(body), cancel):
            pass
    log.info("request path warmed in %.1f ms", (time.perf_counter() - started) * 1000)
