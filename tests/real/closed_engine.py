"""What a closed engine answers: a new request is a ServiceUnavailable that says so."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from appliance.errors import ServiceUnavailable


def assert_refused_once_closed(request: Callable[[], AsyncIterator[object]]) -> None:
    """``request`` (a closed engine's event stream) is refused with a 503 saying the model
    is shutting down, before any event."""
    async def drain() -> None:
        async for _ in request():
            pass

    with pytest.raises(ServiceUnavailable, match="shutting down"):
        asyncio.run(drain())
