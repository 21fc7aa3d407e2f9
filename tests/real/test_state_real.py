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
from openai.types.responses import Response

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


def _turn(client: openai.OpenAI, text: str, **link: str) -> Response:
    made: Response = client.responses.create(  # type: ignore[call-overload]
        model=MODEL, input=text, max_output_tokens=16, temperature=0, **link)
    return made


def _explicit_history(turns: list[tuple[str, Response]]) -> list[dict[str, object]]:
    """What a stateless client would send to continue: every turn's input, then its output."""
    items: list[dict[str, object]] = []
    for text, made in turns:
        items.append({"type": "message", "role": "user", "content": text})
        items.extend(item.model_dump(exclude_none=True) for item in made.output)
    return items


def test_five_turn_chains_survive_a_restart_in_the_middle(tmp_path: Path) -> None:
    """One chain through previous_response_id and one through a conversation, three turns
    before a kill -9 and two after: the fifth turn reads all four before it (its prompt is,
    token for token, what a client resending the whole history would send), and another key
    can neither read nor continue either."""
    port = free_port()
    config = write_config(tmp_path, port, f'[[models]]\nid = "{MODEL}"\npath = "{SMOLLM2}"\n'
                          "parallel = 2\ncontext_length = 2048\n")
    alice, bob = make_key(config, "alice"), make_key(config, "bob")
    texts = [f"Turn {n}: say a short word." for n in range(1, 6)]
    chained: list[tuple[str, Response]] = []
    talked: list[tuple[str, Response]] = []
    server = start_server(config, port)
    try:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=alice.secret,
                           max_retries=0, timeout=120) as client:
            conv = client.conversations.create()
            for text in texts[:3]:
                link = {"previous_response_id": chained[-1][1].id} if chained else {}
                chained.append((text, _turn(client, text, **link)))
                talked.append((text, _turn(client, text, conversation=conv.id)))
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    finally:
        server.stop()

    restarted = start_server(config, port, append_log=True)
    try:
        with openai.OpenAI(base_url=f"{restarted.base_url}/v1", api_key=alice.secret,
                           max_retries=0, timeout=120) as client:
            for text in texts[3:]:
                chained.append((text, _turn(client, text,
                                            previous_response_id=chained[-1][1].id)))
                talked.append((text, _turn(client, text, conversation=conv.id)))
            for turns in (chained, talked):
                prompts = [made.usage.input_tokens for _, made in turns]  # type: ignore[union-attr]
                assert prompts == sorted(prompts) and len(set(prompts)) == 5, prompts
            # The chain's fifth turn continued exactly the history a client would resend.
            probe = "And now?"
            by_chain = client.responses.input_tokens.count(
                model=MODEL, previous_response_id=chained[-1][1].id, input=probe)
            by_hand = client.responses.input_tokens.count(
                model=MODEL, input=[*_explicit_history(chained),  # type: ignore[list-item]
                                    {"type": "message", "role": "user", "content": probe}])
            assert by_chain.input_tokens == by_hand.input_tokens
            # The conversation holds the ten items of its five turns, in order.
            items = list(client.conversations.items.list(conv.id, order="asc", limit=100))
            users = [item.content[0].text for item in items  # type: ignore[union-attr,index]
                     if getattr(item, "role", None) == "user"]
            assert users == texts and len(items) == 10
        with openai.OpenAI(base_url=f"{restarted.base_url}/v1", api_key=bob.secret,
                           max_retries=0, timeout=120) as stranger:
            for attempt in (lambda: stranger.responses.retrieve(chained[2][1].id),
                            lambda: _turn(stranger, "Go on",
                                          previous_response_id=chained[-1][1].id),
                            lambda: _turn(stranger, "Go on", conversation=conv.id),
                            lambda: stranger.conversations.items.list(conv.id),
                            lambda: stranger.responses.delete(chained[0][1].id)):
                with pytest.raises(openai.NotFoundError):
                    attempt()
    finally:
        restarted.stop()
