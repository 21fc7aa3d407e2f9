"""docs/compatibility.md on the real models: every row's example goes to the real server.

The fast test (tests/fast/test_compatibility_doc.py) sends the same rows to fake engines,
which cannot show that a parameter reaches llama.cpp, whisper or diffusers, or that the
binding under it still takes the call. Here every ``rejected`` row is a 400 naming its
parameter; every ``accepted`` row a 200 in OpenAI's shape; and every ``honoured`` row a 200
whose result shows the parameter's documented effect, by the check CHECKS names for it.
Replies are greedy and a few tokens long, so the whole module stays cheap on two cores.
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image

from devtools.server_harness import GEMMA, SMOLLM2
from tests.compatibility_rows import REASONING_MODEL, Row, form_fields, rows
from tests.openapi_contract import validate
from tests.real.conftest import RealServer
from tests.real.speech import speak

pytestmark = pytest.mark.real
# A request that hangs fails its row after this long instead of holding up the suite.
TIMEOUT_S = 60.0
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
IMAGES = "/v1/images/generations"
SPEECH = "/v1/audio/speech"
RESPONSES = "/v1/responses"
# Text rows run on both chat models: they differ in tokenizer, template and vocabulary size.
CHAT_MODELS = {"smollm2-135m-instruct": SMOLLM2, "gemma-3-270m": GEMMA}
ALIASES = {"gpt-4o-mini": "smollm2-135m-instruct", "whisper-1": "whisper-tiny.en",
           "dall-e-2": "tiny-random-sd"}
# Neither model ends its greedy reply to these prompts within CAP tokens, so every greedy
# reply is exactly CAP tokens long; and both repeat themselves, which the penalties change.
CAP = 8
SAY_CAT = [{"role": "user", "content": "Say the word cat ten times."}]
ONCE = "Once upon a time"
STORY = [{"role": "user", "content": "Tell me a story about a village by the sea."}]
# What is said to the whisper models, and words a fair hearing in English must contain
# (sampled decodes, temperature above 0, may miss one or two).
ENGLISH = "The quick brown fox jumps over the lazy dog."
GERMAN = "Ich habe einen kleinen Hund und eine schwarze Katze."
HEARD = {ENGLISH: {"quick", "brown", "fox", "lazy", "dog"},
         GERMAN: {"small", "little", "black", "cat", "dog"}}
# whisper-base is multilingual and hears German; the English-only whisper-1 hears English.
SPOKEN = {"whisper-base": GERMAN}
TOOL = {"type": "function", "function": {"name": "f"}}
IMAGE_STEPS = 2  # tiny-random-sd's `steps` in tests/real/session_server.py
RESPONSE_CAP = 16  # OpenAI's least max_output_tokens
RESPONSE_TOOL = {"type": "function", "name": "f", "parameters": {"type": "object",
                                                                "properties": {}}}


def base(route: str, model: str) -> dict[str, Any]:
    """The request each row's example is added to."""
    bases: dict[str, dict[str, Any]] = {
        CHAT: {"model": model, "messages": SAY_CAT, "max_tokens": CAP, "temperature": 0},
        COMPLETIONS: {"model": model, "prompt": ONCE, "max_tokens": CAP, "temperature": 0},
        EMBEDDINGS: {"model": "smollm2-135m-embed", "input": "hi"},
        TRANSCRIPTIONS: {"model": "whisper-1"},
        TRANSLATIONS: {"model": "whisper-1"},  # English to English: a cheap model
        # Raw 24 kHz samples: the checks measure lengths without a decoder.
        SPEECH: {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "pcm"},
        IMAGES: {"model": "tiny-random-sd", "prompt": "a red barn",
                 "response_format": "b64_json", "seed": 1},
        # One model: the Responses rows reach the same engine call as chat's, run on both.
        RESPONSES: {"model": "smollm2-135m-instruct", "input": SAY_CAT[0]["content"],
                    "max_output_tokens": RESPONSE_CAP, "temperature": 0},
    }
    return bases[route]


# Rows whose effect needs another prompt or more room than the base request gives.
REQUESTS: dict[tuple[str, str], dict[str, Any]] = {
    # German to English needs the multilingual model (several times slower on a CPU).
    (TRANSLATIONS, "response_format"): {"model": "whisper-base"},
    (CHAT, "response_format"): {
        "max_tokens": 32,
        "messages": [{"role": "user", "content": 'Repeat this JSON exactly: {"city": "Paris"}'}]},
    # Sent to the think model (compatibility_rows.REASONING_MODEL): room for its thinking
    # budget and an answer after it.
    (CHAT, "reasoning_effort"): {"max_tokens": 64},
    (CHAT, "chat_template_kwargs"): {"max_tokens": 64},
}
# The instruction-tuned model ends a short answer; Gemma 3 270M is a base model and rambles.
INSTRUCT = {"smollm2-135m-instruct"}


@dataclass
class Box:
    """The real server as the checks see it: raw HTTP, as the document's examples are."""

    http: httpx2.Client
    speech: dict[str, Path]  # by sentence
    plain: dict[tuple[str, str], httpx2.Response] = field(default_factory=dict)
    vocabularies: dict[str, Any] = field(default_factory=dict)

    def vocabulary(self, model: str) -> Any:
        """The model's tokenizer, to read token ids as the server's model does."""
        if model not in self.vocabularies:
            import llama_cpp

            self.vocabularies[model] = llama_cpp.Llama(str(CHAT_MODELS[model]),
                                                       vocab_only=True, verbose=False)
        return self.vocabularies[model]

    def post(self, route: str, body: dict[str, Any]) -> httpx2.Response:
        if route not in (TRANSCRIPTIONS, TRANSLATIONS):
            return self.http.post(route, json=body)
        fields: dict[str, str | list[str]] = {}
        for name, value in body.items():
            fields.update(form_fields(name, value))
        audio = self.speech[SPOKEN.get(str(body["model"]), ENGLISH)]
        return self.http.post(route, data=fields, files={"file": (audio.name,
                                                                  audio.read_bytes())})

    def ok(self, route: str, body: dict[str, Any]) -> httpx2.Response:
        response = self.post(route, body)
        assert response.status_code == 200, f"{route} {body}: {response.text}"
        return response


@dataclass
class Call:
    """One row's request as sent, its response, and ways to send variations of it."""

    box: Box
    row: Row
    model: str
    body: dict[str, Any]
    response: httpx2.Response

    @property
    def reply(self) -> Any:
        return self.response.json()

    def again(self, **changes: Any) -> httpx2.Response:
        """The same request with ``changes`` (a None value leaves that field out)."""
        body = {k: v for k, v in {**self.body, **changes}.items() if v is not None}
        return self.box.ok(self.row.route, body)

    def plain(self) -> Any:
        """The base request's reply, without the row's parameter (once per route and model)."""
        key = (self.row.route, self.model)
        if key not in self.box.plain:
            self.box.plain[key] = self.box.ok(self.row.route, base(*key))
        return self.box.plain[key].json()


Check = Callable[[Call], None]
CHECKS: dict[tuple[str, str], Check] = {}
# Rejected alone, honoured beside another field (the document's notes say which).
HONOURED_WITH: dict[tuple[str, str], tuple[dict[str, Any], Check]] = {}


def check(route: str, *params: str) -> Callable[[Check], Check]:
    def register(verify: Check) -> Check:
        for param in params:
            CHECKS[(route, param)] = verify
        return verify
    return register


def honoured_with(route: str, param: str, companions: dict[str, Any]) -> Callable[[Check], Check]:
    def register(verify: Check) -> Check:
        HONOURED_WITH[(route, param)] = (companions, verify)
        return verify
    return register


# --- text generation (chat and legacy completions) ------------------------------------------

def text(choice: dict[str, Any]) -> str:
    if "message" in choice:
        return str(choice["message"]["content"] or "")
    return str(choice["text"])


def first_text(reply: dict[str, Any]) -> str:
    return text(reply["choices"][0])


def events(response: httpx2.Response) -> list[str]:
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    return [line.removeprefix("data: ") for line in response.text.splitlines()
            if line.startswith("data: ")]


def chunks(response: httpx2.Response) -> list[dict[str, Any]]:
    """A stream's JSON chunks, after checking that it ends with [DONE]."""
    data = events(response)
    assert data and data[-1] == "[DONE]", response.text
    return [json.loads(item) for item in data[:-1]]


def first_token(call: Call) -> str:
    """The first token of the greedy reply, as its text."""
    if call.row.route == CHAT:
        reply = call.again(logit_bias=None, logprobs=True).json()
        return str(reply["choices"][0]["logprobs"]["content"][0]["token"])
    reply = call.again(logit_bias=None, logprobs=0).json()
    return str(reply["choices"][0]["logprobs"]["tokens"][0])


@check(CHAT, "model")
def _served_model(call: Call) -> None:
    asked = call.body["model"]
    assert call.reply["model"] == ALIASES.get(asked, asked)


@check(CHAT, "messages")
def _answers(call: Call) -> None:
    message = call.reply["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]


@check(COMPLETIONS, "prompt")
def _continues(call: Call) -> None:
    assert first_text(call.reply) and call.reply["usage"]["prompt_tokens"] >= 1
    both = call.again(prompt=[call.row.example, "Twice"]).json()
    assert [c["index"] for c in both["choices"]] == [0, 1]  # one choice per prompt


@check(CHAT, "max_tokens", "max_completion_tokens")
@check(COMPLETIONS, "max_tokens")
def _caps_the_reply(call: Call) -> None:
    assert call.reply["usage"]["completion_tokens"] == call.row.example
    assert [c["finish_reason"] for c in call.reply["choices"]] == ["length"]


@check(CHAT, "temperature")
@check(COMPLETIONS, "temperature")
def _temperature(call: Call) -> None:
    greedy = call.again(temperature=0, n=2).json()
    assert [text(c) for c in greedy["choices"]] == [first_text(call.plain())] * 2
    hot = call.again(temperature=2.0, n=2, seed=3).json()
    assert len({text(c) for c in hot["choices"]}) == 2


# A setting that leaves only the likeliest token makes even a hot draw greedy.
NARROWEST = {"top_p": 0.001, "top_k": 1, "min_p": 1.0}


@check(CHAT, *NARROWEST)
@check(COMPLETIONS, "top_p")
def _narrows_the_draw(call: Call) -> None:
    narrow = call.again(temperature=2.0, seed=3, **{call.row.param: NARROWEST[call.row.param]})
    assert first_text(narrow.json()) == first_text(call.plain())


@check(CHAT, "stop")
@check(COMPLETIONS, "stop")
def _stops_before(call: Call) -> None:
    example = call.row.example
    stops = [example] if isinstance(example, str) else list(example)
    assert not any(stop in first_text(call.reply) for stop in stops)
    plain = first_text(call.plain())
    middle = plain[len(plain) // 2:][:2]
    cut = call.again(stop=middle if isinstance(example, str) else [middle]).json()
    assert first_text(cut) == plain[: plain.index(middle)]
    assert cut["choices"][0]["finish_reason"] == "stop"


@check(CHAT, "seed")
@check(COMPLETIONS, "seed")
def _seed_repeats(call: Call) -> None:
    drawn = [first_text(call.again(temperature=2.0).json()) for _ in range(2)]
    assert drawn[0] == drawn[1]


@check(CHAT, "n")
@check(COMPLETIONS, "n")
def _n_choices(call: Call) -> None:
    assert [c["index"] for c in call.reply["choices"]] == list(range(call.row.example))


@check(CHAT, "presence_penalty", "frequency_penalty", "repeat_penalty")
@check(COMPLETIONS, "presence_penalty", "frequency_penalty")
def _penalised(call: Call) -> None:
    # Penalties see only generated tokens: give the repetition room, then penalise it hard.
    # Free prose repeats common words by small margins, which a presence penalty (flat, not
    # growing with the count) tips; a list ("1\n2\n3...") repeats only tokens far ahead of
    # any other, and whether the cat prompt gets one depends on the CPU's float kernels.
    prose = {"messages": STORY} if call.row.route == CHAT else {}
    longer = {"max_tokens": 4 * CAP, call.row.param: None, **prose}
    penalised = call.again(**{**longer, call.row.param: 2.0}).json()
    assert first_text(penalised) != first_text(call.again(**longer).json())


@check(CHAT, "logit_bias")
@check(COMPLETIONS, "logit_bias")
def _bans_a_token(call: Call) -> None:
    # The example's own id is a special token, never drawn anyway: ban the one greedy draws.
    token = first_token(call)
    ids = call.box.vocabulary(call.model).tokenize(token.encode(), add_bos=False, special=False)
    assert len(ids) == 1, f"{token!r} is not one token here: {ids}"
    banned = call.again(logit_bias={str(ids[0]): -100}, logprobs=True if call.row.route == CHAT
                        else 0).json()
    after = banned["choices"][0]["logprobs"]
    now = after["content"][0]["token"] if call.row.route == CHAT else after["tokens"][0]
    assert now != token


@check(CHAT, "logprobs")
def _chat_logprobs(call: Call) -> None:
    choice = call.reply["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == call.reply["usage"]["completion_tokens"]
    assert "".join(t["token"] for t in content) == text(choice)
    assert all(t["logprob"] <= 0 and t["top_logprobs"] == [] for t in content)


@check(CHAT, "top_logprobs")
def _chat_top_logprobs(call: Call) -> None:
    content = call.reply["choices"][0]["logprobs"]["content"]
    for token in content:
        top = token["top_logprobs"]
        assert len(top) == call.row.example
        assert top[0]["token"] == token["token"]  # greedy: the chosen token is the likeliest
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)


@check(COMPLETIONS, "logprobs")
def _legacy_logprobs(call: Call) -> None:
    choice = call.reply["choices"][0]
    logprobs = choice["logprobs"]
    count = call.reply["usage"]["completion_tokens"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == count
    assert len(logprobs["top_logprobs"]) == len(logprobs["text_offset"]) == count
    assert "".join(logprobs["tokens"]) == choice["text"]
    # Distinct tokens may read the same, and a dict keeps one of them.
    assert all(1 <= len(top) <= call.row.example for top in logprobs["top_logprobs"])
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])


@check(CHAT, "response_format")
def _json_object(call: Call) -> None:
    choice = call.reply["choices"][0]
    if choice["finish_reason"] == "length":  # constrained all the way, cut by max_tokens
        assert call.model not in INSTRUCT and text(choice).startswith("{"), choice
    else:
        assert isinstance(json.loads(text(choice)), dict), choice
    # A bounded schema ends even on the base model.
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
              "required": ["city"], "additionalProperties": False}
    strict = call.again(response_format={"type": "json_schema", "json_schema": {
        "name": "city", "strict": True, "schema": schema}}).json()
    assert set(json.loads(first_text(strict))) == {"city"}


def reasoning_of(reply: dict[str, Any]) -> tuple[str | None, int]:
    """The first choice's reasoning (None: the field is absent) and the reasoning tokens."""
    message = reply["choices"][0]["message"]
    assert message.get("reasoning") == message.get("reasoning_content"), message
    return message.get("reasoning_content"), \
        reply["usage"]["completion_tokens_details"]["reasoning_tokens"]


@check(CHAT, "reasoning_effort")
def _thinks_within_its_effort(call: Call) -> None:
    thought, tokens = reasoning_of(call.reply)
    assert thought and tokens > 0, call.reply
    assert thought not in (call.reply["choices"][0]["message"]["content"] or "")
    off = reasoning_of(call.again(reasoning_effort="none").json())
    assert off == (None, 0)


@check(CHAT, "chat_template_kwargs")
def _template_turns_thinking_off(call: Call) -> None:
    assert reasoning_of(call.reply) == (None, 0)
    thought, tokens = reasoning_of(call.again(chat_template_kwargs=None).json())
    assert thought and tokens > 0


@check(CHAT, "stream")
@check(COMPLETIONS, "stream")
def _streams(call: Call) -> None:
    parts = chunks(call.response)
    assert "".join(text_delta(c) for c in parts) == first_text(call.plain())
    assert [c["choices"][0]["finish_reason"] for c in parts if c["choices"] and
            c["choices"][0]["finish_reason"]] == ["length"]
    if call.row.route == CHAT:
        assert parts[0]["choices"][0]["delta"]["role"] == "assistant"
        for part in parts:
            validate(part, "CreateChatCompletionStreamResponse")
    else:
        # The spec's one schema for the object and its chunks has no null finish_reason,
        # which OpenAI streams until the end: the last chunk is the one that fits it.
        validate(parts[-1], "CreateCompletionResponse")


def text_delta(chunk: dict[str, Any]) -> str:
    if not chunk["choices"]:
        return ""
    choice = chunk["choices"][0]
    return str(choice["delta"].get("content") or "") if "delta" in choice else str(choice["text"])


@check(CHAT, "stream_options")
def _usage_chunk(call: Call) -> None:
    parts = chunks(call.response)
    assert parts[-1]["choices"] == [] and parts[-1]["usage"]["completion_tokens"] == CAP
    assert all(part.get("usage") is None for part in parts[:-1])


@check(COMPLETIONS, "echo")
def _echoes(call: Call) -> None:
    echoed = first_text(call.reply)
    assert echoed == call.body["prompt"] + first_text(call.plain())


@check(CHAT, "parallel_tool_calls")
def _one_call_at_most(call: Call) -> None:
    called = call.again(tools=[TOOL], tool_choice="required", max_tokens=48).json()
    assert len(called["choices"][0]["message"]["tool_calls"]) == 1


@check(CHAT, "tools")
def _calls_the_tool(call: Call) -> None:
    named = call.again(tool_choice={"type": "function", "function": {"name": "f"}},
                       max_tokens=48).json()
    calls = named["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["f"]
    assert isinstance(json.loads(calls[0]["function"]["arguments"]), dict)


@honoured_with(CHAT, "tool_choice", {"tools": [TOOL], "max_tokens": 48})
def _required_call(call: Call) -> None:
    choice = call.reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert {c["function"]["name"] for c in choice["message"]["tool_calls"]} == {"f"}


@check(CHAT, "functions")
def _calls_the_function(call: Call) -> None:
    named = call.again(function_call={"name": "f"}, max_tokens=48).json()
    choice = named["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "f"
    assert isinstance(json.loads(choice["message"]["function_call"]["arguments"]), dict)


@honoured_with(CHAT, "function_call", {"functions": [{"name": "f"}]})
def _maybe_calls(call: Call) -> None:
    message = call.reply["choices"][0]["message"]
    assert message.get("function_call") is None or message["function_call"]["name"] == "f"


# --- embeddings -----------------------------------------------------------------------------

def vectors(reply: dict[str, Any]) -> list[list[float]]:
    return [item["embedding"] for item in reply["data"]]


@check(EMBEDDINGS, "input")
def _one_vector_each(call: Call) -> None:
    assert [item["index"] for item in call.reply["data"]] == [0, 1]
    first, second = vectors(call.reply)
    assert len(first) == len(second) > 4 and first != second
    assert call.reply["usage"]["prompt_tokens"] >= 2


def floats(encoded: str) -> list[float]:
    """base64 of little-endian float32, as OpenAI sends it."""
    packed = base64.b64decode(encoded)
    return list(struct.unpack(f"<{len(packed) // 4}f", packed))


@check(EMBEDDINGS, "encoding_format")
def _base64_floats(call: Call) -> None:
    decoded = floats(call.reply["data"][0]["embedding"])
    plain = vectors(call.again(encoding_format="float").json())[0]
    assert decoded == pytest.approx(plain, abs=1e-6)


@check(EMBEDDINGS, "dimensions")
def _truncated(call: Call) -> None:
    short = vectors(call.reply)[0]
    full = vectors(call.again(dimensions=None).json())[0][: call.row.example]
    norm = math.sqrt(sum(x * x for x in full))
    assert short == pytest.approx([x / norm for x in full], abs=1e-5)


# --- audio ----------------------------------------------------------------------------------

def words(transcript: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in transcript.split()}


def heard(call: Call) -> None:
    """The sentence said to the model comes back in English."""
    expected = HEARD[SPOKEN.get(call.body["model"], ENGLISH)]
    assert len(words(call.reply["text"]) & expected) >= 3, call.reply


check(TRANSCRIPTIONS, "language", "prompt", "temperature")(heard)
check(TRANSLATIONS, "model", "prompt", "temperature")(heard)


@check(TRANSCRIPTIONS, "model")
def _served_by(call: Call) -> None:
    assert {"fox", "dog"} <= words(call.reply["text"]), call.reply


@check(TRANSCRIPTIONS, "response_format")
def _every_format(call: Call) -> None:
    assert call.response.text.startswith("1\n00:00:00,000 --> ")
    assert "fox" in call.response.text.lower()
    # json is every other row's; verbose_json the timestamp_granularities row's.
    shapes: dict[str, Callable[[str], bool]] = {
        "text": lambda body: {"fox", "dog"} <= words(body),
        "vtt": lambda body: body.startswith("WEBVTT\n\n00:00") and "fox" in body.lower(),
    }
    for response_format, holds in shapes.items():
        body = call.again(response_format=response_format).text
        assert holds(body), f"{response_format}: {body}"


@check(TRANSLATIONS, "response_format")
def _verbose_english(call: Call) -> None:
    assert call.reply["language"] == "english" and call.reply["segments"]
    # The format changes the shape, not the translation: the same text as json's. How well
    # whisper-base hears espeak's German varies with the CPU's float kernels (one machine
    # hears "einen kleinen Hund" as "a small fist"), so one word of it is asked here; the
    # translation rows (model, prompt, temperature) ask for three.
    plain = call.again(response_format="json").json()
    assert plain["text"].strip() == call.reply["text"].strip(), (plain, call.reply)
    assert words(call.reply["text"]) & HEARD[GERMAN], call.reply


@check(TRANSCRIPTIONS, "stream")
def _transcript_events(call: Call) -> None:
    sent = [json.loads(item) for item in events(call.response)]
    assert sent[-1]["type"] == "transcript.text.done"
    deltas = [e["delta"] for e in sent if e["type"] == "transcript.text.delta"]
    assert deltas and "".join(deltas) == sent[-1]["text"] and "fox" in sent[-1]["text"].lower()


@honoured_with(TRANSCRIPTIONS, "timestamp_granularities", {"response_format": "verbose_json"})
def _word_times(call: Call) -> None:
    timed = call.reply["words"]
    assert any(w["word"].lower().strip(".,") == "fox" for w in timed)
    assert all(w["end"] >= w["start"] for w in timed)
    both = call.again(timestamp_granularities=["word", "segment"]).json()
    assert both["words"] and both["segments"]


# --- images ---------------------------------------------------------------------------------

def pictures(reply: dict[str, Any]) -> list[Image.Image]:
    out: list[Image.Image] = []
    for item in reply["data"]:
        image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        image.load()
        out.append(image)
    return out


def pixels(reply: dict[str, Any]) -> list[bytes]:
    return [image.convert("RGB").tobytes() for image in pictures(reply)]


def one_png(call: Call) -> None:
    [image] = pictures(call.reply)
    assert (image.format, image.size) == ("PNG", (64, 64))


check(IMAGES, "prompt", "model")(one_png)


@check(IMAGES, "n")
def _n_images(call: Call) -> None:
    made = pixels(call.reply)
    assert len(made) == call.row.example and len(set(made)) == len(made)  # seed + i each


@check(IMAGES, "size")
def _sized(call: Call) -> None:
    assert [i.size for i in pictures(call.reply)] == [(128, 64)]
    assert [i.size for i in pictures(call.again(size="auto").json())] == [(64, 64)]  # the first


@check(IMAGES, "quality")
def _quality_steps(call: Call) -> None:
    assert call.row.example == "hd"  # twice the model's steps
    assert pixels(call.reply) == pixels(call.again(quality=None, steps=2 * IMAGE_STEPS).json())


@check(IMAGES, "style")
def _style_guidance(call: Call) -> None:
    assert pixels(call.reply) != pixels(call.plain())
    assert pixels(call.again(style="vivid").json()) == pixels(call.plain())  # the model's own


@check(IMAGES, "response_format")
def _fetchable_url(call: Call) -> None:
    [item] = call.reply["data"]
    fetched = httpx2.get(item["url"], timeout=TIMEOUT_S)  # no key: the URL is the capability
    assert fetched.status_code == 200
    image = Image.open(io.BytesIO(fetched.content))
    assert (image.format, image.size) == ("PNG", (64, 64))


@check(IMAGES, "output_format")
def _webp(call: Call) -> None:
    assert call.reply["output_format"] == "webp"
    assert [i.format for i in pictures(call.reply)] == ["WEBP"]


@check(IMAGES, "output_compression")
def _compressed(call: Call) -> None:
    assert [i.format for i in pictures(call.reply)] == ["JPEG"]
    finest = call.again(output_compression=100).json()
    assert len(call.reply["data"][0]["b64_json"]) < len(finest["data"][0]["b64_json"])


@check(IMAGES, "seed")
def _same_seed_same_image(call: Call) -> None:
    assert pixels(call.again().json()) == pixels(call.reply)
    assert pixels(call.reply) != pixels(call.plain())  # the base request uses another seed


@check(IMAGES, "negative_prompt")
def _negative_prompt(call: Call) -> None:
    assert pixels(call.reply) != pixels(call.plain())


@check(IMAGES, "steps", "guidance")
def _wins_over_quality_and_style(call: Call) -> None:
    assert pixels(call.reply) != pixels(call.plain())
    loser = {"steps": {"quality": "low"}, "guidance": {"style": "natural"}}[call.row.param]
    assert pixels(call.again(**loser).json()) == pixels(call.reply)


# --- speech ---------------------------------------------------------------------------------

def seconds_of_pcm(response: httpx2.Response) -> float:
    assert response.headers["content-type"] == "audio/pcm", response.text
    return len(response.content) / 2 / 24_000


@check(SPEECH, "model")
def _speaks(call: Call) -> None:
    assert seconds_of_pcm(call.response) > 0.2
    assert seconds_of_pcm(call.again(model="piper-joe-medium")) > 0.2


@check(SPEECH, "input")
def _says_more(call: Call) -> None:
    assert seconds_of_pcm(call.response) > 1.5 * seconds_of_pcm(call.again(input="Hi."))


@check(SPEECH, "voice")
def _voices(call: Call) -> None:
    assert seconds_of_pcm(call.response) > 0.2
    assert seconds_of_pcm(call.again(voice="joe")) > 0.2  # the model's own name
    unknown = call.box.post(SPEECH, {**call.body, "voice": "nobody"})
    assert unknown.status_code == 400 and "alloy" in unknown.json()["error"]["message"]


@check(SPEECH, "response_format")
def _wav(call: Call) -> None:
    assert call.response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(call.response.content)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (24_000, 1, 2)


@check(SPEECH, "speed")
def _faster(call: Call) -> None:
    plain = seconds_of_pcm(call.again(speed=None, input="Hello there, how are you today?"))
    fast = seconds_of_pcm(call.again(input="Hello there, how are you today?"))
    assert fast < 0.7 * plain


@check(SPEECH, "stream_format")
def _speech_events(call: Call) -> None:
    data = [json.loads(line) for line in events(call.response)]
    for event in data:
        validate(event, "CreateSpeechResponseStreamEvent")
    assert data[-1]["type"] == "speech.audio.done" and len(data) >= 2
    assert sum(len(base64.b64decode(e["audio"])) for e in data[:-1]) > 0.2 * 48_000


# --- the rows -------------------------------------------------------------------------------

# --- responses -------------------------------------------------------------------------------

def output_text(reply: dict[str, Any]) -> str:
    return "".join(part["text"] for item in reply["output"] if item["type"] == "message"
                   for part in item["content"] if part["type"] == "output_text")


def response_events(response: httpx2.Response) -> list[dict[str, Any]]:
    """A Responses stream's events (no [DONE]), each of the spec's shapes, gaplessly numbered."""
    data = events(response)
    assert data and data[-1] != "[DONE]", response.text
    parsed = [json.loads(item) for item in data]
    for event in parsed:
        validate(event, "ResponseStreamEvent")
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    return parsed


def output_logprobs(reply: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for item in reply["output"] if item["type"] == "message"
            for part in item["content"] for entry in part["logprobs"]]


def settled(call: Call, response_id: str) -> dict[str, Any]:
    for _ in range(1200):  # a minute at most
        polled = call.box.http.get(f"/v1/responses/{response_id}").json()
        if polled["status"] not in ("queued", "in_progress"):
            return dict(polled)
        time.sleep(0.05)
    raise AssertionError(f"{response_id} never finished")


@check(RESPONSES, "model")
def _response_model(call: Call) -> None:
    asked = call.body["model"]
    assert call.reply["model"] == ALIASES.get(asked, asked)
    assert call.reply["status"] in ("completed", "incomplete") and output_text(call.reply)


@check(RESPONSES, "input")
def _responds_to_input(call: Call) -> None:
    assert output_text(call.reply)
    assert call.reply["usage"]["input_tokens"] < call.plain()["usage"]["input_tokens"]


@check(RESPONSES, "instructions")
def _instructed(call: Call) -> None:
    # The system message: SmolLM2's template writes a long default one when none is given.
    assert call.reply["usage"]["input_tokens"] != call.plain()["usage"]["input_tokens"]
    other = call.again(instructions="Answer in French, in one short sentence.").json()
    assert other["usage"]["input_tokens"] != call.reply["usage"]["input_tokens"]


@check(RESPONSES, "max_output_tokens")
def _response_capped(call: Call) -> None:
    story = "Write a long story about a cat and a dog."
    for cap in (call.row.example, 2 * call.row.example):
        capped = call.again(input=story, max_output_tokens=cap).json()
        assert capped["status"] == "incomplete", capped
        assert capped["incomplete_details"] == {"reason": "max_output_tokens"}
        assert capped["usage"]["output_tokens"] == cap


@check(RESPONSES, "temperature")
def _response_temperature(call: Call) -> None:
    assert output_text(call.again(temperature=0).json()) == output_text(call.plain())
    hot = {output_text(call.again(temperature=2.0).json()) for _ in range(2)}
    assert len(hot) == 2


@check(RESPONSES, "top_p")
def _response_top_p(call: Call) -> None:
    narrow = call.again(temperature=2.0, top_p=0.001).json()
    assert output_text(narrow) == output_text(call.plain())


@check(RESPONSES, "top_logprobs")
def _response_top_logprobs(call: Call) -> None:
    entries = output_logprobs(call.reply)
    assert entries and "".join(e["token"] for e in entries) == output_text(call.reply)
    for entry in entries:
        assert len(entry["top_logprobs"]) == call.row.example
        assert entry["top_logprobs"][0]["token"] == entry["token"]  # greedy: the likeliest


@check(RESPONSES, "include")
def _response_logprobs(call: Call) -> None:
    entries = output_logprobs(call.reply)
    assert len(entries) == call.reply["usage"]["output_tokens"]
    assert all(e["logprob"] <= 0 and e["top_logprobs"] == [] for e in entries)
    kept = call.box.http.get(f"/v1/responses/{call.reply['id']}",
                             params={"include": "message.output_text.logprobs"}).json()
    assert output_logprobs(kept) == entries
    assert output_logprobs(call.box.http.get(f"/v1/responses/{call.reply['id']}").json()) == []


@check(RESPONSES, "reasoning")
def _response_reasons_within_its_effort(call: Call) -> None:
    # SmolLM2 does not reason: the row is accepted there, without effect.
    assert [item["type"] for item in call.reply["output"]] == ["message"]
    assert call.reply["reasoning"] == call.row.example
    thought = call.again(model=REASONING_MODEL, max_output_tokens=64).json()
    validate(thought, "Response")
    reasoning = thought["output"][0]
    assert reasoning["type"] == "reasoning" and reasoning["summary"] == [], thought
    assert reasoning["content"][0]["text"], thought
    assert thought["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    off = call.again(model=REASONING_MODEL, max_output_tokens=64,
                     reasoning={"effort": "none"}).json()
    assert "reasoning" not in [item["type"] for item in off["output"]], off
    assert off["usage"]["output_tokens_details"]["reasoning_tokens"] == 0


@check(RESPONSES, "stream")
def _response_streams(call: Call) -> None:
    parsed = response_events(call.response)
    assert [e["type"] for e in parsed][:2] == ["response.created", "response.in_progress"]
    deltas = "".join(e["delta"] for e in parsed if e["type"] == "response.output_text.delta")
    assert deltas == output_text(call.plain())
    assert parsed[-1]["type"] in ("response.completed", "response.incomplete")
    assert output_text(parsed[-1]["response"]) == deltas


@check(RESPONSES, "store")
def _response_stored(call: Call) -> None:
    assert call.box.http.get(f"/v1/responses/{call.reply['id']}").status_code == 404
    kept = call.again(store=True).json()
    found = call.box.http.get(f"/v1/responses/{kept['id']}")
    assert found.status_code == 200 and found.json()["output"] == kept["output"]


@check(RESPONSES, "background")
def _response_in_background(call: Call) -> None:
    assert call.reply["status"] == "queued"
    done = settled(call, call.reply["id"])
    validate(done, "Response")
    assert output_text(done) == output_text(call.plain())  # greedy: the same answer


@check(RESPONSES, "tools")
def _response_calls_the_tool(call: Call) -> None:
    named = call.again(tool_choice={"type": "function", "name": "f"},
                       max_output_tokens=48).json()
    calls = [item for item in named["output"] if item["type"] == "function_call"]
    assert [c["name"] for c in calls] == ["f"] and calls[0]["call_id"]
    assert isinstance(json.loads(calls[0]["arguments"]), dict)


@honoured_with(RESPONSES, "tool_choice", {"tools": [RESPONSE_TOOL], "max_output_tokens": 48})
def _response_required_call(call: Call) -> None:
    assert {item["name"] for item in call.reply["output"]
            if item["type"] == "function_call"} == {"f"}


@check(RESPONSES, "parallel_tool_calls")
def _response_one_call_at_most(call: Call) -> None:
    called = call.again(tools=[RESPONSE_TOOL], tool_choice="required",
                        max_output_tokens=48).json()
    assert len([i for i in called["output"] if i["type"] == "function_call"]) == 1


@check(RESPONSES, "text")
def _response_json(call: Call) -> None:
    if call.reply["status"] == "incomplete":  # constrained all the way, cut by the cap
        assert output_text(call.reply).startswith("{"), call.reply
    else:
        assert isinstance(json.loads(output_text(call.reply)), dict), call.reply
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
              "required": ["city"], "additionalProperties": False}
    strict = call.again(max_output_tokens=32, text={"format": {
        "type": "json_schema", "name": "city", "strict": True, "schema": schema}}).json()
    assert set(json.loads(output_text(strict))) == {"city"}


@check(RESPONSES, "truncation")
def _response_truncated(call: Call) -> None:
    # Far past the 1,024-token context: refused unless truncation drops the oldest turns.
    turns = [{"role": "user" if i % 2 == 0 else "assistant",
              "content": " ".join(["cat"] * 60)} for i in range(40)]
    history = [*turns, {"role": "user", "content": "Say hi."}]
    refused = call.box.post(RESPONSES, {**call.body, "input": history,
                                        "truncation": "disabled"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == \
        "context_length_exceeded", refused.text
    fitted = call.box.ok(RESPONSES, {**call.body, "input": history})
    assert int(fitted.headers["x-appliance-truncated-messages"]) > 0
    assert fitted.json()["usage"]["input_tokens"] <= 1024 - RESPONSE_CAP


SCHEMAS = {CHAT: "CreateChatCompletionResponse", COMPLETIONS: "CreateCompletionResponse",
           EMBEDDINGS: "CreateEmbeddingResponse", IMAGES: "ImagesResponse",
           TRANSCRIPTIONS: "CreateTranscriptionResponseJson",
           TRANSLATIONS: "CreateTranslationResponseJson", RESPONSES: "Response"}


def conforms(route: str, body: dict[str, Any], reply: dict[str, Any]) -> None:
    """The reply has OpenAI's published shape."""
    schema = SCHEMAS[route]
    if body.get("response_format") == "verbose_json":
        schema = schema.replace("Json", "VerboseJson")
    if body.get("encoding_format") == "base64":  # the spec lists floats only: decode first
        reply = {**reply, "data": [{**item, "embedding": floats(item["embedding"])}
                                   for item in reply["data"]]}
    validate(reply, schema)


def cases() -> list[Any]:
    out: list[Any] = []
    for row in rows():
        models = list(CHAT_MODELS) if row.route in (CHAT, COMPLETIONS) else [""]
        out.extend(pytest.param(row, model, id=f"{row.id}@{model}" if model else row.id)
                   for model in models)
    return out


@pytest.fixture(scope="module")
def box(real_server: RealServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    folder = tmp_path_factory.mktemp("compatibility")
    speech = {ENGLISH: speak(ENGLISH, folder / "fox.wav"),
              GERMAN: speak(GERMAN, folder / "hund.wav", voice="de")}
    with httpx2.Client(base_url=real_server.server.base_url, timeout=TIMEOUT_S,
                       headers={"authorization": f"Bearer {real_server.key}"}) as http:
        box = Box(http, speech)
        try:
            yield box
        finally:
            for vocabulary in box.vocabularies.values():
                vocabulary.close()  # now, not in a finaliser after llama.cpp is gone


def test_every_honoured_row_has_a_check() -> None:
    honoured = {(row.route, row.param) for row in rows() if row.status == "honoured"}
    assert honoured - set(CHECKS) == set()
    assert set(CHECKS) - honoured == set()  # a check for a row that is no longer honoured
    rejected = {(row.route, row.param) for row in rows() if row.status == "rejected"}
    assert set(HONOURED_WITH) <= rejected


@pytest.mark.parametrize(("row", "model"), cases())
def test_row_holds_on_the_real_models(box: Box, row: Row, model: str) -> None:
    body = {**base(row.route, model), **REQUESTS.get((row.route, row.param), {}),
            **row.companions(), row.param: row.example}
    if row.param == "max_completion_tokens":
        del body["max_tokens"]  # one cap at a time
    response = box.post(row.route, body)
    if row.status == "rejected":
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == row.param, response.text
        if (row.route, row.param) in HONOURED_WITH:
            companions, verify = HONOURED_WITH[(row.route, row.param)]
            body = {**body, **companions}
            verify(Call(box, row, model, body, box.ok(row.route, body)))
        return
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        conforms(row.route, body, response.json())
    if row.status == "honoured":
        CHECKS[(row.route, row.param)](Call(box, row, model, body, response))
