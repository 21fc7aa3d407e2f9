"""Chat completions of a reasoning model over fakes, through the official SDK: the reasoning
apart from the content (both field conventions, streamed and not, n > 1), reasoning_effort,
chat_template_kwargs and its bounds, reasoning given back in the history, /v1/models, stored
completions and the [server] key that picks the field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from appliance.api.app import create_app
from appliance.api.services import Services
from appliance.config import ReasoningField, load_config
from appliance.engines.base import CHAT, Listing
from appliance.engines.catalog import Catalog
from appliance.errors import ConfigError
from tests.fakes import FakeChatEngine, FakeKeys, ListLedger
from tests.openapi_contract import validate
from tests.state_stack import state_stack

pytestmark = pytest.mark.anyio
KEY = "sk-app-reasoning-0123456789"
USER = [{"role": "user", "content": "Say hello"}]
THINKER = "fake-think"


@dataclass
class ReasoningStack:
    thinker: FakeChatEngine
    plain: FakeChatEngine
    client: openai.AsyncOpenAI
    http: httpx2.AsyncClient

    async def post(self, body: dict[str, Any]) -> httpx2.Response:
        return await self.http.post("/v1/chat/completions", json=body,
                                    headers={"authorization": f"Bearer {KEY}"})

    @property
    def thought(self) -> str:
        return self.thinker.thinking

    @property
    def thought_tokens(self) -> int:
        return len(self.thinker.thinking.split())


@asynccontextmanager
async def reasoning_stack(field: ReasoningField = "both") -> AsyncIterator[ReasoningStack]:
    thinker = FakeChatEngine(model_id=THINKER, reasoning="think")
    plain = FakeChatEngine()
    keys = FakeKeys()
    keys.add(KEY)
    app = create_app(Services(
        catalog=Catalog([Listing(CHAT, thinker, ("o4-mini",)), Listing(CHAT, plain)]),
        ledger=ListLedger(), keys=keys, reasoning_field=field))
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app),
                              base_url="http://appliance.test")
    client = openai.AsyncOpenAI(base_url="http://appliance.test/v1", api_key=KEY,
                                http_client=http, max_retries=0)
    try:
        yield ReasoningStack(thinker, plain, client, http)
    finally:
        await client.close()
        await http.aclose()


@pytest.fixture
async def rs() -> AsyncIterator[ReasoningStack]:
    async with reasoning_stack() as stack:
        yield stack


def sse_chunks(response: httpx2.Response) -> list[dict[str, Any]]:
    frames = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert frames[-1] == "[DONE]", response.text
    return [json.loads(frame) for frame in frames[:-1]]


def error_of(response: httpx2.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


# --- the reply --------------------------------------------------------------------------------


async def test_plain_reply_carries_reasoning_apart_under_both_names(rs: ReasoningStack) -> None:
    raw = await rs.client.chat.completions.with_raw_response.create(model="o4-mini",
                                                                    messages=USER)
    body = json.loads(raw.content)
    validate(body, "CreateChatCompletionResponse")
    message = body["choices"][0]["message"]
    assert message["content"] == rs.thinker.reply
    assert message["reasoning_content"] == rs.thought
    assert message["reasoning"] == rs.thought
    usage = body["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == rs.thought_tokens
    assert usage["completion_tokens"] == rs.thought_tokens + len(rs.thinker.reply.split())
    # The SDK keeps the fields it does not know as extra attributes of the message.
    parsed = raw.parse().choices[0].message
    assert getattr(parsed, "reasoning_content", None) == rs.thought
    assert parsed.model_extra is not None and parsed.model_extra["reasoning"] == rs.thought


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_one_convention_names_one_field(field: ReasoningField) -> None:
    other = "reasoning" if field == "reasoning_content" else "reasoning_content"
    async with reasoning_stack(field) as rs:
        message = (await rs.post({"model": THINKER, "messages": USER})).json()[
            "choices"][0]["message"]
        assert message[field] == rs.thought and other not in message
        chunks = sse_chunks(await rs.post({"model": THINKER, "messages": USER,
                                           "stream": True}))
        deltas = [c["choices"][0]["delta"] for c in chunks]
        assert "".join(d.get(field, "") for d in deltas) == rs.thought
        assert all(other not in d for d in deltas)


async def test_stream_sends_role_then_reasoning_then_content(rs: ReasoningStack) -> None:
    response = await rs.post({"model": "o4-mini", "messages": USER, "stream": True,
                              "stream_options": {"include_usage": True}})
    chunks = sse_chunks(response)
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["role"] == "assistant"
    kinds = ["reasoning" if "reasoning_content" in d else "content" for d in deltas[1:]
             if d.get("reasoning_content") or d.get("content")]
    assert kinds == sorted(kinds, key=lambda kind: kind != "reasoning")  # reasoning first
    assert "".join(d.get("reasoning_content", "") for d in deltas) == rs.thought
    assert "".join(d.get("reasoning", "") for d in deltas) == rs.thought
    assert "".join(d.get("content") or "" for d in deltas) == rs.thinker.reply
    assert all("reasoning" not in d for d in deltas if d.get("content"))
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] == rs.thought_tokens


async def test_the_sdk_stream_keeps_reasoning_deltas_as_extras(rs: ReasoningStack) -> None:
    stream = await rs.client.chat.completions.create(model="o4-mini", messages=USER,
                                                     stream=True)
    reasoning, content = [], []
    async for chunk in stream:
        delta = chunk.choices[0].delta
        reasoning.append(getattr(delta, "reasoning_content", None) or "")
        content.append(delta.content or "")
    assert "".join(reasoning) == rs.thought
    assert "".join(content) == rs.thinker.reply


async def test_each_of_n_choices_reasons_on_its_own(rs: ReasoningStack) -> None:
    body = (await rs.post({"model": THINKER, "messages": USER, "n": 2})).json()
    assert [c["message"]["reasoning_content"] for c in body["choices"]] == [rs.thought] * 2
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == \
        2 * rs.thought_tokens
    chunks = sse_chunks(await rs.post({"model": THINKER, "messages": USER, "n": 2,
                                       "stream": True}))
    by_choice: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            text = choice["delta"].get("reasoning_content", "")
            by_choice[choice["index"]] = by_choice.get(choice["index"], "") + text
    assert by_choice == {0: rs.thought, 1: rs.thought}


async def test_a_model_that_does_not_reason_sends_no_reasoning_field(
        rs: ReasoningStack) -> None:
    body = (await rs.post({"model": "fake-chat", "messages": USER})).json()
    message = body["choices"][0]["message"]
    assert "reasoning_content" not in message and "reasoning" not in message
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


# --- reasoning_effort -------------------------------------------------------------------------


@pytest.mark.parametrize("effort", ["none", "minimal"])
async def test_effort_none_or_minimal_yields_no_reasoning(rs: ReasoningStack,
                                                          effort: str) -> None:
    completion = await rs.client.chat.completions.create(
        model="o4-mini", messages=USER, reasoning_effort=effort)
    assert rs.thinker.calls[-1].reasoning_effort == effort
    message = completion.choices[0].message
    assert message.content == rs.thinker.reply
    assert (message.model_extra or {}).get("reasoning_content") is None
    assert completion.usage is not None and completion.usage.completion_tokens_details
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
async def test_effort_reaches_the_engine(rs: ReasoningStack, effort: str) -> None:
    await rs.client.chat.completions.create(model="o4-mini", messages=USER,
                                            reasoning_effort=effort)
    assert rs.thinker.calls[-1].reasoning_effort == effort


async def test_no_effort_leaves_the_model_to_reason_as_trained(rs: ReasoningStack) -> None:
    await rs.client.chat.completions.create(model="o4-mini", messages=USER)
    assert rs.thinker.calls[-1].reasoning_effort is None


@pytest.mark.parametrize("effort", ["xhigh", "max"])
async def test_the_efforts_past_high_think_as_high(rs: ReasoningStack, effort: str) -> None:
    """The spec's ReasoningEffort (chat and responses alike) has xhigh and max; there is no
    budget past high's, so they are high's."""
    await rs.client.chat.completions.create(model="o4-mini", messages=USER,
                                            reasoning_effort=effort)
    assert rs.thinker.calls[-1].reasoning_effort == "high"


@pytest.mark.parametrize("effort", ["HIGH", "", "x" * 300])
async def test_an_unknown_effort_is_refused_by_name(rs: ReasoningStack, effort: str) -> None:
    error = error_of(await rs.post({"model": THINKER, "messages": USER,
                                    "reasoning_effort": effort}))
    assert error["param"] == "reasoning_effort"
    assert error["code"] in ("invalid_value", "string_above_max_length")
    assert rs.thinker.calls == []


async def test_an_effort_that_is_not_a_string_is_refused(rs: ReasoningStack) -> None:
    error = error_of(await rs.post({"model": THINKER, "messages": USER,
                                    "reasoning_effort": 3}))
    assert error["param"] == "reasoning_effort"


async def test_effort_on_a_model_that_does_not_reason_is_refused(rs: ReasoningStack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await rs.client.chat.completions.create(model="fake-chat", messages=USER,
                                                reasoning_effort="low")
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["param"], error["code"]) == ("reasoning_effort", "unsupported_parameter")
    assert error["message"] == ("Unsupported parameter: 'reasoning_effort' is not supported "
                                "with this model.")
    assert rs.plain.calls == []


# --- chat_template_kwargs ---------------------------------------------------------------------


async def test_template_kwargs_reach_the_engine(rs: ReasoningStack) -> None:
    kwargs = {"enable_thinking": True, "mode": "brief", "depth": 2, "ratio": 0.5,
              "nothing": None, "tags": ["a", 1, False]}
    await rs.client.chat.completions.create(model="fake-chat", messages=USER,
                                            extra_body={"chat_template_kwargs": kwargs})
    assert dict(rs.plain.calls[-1].template_kwargs) == kwargs
    assert rs.plain.calls[-1].reasoning_effort is None  # no think format: only a variable


async def test_enable_thinking_false_is_effort_none_on_a_think_model(
        rs: ReasoningStack) -> None:
    body = (await rs.post({"model": THINKER, "messages": USER,
                           "chat_template_kwargs": {"enable_thinking": False}})).json()
    assert rs.thinker.calls[-1].reasoning_effort == "none"
    assert rs.thinker.calls[-1].template_kwargs == {"enable_thinking": False}
    assert "reasoning_content" not in body["choices"][0]["message"]


@pytest.mark.parametrize(("effort", "enable"), [("high", False), ("none", True),
                                                ("minimal", True)])
async def test_an_effort_contradicting_enable_thinking_is_refused(
        rs: ReasoningStack, effort: str, enable: bool) -> None:
    error = error_of(await rs.post({"model": THINKER, "messages": USER,
                                    "reasoning_effort": effort,
                                    "chat_template_kwargs": {"enable_thinking": enable}}))
    assert error["param"] == "reasoning_effort"


async def test_an_agreeing_effort_and_enable_thinking_are_taken(rs: ReasoningStack) -> None:
    response = await rs.post({"model": THINKER, "messages": USER, "reasoning_effort": "low",
                              "chat_template_kwargs": {"enable_thinking": True}})
    assert response.status_code == 200, response.text
    assert rs.thinker.calls[-1].reasoning_effort == "low"


@pytest.mark.parametrize(("kwargs", "param", "bound"), [
    ({f"k{i}": 1 for i in range(17)}, "chat_template_kwargs", "16"),
    ({"k" * 65: 1}, "chat_template_kwargs", "64"),
    ({"two words": 1}, "chat_template_kwargs", "identifier"),
    ({"1st": 1}, "chat_template_kwargs", "identifier"),
    ({"v": "x" * 1025}, "chat_template_kwargs.v", "1024"),
    ({"v": list(range(17))}, "chat_template_kwargs.v", "16"),
    ({"v": ["ok", "x" * 1025]}, "chat_template_kwargs.v[1]", "1024"),
    ({"v": {"nested": 1}}, "chat_template_kwargs.v", "flat list"),
    ({"v": [[1]]}, "chat_template_kwargs.v[0]", "flat list"),
    ({"messages": []}, "chat_template_kwargs.messages", "reserved"),
    ({"tools": []}, "chat_template_kwargs.tools", "reserved"),
    ({"add_generation_prompt": False}, "chat_template_kwargs.add_generation_prompt",
     "reserved"),
    ({"bos_token": "<s>"}, "chat_template_kwargs.bos_token", "reserved"),
    ({"eos_token": "</s>"}, "chat_template_kwargs.eos_token", "reserved"),
])
async def test_template_kwargs_bounds_are_named(rs: ReasoningStack, kwargs: dict[str, Any],
                                                param: str, bound: str) -> None:
    error = error_of(await rs.post({"model": "fake-chat", "messages": USER,
                                    "chat_template_kwargs": kwargs}))
    assert error["param"] == param
    assert bound in error["message"]
    assert rs.plain.calls == []


@pytest.mark.parametrize("kwargs", [[], "enable_thinking", 1])
async def test_template_kwargs_must_be_an_object(rs: ReasoningStack, kwargs: Any) -> None:
    error = error_of(await rs.post({"model": "fake-chat", "messages": USER,
                                    "chat_template_kwargs": kwargs}))
    assert error["param"] == "chat_template_kwargs"


# --- reasoning given back ---------------------------------------------------------------------


def history(**reasoning: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello.", **reasoning},
            {"role": "user", "content": "And now?"}]


@pytest.mark.parametrize("name", ["reasoning_content", "reasoning", "thinking"])
async def test_reasoning_given_back_reaches_the_engine(rs: ReasoningStack, name: str) -> None:
    await rs.client.chat.completions.create(model="o4-mini",
                                            messages=history(**{name: "I thought."}))
    messages = rs.thinker.calls[-1].messages
    assert [m.reasoning for m in messages] == [None, "I thought.", None]
    assert messages[1].content == "Hello."


async def test_a_reply_echoed_with_both_fields_is_one_reasoning(rs: ReasoningStack) -> None:
    first = (await rs.post({"model": THINKER, "messages": USER})).json()
    echoed = first["choices"][0]["message"]
    response = await rs.post({"model": THINKER,
                              "messages": [*USER, echoed, {"role": "user", "content": "Go"}]})
    assert response.status_code == 200, response.text
    assert rs.thinker.calls[-1].messages[1].reasoning == rs.thought


async def test_two_different_reasonings_in_one_message_are_refused(rs: ReasoningStack) -> None:
    error = error_of(await rs.post({"model": THINKER, "messages": history(
        reasoning_content="one", reasoning="two")}))
    assert error["param"] == "messages[1].reasoning"


@pytest.mark.parametrize("role", ["user", "system", "developer"])
async def test_only_assistant_messages_carry_reasoning(rs: ReasoningStack, role: str) -> None:
    error = error_of(await rs.post({"model": THINKER, "messages": [
        {"role": role, "content": "Hi", "reasoning_content": "sneaky"}]}))
    assert error["param"] == "messages[0].reasoning_content"


async def test_reasoning_given_back_that_is_not_text_is_refused(rs: ReasoningStack) -> None:
    error = error_of(await rs.post({"model": THINKER,
                                    "messages": history(reasoning_content=["a"])}))
    assert error["param"].startswith("messages[1].reasoning_content")


async def test_reasoning_given_back_is_bounded_as_content(rs: ReasoningStack) -> None:
    # The stack's bounds are the defaults: one message's text is at most 1,000,000 characters,
    # but the body bound (8 MiB) lets a larger one arrive.
    error = error_of(await rs.post({"model": THINKER,
                                    "messages": history(reasoning="x" * 1_000_001)}))
    assert error["param"] == "messages[1].reasoning"
    assert "1000000" in error["message"]
    assert rs.thinker.calls == []


# --- /v1/models, stored completions, the server key -----------------------------------------


async def test_models_say_which_reason(rs: ReasoningStack) -> None:
    listed = {m.id: m.model_extra or {} for m in (await rs.client.models.list()).data}
    assert listed[THINKER]["reasoning"] == "think"
    assert listed["o4-mini"]["reasoning"] == "think"
    assert "reasoning" not in listed["fake-chat"]
    one = await rs.client.models.retrieve("o4-mini")
    assert (one.model_extra or {})["reasoning"] == "think"


async def test_a_stored_completion_keeps_its_reasoning(tmp_path: Path) -> None:
    async with state_stack(tmp_path) as stack:
        stack.engine.reasoning = "think"
        messages = history(reasoning_content="Earlier thought.")
        made = await stack.client.chat.completions.create(model="fake-chat", messages=messages,
                                                          store=True)
        raw = await stack.raw("GET", f"/v1/chat/completions/{made.id}")
        validate(raw.json(), "CreateChatCompletionResponse")
        assert raw.json()["choices"][0]["message"]["reasoning_content"] == \
            stack.engine.thinking
        listed = await stack.raw("GET", f"/v1/chat/completions/{made.id}/messages")
        stored = listed.json()["data"]
        assert stored[1]["reasoning_content"] == "Earlier thought."
        # (The list's schema wants role "assistant" for every message: see test_state_api.)
        validate({**listed.json(), "data": [{**m, "role": "assistant"} for m in stored]},
                 "ChatCompletionMessageList")
        stream = await stack.client.chat.completions.create(
            model="fake-chat", messages=USER, store=True, stream=True)
        ids = {chunk.id async for chunk in stream}
        [streamed_id] = ids
        kept = await stack.raw("GET", f"/v1/chat/completions/{streamed_id}")
        assert kept.json()["choices"][0]["message"]["reasoning"] == stack.engine.thinking


def _config(tmp_path: Path, line: str) -> Path:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = tmp_path / "models.toml"
    path.write_text(f'[server]\n{line}\n\n[[models]]\nid = "a"\npath = "m.gguf"\n',
                    encoding="utf-8")
    return path


def test_the_server_key_picks_the_field(tmp_path: Path) -> None:
    assert load_config(_config(tmp_path, ""), env={}).server.reasoning_field == "both"
    for field in ("reasoning_content", "reasoning", "both"):
        chosen = load_config(_config(tmp_path, f'reasoning_field = "{field}"'), env={})
        assert chosen.server.reasoning_field == field
    with pytest.raises(ConfigError, match=r"server\.reasoning_field"):
        load_config(_config(tmp_path, 'reasoning_field = "thoughts"'), env={})


# --- legacy completions -----------------------------------------------------------------------


async def test_legacy_completions_keep_every_word_as_text(rs: ReasoningStack) -> None:
    """A raw prompt has no reasoning (the real engine reads its output as plain text); should
    an engine split some off anyway, as this fake does, it is the completion's text."""
    completion = await rs.client.completions.create(model=THINKER, prompt="Once")
    assert completion.choices[0].text == rs.thought + rs.thinker.reply
    assert completion.usage is not None
    assert completion.usage.completion_tokens == rs.thought_tokens + len(
        rs.thinker.reply.split())
    stream = await rs.client.completions.create(model=THINKER, prompt="Once", stream=True)
    assert "".join([chunk.choices[0].text async for chunk in stream if chunk.choices]) == \
        rs.thought + rs.thinker.reply
