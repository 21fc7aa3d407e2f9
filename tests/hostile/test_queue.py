"""One key floods a chat model's queue over HTTP; another key's request still gets in.

The flood is more than the model's 2 slots and `queue_limit` (64) can hold: the flooding
key is refused for its own excess, and when another key's request comes to the full queue,
the flooding key's newest request gives its place up (a 503 `overloaded`, which the SDKs
retry) instead of the newcomer being refused. Nothing stays queued after the flood's
clients leave.
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx2
import openai

from devtools.server_harness import create_key
from tests.hostile.harness import Bounds, HostileServer

CHAT = "/v1/chat/completions"
QUEUE_LIMIT = 64  # the hostile tier's chat model: the default
FLOOD = QUEUE_LIMIT + 8  # its 2 slots, a full queue, and 6 more
# Generates all its max_tokens (SmolLM2's end tokens banned): the slots stay taken, so the
# queue stays full while the other key comes.
LONG = {"max_tokens": 1000, "temperature": 0, "logit_bias": {"0": -100, "1": -100, "2": -100},
        "messages": [{"role": "user", "content": "Write a very long story about a fox."}]}


def queue_depth(hostile: HostileServer, admin: str) -> float:
    with httpx2.Client(base_url=hostile.base_url, timeout=30,
                       headers={"Authorization": f"Bearer {admin}"}) as http:
        text = http.get("/metrics").text
    found = re.search(rf'^appliance_engine_queue_depth\{{model="{hostile.chat_model}"\}} (\S+)$',
                      text, re.MULTILINE)
    return float(found.group(1)) if found else -1.0


def test_a_key_flooding_the_queue_cannot_keep_another_key_out(
        hostile: HostileServer) -> None:
    admin = create_key(hostile.server.config, "hostile-queue-metrics", admin=True)
    flooder = create_key(hostile.server.config, "hostile-queue-flooder")
    other = create_key(hostile.server.config, "hostile-queue-other")

    async def scenario() -> tuple[list[int], list[int], int]:
        async with httpx2.AsyncClient(
                base_url=hostile.base_url, timeout=120,
                headers={"Authorization": f"Bearer {flooder}"},
                limits=httpx2.Limits(max_connections=200)) as http:
            flood = [asyncio.ensure_future(http.post(CHAT, json={
                "model": hostile.chat_model, **LONG})) for _ in range(FLOOD)]
            deadline = time.monotonic() + 60
            while ((await asyncio.to_thread(queue_depth, hostile, admin) < QUEUE_LIMIT
                    or sum(task.done() for task in flood) < FLOOD - QUEUE_LIMIT - 2)
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.2)
            excess = [task for task in flood if task.done()]
            own_excess = [task.result().status_code for task in excess]
            sdk = openai.AsyncOpenAI(base_url=f"{hostile.base_url}/v1", api_key=other,
                                     max_retries=0, timeout=120)
            waiting = asyncio.ensure_future(sdk.chat.completions.create(
                model=hostile.chat_model, max_tokens=4, temperature=0,
                messages=[{"role": "user", "content": "Say hi"}]))
            while sum(task.done() for task in flood) == len(excess):
                await asyncio.sleep(0.05)  # the other key's request took a place
            pushed = [task.result().status_code for task in flood
                      if task.done() and task not in excess]
            # The queue is full again (the other key's request waits for a slot): the
            # flooding key, with the most waiting, is refused itself.
            refused_again = (await http.post(CHAT, json={
                "model": hostile.chat_model, **LONG})).status_code
            answer = await waiting
            await sdk.close()
            for task in flood:
                task.cancel()
            await asyncio.gather(*flood, return_exceptions=True)
            assert answer.choices[0].message.content
            return own_excess, pushed, refused_again

    # An access line a request (and a "refused" line each 503), the probe's lines; the
    # ledger's WAL pages for a row or two each.
    bounds = Bounds(peak_rss_mib=60, log_kib=1 + 0.5 * 2 * FLOOD + 1.2 * 60,
                    ledger_kib=64 * (2 * FLOOD + 4))
    with hostile.attack(f"chat: one key sends {FLOOD} to a queue of {QUEUE_LIMIT}", bounds):
        own_excess, pushed, refused_again = asyncio.run(scenario())
    assert own_excess == [503] * (FLOOD - QUEUE_LIMIT - 2), own_excess  # its own excess
    assert pushed == [503]  # its newest gave the other key's request its place
    assert refused_again == 503  # it still has the most waiting
    deadline = time.monotonic() + 60
    while queue_depth(hostile, admin) > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert queue_depth(hostile, admin) == 0

