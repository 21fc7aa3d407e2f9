"""The real server with real models, through the official Python SDK (sync and async)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Any

import openai
import pytest

from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
SMOL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def client(server: RealServer, **options: Any) -> openai.OpenAI:
    return server.sdk.with_options(**options) if options else server.sdk


def ledger_row(server: RealServer, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Polls the ledger file, as a person would, for the request's final row (a "started"
    row is written at admission and completed when the request ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{server.server.ledger_path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("select * from requests where request_id = ?",
                             (request_id,)).fetchone()
        db.close()
        if row is not None and row["status"] != "started":
            return dict(row)
        time.sleep(0.1)
    raise AssertionError(f"no final ledger row for {request_id}")


def test_sync_completion_answers_and_is_ledgered(real_server: RealServer) -> None:
    raw = client(real_server).chat.completions.with_raw_response.create(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=20)
    completion = raw.parse()
    text = completion.choices[0].message.content or ""
    assert "Paris" in text
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.model == SMOL
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 5 and usage.completion_tokens > 0
    row = ledger_row(real_server, raw.headers["x-request-id"])
    assert row["status"] == "ok"
    assert row["model"] == SMOL
    assert row["prompt_tokens"] == usage.prompt_tokens
    assert row["completion_tokens"] == usage.completion_tokens
    assert row["price"] == 0.5
    assert row["ttft_ms"] is not None and row["ttft_ms"] > 0


def test_greedy_is_deterministic_and_alias_works(real_server: RealServer) -> None:
    sdk = client(real_server)
    first = sdk.chat.completions.create(model=SMOL, messages=QUESTION, temperature=0,
                                        max_tokens=16)
    second = sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION,
                                         temperature=0, max_tokens=16)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert second.model == SMOL


def test_same_seed_same_sample(real_server: RealServer) -> None:
    sdk = client(real_server)
    story = [{"role": "user", "content": "Write a sentence about a cat."}]
    outputs = {
        sdk.chat.completions.create(model=SMOL, messages=story, temperature=1.0, seed=1234,
                                    max_tokens=24).choices[0].message.content
        for _ in range(2)
    }
    assert len(outputs) == 1


def test_stream_matches_non_stream_and_reports_usage(real_server: RealServer) -> None:
    sdk = client(real_server)
    whole = sdk.chat.completions.create(model=SMOL, messages=QUESTION, temperature=0,
                                        max_tokens=24)
    chunks = list(sdk.chat.completions.create(
        model=SMOL, messages=QUESTION, temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and
                c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_max_tokens_gives_length(real_server: RealServer) -> None:
    completion = client(real_server).chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Count from one to fifty."}],
        max_completion_tokens=3, temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3


def test_stop_sequence_is_cut_from_output(real_server: RealServer) -> None:
    sdk = client(real_server)
    plain = sdk.chat.completions.create(model=SMOL, messages=QUESTION, temperature=0,
                                        max_tokens=20).choices[0].message.content or ""
    assert "Paris" in plain
    stopped = sdk.chat.completions.create(model=SMOL, messages=QUESTION, temperature=0,
                                          max_tokens=20, stop=["aris"])
    assert stopped.choices[0].message.content == plain[: plain.index("aris")]
    assert stopped.choices[0].finish_reason == "stop"


def test_prompt_over_context_is_400(real_server: RealServer) -> None:
    huge = [{"role": "user", "content": "hello " * 2000}]
    with pytest.raises(openai.BadRequestError) as caught:
        client(real_server).chat.completions.create(model=SMOL, messages=huge)
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as caught:
        client(real_server).chat.completions.create(model=SMOL, messages=QUESTION,
                                                    max_tokens=5000)
    assert caught.value.code == "context_length_exceeded"


def test_sdk_error_classes(real_server: RealServer) -> None:
    with pytest.raises(openai.AuthenticationError):
        real_server.sdk.with_options(api_key="sk-app-nope").models.list()
    with pytest.raises(openai.NotFoundError):
        client(real_server).chat.completions.create(model="gpt-5-ultra", messages=QUESTION)
    with pytest.raises(openai.BadRequestError) as caught:
        client(real_server).chat.completions.create(
            model=SMOL, messages=QUESTION, tool_choice="required")
    assert caught.value.param == "tool_choice"  # a tool_choice needs tools


def test_models_list_shows_both_models(real_server: RealServer) -> None:
    ids = {m.id for m in client(real_server).models.list()}
    assert {SMOL, "gpt-4o-mini", "gemma-3-270m"} <= ids


def test_gemma_uses_the_configured_template(real_server: RealServer) -> None:
    completion = client(real_server).chat.completions.create(
        model="gemma-3-270m", messages=QUESTION, temperature=0, max_tokens=12)
    assert completion.model == "gemma-3-270m"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    # The template puts each turn between Gemma's markers; the prompt is longer than the text.
    assert completion.usage.prompt_tokens > 12
    assert "<start_of_turn>" not in (completion.choices[0].message.content or "")


def test_eight_concurrent_async_requests_all_succeed(real_server: RealServer) -> None:
    async def run() -> list[str]:
        sdk = openai.AsyncOpenAI(base_url=real_server.base_url, api_key=real_server.key,
                                 max_retries=0)
        async with sdk:
            async def one(i: int) -> str:
                stream = await sdk.chat.completions.create(
                    model=SMOL, stream=True, max_tokens=12, temperature=0,
                    messages=[{"role": "user", "content": f"Say the number {i}."}])
                return "".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices])
            return await asyncio.gather(*(one(i) for i in range(8)))

    answers = asyncio.run(run())
    assert len(answers) == 8 and all(answers)


def test_client_that_leaves_mid_stream_is_ledgered_as_cancelled(real_server: RealServer) -> None:
    sdk = client(real_server)
    stream = sdk.chat.completions.with_raw_response.create(
        model=SMOL, stream=True, max_tokens=400, temperature=1.0, seed=3,
        messages=[{"role": "user", "content": "Tell me a very long story about a dragon."}])
    request_id = stream.headers["x-request-id"]
    chunks = stream.parse()
    for _, _chunk in zip(range(3), chunks, strict=False):
        pass
    chunks.close()
    row = ledger_row(real_server, request_id, timeout=15)
    assert row["status"] == "cancelled"
    assert row["completion_tokens"] > 0
    # The server still answers the next request: the cancelled one did not hold the model.
    after = sdk.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=5)
    assert after.choices[0].message.content


def test_client_that_gives_up_on_a_non_streaming_request_is_cancelled(
    real_server: RealServer,
) -> None:
    sdk = client(real_server, timeout=0.4)
    with pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.with_raw_response.create(
            model=SMOL, max_tokens=900, temperature=1.0, seed=5,
            messages=[{"role": "user", "content": "Write a very long essay about rivers."}])
    deadline = time.monotonic() + 15
    row: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{real_server.server.ledger_path}?mode=ro", uri=True) as db:
            db.row_factory = sqlite3.Row
            found = db.execute(
                "select * from requests where endpoint = '/v1/chat/completions' "
                "and stream = 0 order by started_at desc limit 1").fetchone()
        db.close()
        if found is not None and found["status"] == "cancelled":
            row = dict(found)
            break
        time.sleep(0.1)
    assert row is not None, "the abandoned request was not ledgered as cancelled"
    assert row["price"] == 0.0  # nothing was delivered


def test_usage_cli_totals_the_ledger(real_server: RealServer) -> None:
    import subprocess
    import sys

    real_server.sdk.chat.completions.create(model=SMOL, messages=QUESTION, max_tokens=2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = subprocess.run(
            [sys.executable, "-m", "appliance.cli", "usage", "--config",
             str(real_server.server.config)], capture_output=True, text=True, check=True)
        line = next((row for row in done.stdout.splitlines()
                     if row.startswith("real-tier\tsmollm2-135m-instruct\t")), None)
        if line is not None:
            requests, ok = int(line.split("\t")[2]), int(line.split("\t")[3])
            assert requests >= ok >= 1
            assert line.endswith("USD")
            return
        time.sleep(0.2)
    raise AssertionError(f"no usage row for the key and model:\n{done.stdout}")
