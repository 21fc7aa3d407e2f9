"""Fakes: real implementations of the engine and ledger Protocols with canned behaviour.

They let the fast tier drive the whole HTTP stack through the official SDK without models.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace

from appliance.engines.base import (
    CancelToken,
    ChatEvent,
    ChatParams,
    Embeddings,
    Finish,
    FinishReason,
    ImageDefaults,
    ImageParams,
    ImageResult,
    ModelInfo,
    ReasoningDelta,
    RGBImage,
    Started,
    TextDelta,
    TokenChoice,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from appliance.errors import ContextLengthExceeded, EngineFailure, InvalidRequest, Overloaded
from appliance.ledger import KeyRecord, RequestRecord


@dataclass
class FakeChatEngine:
    """Answers with ``reply`` split into words; one word is one token.

    The prompt costs one token per word of all messages, plus one per message (what
    ``count_tokens`` says too); a prompt longer than ``context_length`` is refused as real
    engines refuse it.
    """

    model_id: str = "fake-chat"
    reply: str = "Hello there, this is a canned reply."
    context_length: int = 64
    fail_after: int | None = None
    overloaded: bool = False  # refuse as a full queue does
    tool_arguments: str = '{"city": "Paris"}'
    # A reasoning model: each choice first thinks ``thinking`` (one word a token, in
    # ReasoningDelta events), unless reasoning_effort is "none" or "minimal".
    reasoning: str | None = None
    thinking: str = "The user wants an answer. I should be brief."
    calls: list[ChatParams] = field(default_factory=list)
    counted: list[ChatParams] = field(default_factory=list)  # what count_tokens was asked

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(id=self.model_id, kind="chat", context_length=self.context_length,
                         owned_by="appliance", created=1_700_000_000, reasoning=self.reasoning)

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _thought(self, params: ChatParams) -> list[str]:
        """The words this request's choices think before answering (none: no reasoning)."""
        if self.reasoning is None or params.reasoning_effort in ("none", "minimal"):
            return []
        words = [w + " " for w in self.thinking.split()]
        words[-1] = words[-1].rstrip()
        return words

    @staticmethod
    def _prompt_tokens(params: ChatParams) -> int:
        if params.prompt is not None:
            return len(params.prompt.split() if isinstance(params.prompt, str)
                       else params.prompt)
        return sum(len(m.content.split()) for m in params.messages) + len(params.messages)

    async def count_tokens(self, params: ChatParams, cancel: CancelToken,
                           limit: int | None = None) -> int:
        self.counted.append(params)
        return self._prompt_tokens(params)

    async def chat(
        self, params: ChatParams, cancel: CancelToken
    ) -> AsyncGenerator[ChatEvent, None]:
        self.calls.append(params)
        if self.overloaded:
            raise Overloaded("The model `fake-chat` has 1 requests waiting.", retry_after=2.5)
        prompt = self._prompt_tokens(params)
        if prompt > self.context_length:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self.context_length} tokens.",
                param="messages")
        yield Started(prompt)
        thought = self._thought(params)
        for index in range(params.n):
            for word in thought:
                await asyncio.sleep(0)
                yield ReasoningDelta(word, index)
            if params.tools is not None and params.tools.forced:
                for event in self._tool_call(params, prompt, index):
                    yield self._with_reasoning(event, len(thought))
                continue
            async for event in self._choice(params, prompt, index, cancel):
                yield self._with_reasoning(event, len(thought))

    @staticmethod
    def _with_reasoning(event: ChatEvent, reasoning_tokens: int) -> ChatEvent:
        """A Finish counts the choice's reasoning tokens among its completion tokens."""
        if not isinstance(event, Finish) or not reasoning_tokens:
            return event
        usage = event.usage
        return replace(event, usage=Usage(usage.prompt_tokens,
                                          usage.completion_tokens + reasoning_tokens,
                                          usage.cached_tokens, reasoning_tokens))

    def _tool_call(self, params: ChatParams, prompt: int, index: int) -> list[ChatEvent]:
        """A forced choice calls the named function (or the first) with ``tool_arguments``,
        streamed in two fragments, as the real engine's parser emits it."""
        assert params.tools is not None
        tool = params.tools.named() or params.tools.tools[0]
        half = len(self.tool_arguments) // 2
        return [ToolCallDelta(0, "", index, f"call_fake{index}", tool.name),
                ToolCallDelta(0, self.tool_arguments[:half], index),
                ToolCallDelta(0, self.tool_arguments[half:], index),
                Finish("tool_calls", Usage(prompt, 5), index)]

    @staticmethod
    def _logprobs(word: str, params: ChatParams) -> tuple[TokenLogprob, ...]:
        alternatives = params.sampling.logprobs
        if alternatives is None:
            return ()
        chosen = TokenChoice(word, -0.5, tuple(word.encode()))
        top = (chosen, *(TokenChoice(f"alt{i}", -2.0 - i, tuple(f"alt{i}".encode()))
                         for i in range(alternatives - 1)))
        return (TokenLogprob(chosen, top[:alternatives]),)

    async def _choice(self, params: ChatParams, prompt: int, index: int,
                      cancel: CancelToken) -> AsyncGenerator[ChatEvent, None]:
        words = [w + " " for w in self.reply.split()]
        words[-1] = words[-1].rstrip()
        reason: FinishReason = "stop"
        produced = 0
        text = ""
        for word in words:
            if cancel.cancelled:
                return
            if params.max_tokens is not None and produced >= params.max_tokens:
                reason = "length"
                break
            if self.fail_after is not None and produced >= self.fail_after:
                raise EngineFailure("the fake engine failed on purpose")
            candidate = text + word
            cut = min((candidate.find(s) for s in params.stop if s in candidate), default=-1)
            if cut >= 0:
                if cut > len(text):
                    yield TextDelta(candidate[len(text):cut], index)
                produced += 1
                break
            produced += 1
            text = candidate
            await asyncio.sleep(0)
            yield TextDelta(word, index, self._logprobs(word, params))
        yield Finish(reason, Usage(prompt, produced), index)


IMAGE_TOKENS = 16  # what one picture costs the fake vision model (the fixture projector's)


@dataclass
class FakeVisionEngine(FakeChatEngine):
    """A chat model with a projector: each picture of the prompt costs ``IMAGE_TOKENS``
    prompt tokens, and when the last user turn holds pictures the reply describes them, one
    word each: ``WIDTHxHEIGHT:DETAIL@OFFSET`` (so tests see what reached the engine)."""

    model_id: str = "fake-vision"
    context_length: int = 4096

    @property
    def info(self) -> ModelInfo:
        return replace(super().info, vision=True)

    @staticmethod
    def _prompt_tokens(params: ChatParams) -> int:
        pictures = sum(len(m.images) for m in params.messages)
        return FakeChatEngine._prompt_tokens(params) + IMAGE_TOKENS * pictures

    async def chat(
        self, params: ChatParams, cancel: CancelToken
    ) -> AsyncGenerator[ChatEvent, None]:
        last = [m for m in params.messages if m.role == "user"][-1:]
        seen = [f"{image.width}x{image.height}:{image.detail}@{offset}"
                for message in last for offset, image in message.images]
        pictures = sum(len(m.images) for m in params.messages)
        engine = replace(self, reply=" ".join(seen)) if seen else self  # shares self.calls
        async for event in FakeChatEngine.chat(engine, params, cancel):
            if isinstance(event, Finish):
                event = replace(event, usage=replace(event.usage,
                                                     image_tokens=IMAGE_TOKENS * pictures))
            yield event


@dataclass
class FakeEmbeddingEngine:
    """Vectors made from the inputs' characters: deterministic, unit length, 8 dimensions."""

    model_id: str = "fake-embed"
    context_length: int = 16

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(id=self.model_id, kind="embedding", context_length=self.context_length,
                         owned_by="appliance", created=1_700_000_000)

    @property
    def dimensions(self) -> int:
        return 8

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def embed(self, inputs: list[str] | list[list[int]],
                    owner: str | None = None) -> Embeddings:
        vectors = []
        tokens = 0
        for item in inputs:
            codes = [ord(c) for c in item] if isinstance(item, str) else list(item)
            if len(codes) > self.context_length:
                raise InvalidRequest("input too long", param="input",
                                     code="context_length_exceeded")
            tokens += len(codes)
            raw = [float(sum(codes[i::8]) + 1) for i in range(8)]
            norm = math.sqrt(sum(v * v for v in raw))
            vectors.append(tuple(v / norm for v in raw))
        return Embeddings(tuple(vectors), tokens)


@dataclass
class FakeKeys:
    secrets: dict[str, KeyRecord] = field(default_factory=dict)

    def add(self, secret: str, name: str = "tester") -> KeyRecord:
        record = KeyRecord(id=f"key_{len(self.secrets):012d}", name=name, prefix=secret[:11],
                           created_at=time.time(), revoked_at=None)
        self.secrets[secret] = record
        return record

    def lookup(self, secret: str) -> KeyRecord | None:
        return self.secrets.get(secret)


@dataclass
class ListLedger:
    rows: list[RequestRecord] = field(default_factory=list)

    def record(self, row: RequestRecord, on_commit: Callable[[], None] | None = None) -> None:
        # Upserts by request id, as the real writer does: a "started" row, then the final one.
        for index, existing in enumerate(self.rows):
            if existing.request_id == row.request_id:
                self.rows[index] = row
                break
        else:
            self.rows.append(row)
        if on_commit is not None:
            on_commit()


@dataclass
class FakeImageEngine:
    """Flat-colour images: each image's colour comes from its seed (``seed + index``), so
    repeatable requests and per-image seeds can be checked. Every denoising step yields to the
    event loop once and checks the cancel token, as the real engine does between steps.

    ``hold`` (when set) keeps every request at its first step until the test releases it, so a
    test can act while generation is under way; ``started`` is set when one reaches it."""

    model_id: str = "fake-image"
    sizes: tuple[tuple[int, int], ...] = ((64, 64), (128, 64))
    defaults: ImageDefaults = field(default_factory=lambda: ImageDefaults(steps=4,
                                                                        guidance=7.5))
    calls: list[ImageParams] = field(default_factory=list)
    stopped: list[ImageParams] = field(default_factory=list)
    hold: asyncio.Event | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(id=self.model_id, kind="image", context_length=0,
                         owned_by="appliance", created=1_700_000_000)

    def warm_up(self) -> None:
        pass

    def close(self) -> None:
        pass

    @staticmethod
    def colour(seed: int) -> tuple[int, int, int]:
        return (seed * 40 % 256, seed * 80 % 256, seed * 120 % 256)

    async def generate(self, params: ImageParams, cancel: CancelToken) -> ImageResult:
        if (params.width, params.height) not in self.sizes:
            raise InvalidRequest(f"size {params.width}x{params.height} not made", param="size",
                                 code="invalid_value")
        self.calls.append(params)
        try:
            for step in range(params.steps or self.defaults.steps):
                if step == 0:
                    self.started.set()
                    if self.hold is not None:
                        await self.hold.wait()
                if cancel.cancelled:
                    raise EngineFailure("cancelled")
                await asyncio.sleep(0)
        except BaseException:
            self.stopped.append(params)
            raise
        seed = params.seed if params.seed is not None else 0
        images = tuple(RGBImage(params.width, params.height,
                                bytes(self.colour(seed + i)) * (params.width * params.height))
                       for i in range(params.n))
        return ImageResult(images, prompt_tokens=len(params.prompt.split()) + 2)
