"""What an engine is, seen from the api: capability Protocols and the plain data they exchange.

Engines take and return these dataclasses only; the api alone knows the OpenAI wire format.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Generic, Literal, Protocol, TypeVar

FinishReason = Literal["stop", "length", "tool_calls"]
Role = Literal["system", "user", "assistant", "tool"]
# How hard a reasoning model thinks (OpenAI's reasoning_effort): "none"/"minimal" turn thinking
# off where the model can, "low"/"medium"/"high" set a thinking budget (models.toml).
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]
REASONING_EFFORTS: tuple[ReasoningEffort, ...] = ("none", "minimal", "low", "medium", "high")


@dataclass(frozen=True)
class ToolCall:
    """A function call the assistant made: ``arguments`` is JSON text, as OpenAI carries it."""

    id: str
    name: str
    arguments: str


# What a picture's `detail` asks for (OpenAI's image_url.detail); see ImageInput.
ImageDetail = Literal["low", "high", "auto"]


@dataclass(frozen=True)
class ImageInput:
    """A picture in a user turn as the client sent it (PNG, JPEG, WebP or GIF bytes). The api
    checked its format and read its size from the header, within the bounds; the engine
    decodes it off the event loop, in its prompt threads."""

    data: bytes
    width: int
    height: int
    detail: ImageDetail = "auto"
    # The request field that held it (messages[0].content[1].image_url.url), what an error
    # decoding it names; not part of the picture's identity.
    param: str = field(default="messages", compare=False)


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: which call this is the result of
    name: str | None = None  # tool turns: the function's name, where known
    # Assistant turns: the reasoning the model wrote before this answer, given back by the
    # client (reasoning_content); each template keeps or drops it as the model was trained.
    reasoning: str | None = None
    # User turns: the pictures among the content, each at the character offset in
    # ``content`` where it stood between the text parts (ascending offsets).
    images: tuple[tuple[int, ImageInput], ...] = ()


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is its JSON Schema. ``strict``: refuse a
    schema the engine cannot fully enforce."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False


# "none" | "auto" | "required", or the name of the one function that must be called.
ToolChoice = str


@dataclass(frozen=True)
class ToolUse:
    """The tools offered with a request and how the model must use them."""

    tools: tuple[ToolSpec, ...]
    choice: ToolChoice = "auto"
    parallel: bool = True

    @property
    def single(self) -> bool:
        """One call only: parallel calls are off, or the choice names the function."""
        return not self.parallel or self.named() is not None

    @property
    def forced(self) -> bool:
        return self.choice not in ("none", "auto")

    def named(self) -> ToolSpec | None:
        return next((t for t in self.tools if t.name == self.choice), None) \
            if self.forced and self.choice != "required" else None


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling; temperature 0 means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off (OpenAI has no top-k; an extension)
    min_p: float = 0.0  # 0 = off (an extension)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0  # 1 = off (an extension, llama.cpp's multiplicative penalty)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    grammar: str | None = None  # GBNF the output must match (structured outputs)
    # With a trigger the grammar is lazy: it holds from the point this text appears in the
    # output (a tool call's start marker), and the text before it is free.
    grammar_trigger: str | None = None
    logprobs: int | None = None  # None: off; else report each token and this many alternatives


@dataclass(frozen=True)
class OutputFormat:
    """A constraint on the generated text (OpenAI's response_format), enforced by the engine
    while sampling. ``strict``: refuse a schema the engine cannot fully enforce."""

    kind: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None
    strict: bool = False


@dataclass(frozen=True)
class ChatParams:
    messages: tuple[ChatMessage, ...]
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1  # independent choices sampled from one prompt
    output: OutputFormat | None = None
    tools: ToolUse | None = None  # None: no tools offered
    owner: str | None = None  # who asks (an API key id): engines share their slots fairly
    # A raw prompt (legacy completions): text or token ids, used as is, no chat template;
    # ``messages`` is then empty.
    prompt: str | tuple[int, ...] | None = None
    # None: the model reasons as it was trained to (no budget). Only for models whose
    # ModelInfo.reasoning is set; the api refuses it for the others.
    reasoning_effort: ReasoningEffort | None = None
    # Extra variables for the chat template (the chat_template_kwargs extension of
    # llama-server and vLLM), e.g. Qwen3's enable_thinking; bounded and checked by the api.
    template_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens, those the model spent reasoning
    image_tokens: int = 0  # of prompt_tokens, those a projector made of pictures

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Started:
    """The request is accepted: the prompt fits and is queued for generation."""

    prompt_tokens: int


@dataclass(frozen=True)
class TokenChoice:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log probability under the model, and the likeliest alternatives."""

    chosen: TokenChoice
    top: tuple[TokenChoice, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    text: str
    index: int = 0  # which choice, when n > 1
    # The tokens behind this text, when logprobs were asked for. Text held back (a possible
    # stop string) travels later, so a delta may carry tokens and no text.
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of choice ``index``'s reasoning: what a reasoning model thinks before its
    answer, kept apart from the content (never inside a TextDelta)."""

    text: str
    index: int = 0


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of tool call ``call_index`` of choice ``index``: its first piece carries the id
    and name (and empty arguments), later pieces carry fragments of the arguments' JSON."""

    call_index: int
    arguments: str
    index: int = 0
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Finish:
    """One choice ended. ``usage`` counts that choice's completion tokens; the prompt (and
    what of it came from cache) is the same for every choice of a request."""

    reason: FinishReason
    usage: Usage
    index: int = 0


ChatEvent = Started | ReasoningDelta | TextDelta | ToolCallDelta | Finish


class Cancelled(Exception):
    """Work that saw its request's cancel token set stopped there (see CancelToken.check)."""


class CancelToken:
    """Set by the api when the client goes away; engines check it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raises Cancelled once cancelled: for work in a thread, between two of its pieces."""
        if self._event.is_set():
            raise Cancelled


@dataclass(frozen=True)
class ModelInfo:
    id: str
    kind: str
    context_length: int
    owned_by: str
    created: int
    # Chat models that reason: the format their reasoning comes in ("think": a
    # <think>...</think> block; "harmony": gpt-oss's analysis channel); None: no reasoning.
    reasoning: str | None = None
    vision: bool = False  # chat models with a projector (mmproj): user turns may hold images
    # Requests that may wait for this model at once (models.toml ``queue_limit``): a request
    # that queues more (legacy completions' prompts) could never be admitted.
    queue_limit: int = 64


@dataclass(frozen=True)
class Embeddings:
    vectors: tuple[tuple[float, ...], ...]  # one unit-length vector per input, in order
    prompt_tokens: int


class EmbeddingEngine(Protocol):
    """A loaded embedding model. ``embed`` takes texts or token-id lists and raises
    InvalidRequest (param ``input``) for an input longer than the model's context, Overloaded
    when its queue is full or the wait too long; ``owner`` (an API key id) shares the model
    fairly across keys."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def dimensions(self) -> int: ...

    async def embed(self, inputs: list[str] | list[list[int]],
                    owner: str | None = None) -> Embeddings: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


class ChatEngine(Protocol):
    """A loaded chat model.

    ``chat`` yields exactly one ``Started`` first (or raises before it: ContextLengthExceeded,
    InvalidRequest), then ``ReasoningDelta``s (reasoning models: a choice's reasoning comes
    before its answer), ``TextDelta``s and ``ToolCallDelta``s, then exactly one ``Finish`` per
    choice (``n`` of them), the last event being a ``Finish``. Closing the iterator early or
    setting the cancel token frees the engine at its next step.
    """

    @property
    def info(self) -> ModelInfo: ...

    def chat(
        self, params: ChatParams, cancel: CancelToken
    ) -> AsyncGenerator[ChatEvent, None]: ...

    async def count_tokens(self, params: ChatParams, cancel: CancelToken,
                           limit: int | None = None) -> int:
        """The tokens of the prompt ``chat`` would read for ``params`` (template, tools and
        all), without generating or checking the context. Counting may stop past ``limit``:
        the answer is then some number above it."""
        ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


# -- speech to text ------------------------------------------------------------------------


@dataclass(frozen=True)
class TranscriptionParams:
    """One audio file to transcribe (or translate to English); the engine decodes it."""

    audio: Path | BinaryIO  # a file in any format PyAV decodes
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str | None = None  # ISO-639-1; None: detected
    prompt: str | None = None  # text of a previous segment or spellings to prefer
    temperature: float = 0.0
    word_timestamps: bool = False
    owner: str | None = None  # who asks (an API key id): workers are shared fairly by owner


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class TranscriptionStarted:
    """The audio decoded: its length in seconds, and the English name of its language
    (given or detected), e.g. "english"."""

    language: str
    duration: float


TranscriptionEvent = TranscriptionStarted | Segment


class TranscriptionEngine(Protocol):
    """A loaded speech-to-text model. ``transcribe`` yields one ``TranscriptionStarted``
    (or raises InvalidRequest, param ``file``, for audio it cannot decode; Overloaded when
    its queue is full or the wait for a worker is too long), then each ``Segment`` as it is
    decoded. Closing the iterator or cancelling stops the work."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def max_upload_bytes(self) -> int: ...

    def transcribe(self, params: TranscriptionParams,
                   cancel: CancelToken) -> AsyncGenerator[TranscriptionEvent, None]: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


# -- images --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageParams:
    prompt: str
    n: int = 1
    width: int = 512
    height: int = 512
    steps: int | None = None  # None: the model's default
    guidance: float | None = None  # None: the model's default
    seed: int | None = None  # image i of the request is drawn with seed + i; None: random
    negative_prompt: str | None = None
    owner: str | None = None  # who asks (an API key id): workers are shared fairly by owner


@dataclass(frozen=True)
class RGBImage:
    """Raw 8-bit RGB pixels, row by row; the api encodes them (PNG, JPEG, WebP)."""

    width: int
    height: int
    pixels: bytes


@dataclass(frozen=True)
class ImageResult:
    images: tuple[RGBImage, ...]  # ``n`` of them, in seed order
    prompt_tokens: int  # the prompt as the model's tokenizer reads it (after its truncation)


@dataclass(frozen=True)
class ImageDefaults:
    """What a request gets when it does not say: the model's steps and guidance scale
    (models.toml, else the pipeline's own defaults). ``guidance`` is None for a pipeline that
    takes no guidance scale."""

    steps: int
    guidance: float | None


class ImageEngine(Protocol):
    """A loaded text-to-image pipeline. ``generate`` raises InvalidRequest naming ``size``
    for a size the model cannot make (and naming ``negative_prompt`` or ``guidance`` when the
    pipeline takes no such input); requests wait for a free worker, taken round-robin across
    owners (Overloaded when the queue is full or the wait too long); the cancel token stops a
    request in the queue or between two denoising steps."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]: ...  # (width, height); the first is default

    @property
    def defaults(self) -> ImageDefaults: ...

    async def generate(self, params: ImageParams, cancel: CancelToken) -> ImageResult: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


# -- text to speech ------------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechParams:
    """Text to say in one of the model's own voices (the api maps OpenAI's voice names)."""

    text: str
    voice: str  # one of the model's own voices (a value of SpeechEngine.voices)
    speed: float = 1.0  # 0.25-4.0; 2.0 says it in half the time
    owner: str | None = None  # who asks (an API key id): workers are shared fairly by owner


@dataclass(frozen=True)
class SpeechStarted:
    """The text is accepted and split: ``sentences`` pieces will follow, each one audio
    chunk; ``input_tokens`` counts the model's input symbols (phonemes) for all of them."""

    sentences: int
    input_tokens: int


@dataclass(frozen=True)
class SpeechAudio:
    """One sentence's audio: mono signed 16-bit little-endian samples at ``sample_rate``
    (the model's own rate; the api resamples to what the wire format needs). ``index``
    counts sentences from 0; ``output_tokens`` the model's output frames for it."""

    index: int
    sample_rate: int
    pcm: bytes
    output_tokens: int

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


SpeechEvent = SpeechStarted | SpeechAudio


class SpeechEngine(Protocol):
    """A loaded text-to-speech model. ``speak`` raises InvalidRequest (param ``voice``) for a
    voice it lacks, Overloaded when its queue is full or the wait too long, and
    ServiceUnavailable once it is shutting down; it yields one ``SpeechStarted`` once a worker
    has split the text (and made its first sentence), then one ``SpeechAudio`` per sentence,
    in order, as each is synthesised. Closing the iterator or cancelling stops the work after
    the sentence being synthesised."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def voices(self) -> Mapping[str, str]:
        """Every voice name a request may give -> the model's own voice it means: the model's
        own names (to themselves) and the names models.toml maps (OpenAI's alloy, ash ...)."""
        ...

    def speak(self, params: SpeechParams,
              cancel: CancelToken) -> AsyncGenerator[SpeechEvent, None]: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


# -- kinds ---------------------------------------------------------------------------------


class Engine(Protocol):
    """What every loaded model does, whatever its kind: the server warms and closes it."""

    @property
    def info(self) -> ModelInfo: ...

    def warm_up(self) -> None: ...

    def close(self) -> None: ...


E = TypeVar("E", bound=Engine)


@dataclass(frozen=True, eq=False)
class Kind(Generic[E]):
    """A kind of model. ``name`` is its word in models.toml and on /v1/models, ``serves`` what
    a request of another resource is told the model does not support. The type parameter is
    the Protocol the kind's engines implement, so ``catalog.get(CHAT, name)`` is known to be a
    ChatEngine; each kind is one token (compared by identity)."""

    name: str
    serves: str


CHAT: Kind[ChatEngine] = Kind("chat", "chat completions")
EMBEDDING: Kind[EmbeddingEngine] = Kind("embedding", "embeddings")
TRANSCRIPTION: Kind[TranscriptionEngine] = Kind("transcription",
                                                "audio transcriptions and translations")
IMAGE: Kind[ImageEngine] = Kind("image", "image generation")
SPEECH: Kind[SpeechEngine] = Kind("speech", "speech generation")
# Every kind, once: a new kind adds its token here (the usage reports count its rows).
KINDS: tuple[Kind[Any], ...] = (CHAT, EMBEDDING, TRANSCRIPTION, IMAGE, SPEECH)


@dataclass(frozen=True)
class Listing(Generic[E]):
    """One loaded model as the catalog lists it: its kind, its engine and its aliases."""

    kind: Kind[E]
    engine: E
    aliases: tuple[str, ...] = ()
