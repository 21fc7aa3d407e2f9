"""Stored state survives the server: a conversation, a stored chat completion and a chain of
stored responses, written through the official SDK to the real server on a real model, are
all there after ``kill -9`` and a restart, for their key and for nobody else."""

from __future__ import annotations

import signal
import sqlite3
from contextlib import closing
from pathlib import Path

import openai
import pytest

from devtools.server_harness import SMOLLM2, free_port, make_key, start_server, write_config

pytestmark = pytest.mark.real
MODEL = "smol"


def test_state_survives_kill_9_and_a_restart(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, f'[[models]]\nid = "{MODEL}"\npath = "{SMOLLM2}"\n'
                          "parallel = 2\ncontext_length = 1024\n",
                          server_extra="response_retention_days = 7")
    alice, bob = make_key(config, "alice"), make_key(config, "bob")
    server = start_server(config, port)
    try:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=alice.secret,
                           max_retries=0, timeout=120) as client:
            conv = client.conversations.create(metadata={"topic": "tea"}, items=[
                {"type": "message", "role": "user", "content": "What is tea?"}])
            client.conversations.items.create(conv.id, items=[
                {"type": "message", "role": "assistant", "content": "A drink."}])
            completion = client.chat.completions.create(
                model=MODEL, store=True, metadata={"run": "1"}, max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": "Say hi"}])
            first = client.responses.create(model=MODEL, input="Say hi", max_output_tokens=16,
                                            temperature=0)
            second = client.responses.create(model=MODEL, input="Again",
                                             previous_response_id=first.id,
                                             max_output_tokens=16, temperature=0)
        # Every write above was answered, so it is on disk: no graceful shutdown needed.
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    finally:
        server.stop()
    state_file = config.parent / "data" / "state.sqlite"
    with closing(sqlite3.connect(state_file)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    restarted = start_server(config, port, append_log=True)
    try:
        with openai.OpenAI(base_url=f"{restarted.base_url}/v1", api_key=alice.secret,
                           max_retries=0, timeout=120) as client:
            assert client.conversations.retrieve(conv.id).metadata == {"topic": "tea"}
            texts = [item.content[0].text  # type: ignore[union-attr,index]
                     for item in client.conversations.items.list(conv.id, order="asc")]
            assert texts == ["What is tea?", "A drink."]
            kept = client.chat.completions.retrieve(completion.id)
            assert kept.choices[0].message.content == completion.choices[0].message.content
            assert kept.metadata == {"run": "1"}
            assert [c.id for c in client.chat.completions.list(metadata={"run": "1"})] == \
                [completion.id]
            assert client.responses.retrieve(second.id).output_text == second.output_text
            inputs = list(client.responses.input_items.list(second.id))
            assert [item.type for item in inputs] == ["message"]
            # The chain continues after the restart: its first turn is still there.
            third = client.responses.create(model=MODEL, input="Once more",
                                            previous_response_id=second.id,
                                            max_output_tokens=16, temperature=0)
            assert third.previous_response_id == second.id
        with openai.OpenAI(base_url=f"{restarted.base_url}/v1", api_key=bob.secret,
                           max_retries=0, timeout=120) as stranger:
            for attempt in (lambda: stranger.conversations.retrieve(conv.id),
                            lambda: stranger.chat.completions.retrieve(completion.id),
                            lambda: stranger.responses.input_items.list(second.id),
                            lambda: stranger.responses.delete(first.id)):
                with pytest.raises(openai.NotFoundError):
                    attempt()
            assert list(stranger.chat.completions.list()) == []
    finally:
        restarted.stop()
