"""A GGUF chat model served by the continuous-batching scheduler.

Owns the request side: rendering the chat template, tokenizing, checking the context, and
carrying events from the decode thread back to the event loop. The scheduler owns decoding.

Preparing a prompt (marking request text, rendering, tokenizing: see prompt_tokens.py) runs on
a small thread pool of the engine's own, never on the event loop nor on anyio's shared pool
(which key lookups need): a burst of huge prompts queues there and starves nothing else. A
request whose client leaves stops preparing at its next message or piece of text.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import logging
import math
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from PIL import Image

from appliance.config import ChatModelConfig
from appliance.engines.base import (
    Cancelled,
    CancelToken,
    ChatEvent,
    ChatMessage,
    ChatParams,
    Finish,
    ImageInput,
    ModelInfo,
    Sampling,
    Started,
    TextDelta,
)
from appliance.engines.llm.grammar import grammar_for
from appliance.engines.llm.model import (
    LoadedModel,
    default_slots,
    default_step_seconds,
    default_threads,
)
from appliance.engines.llm.prompt_images import PromptImages
from appliance.engines.llm.prompt_tokens import PromptTokenizer, PromptTooLong, RequestText
from appliance.engines.llm.reasoning import (
    HARMONY,
    HARMONY_MARKERS,
    Phase,
    ReasoningPlan,
    ReasoningProfile,
)
from appliance.engines.llm.reasoning import detect as detect_reasoning
from appliance.engines.llm.sampling import SamplerChain
from appliance.engines.llm.scheduler import (
    Emit,
    GenerationRequest,
    RoomAsked,
    SamplerFactory,
    Scheduler,
    StepReport,
)
from appliance.engines.llm.step_budget import StepBudget
from appliance.engines.llm.templates import ChatTemplate
from appliance.engines.llm.tool_dialects import (
    HERMES,
    ToolSupport,
    rewrite_for_prompt,
    tools_json,
)
from appliance.engines.llm.tool_dialects import detect as detect_tool_support
from appliance.engines.llm.tool_grammar import tool_call_grammar
from appliance.engines.llm.tool_parser import ToolCallParser
from appliance.engines.llm.vision import Projector, projector_on_gpu
from appliance.engines.llm.vision_prompt import PromptPictures
from appliance.engines.runtime.thread_events import ThreadEvents
from appliance.errors import ConfigError, ContextLengthExceeded, InvalidRequest, Overloaded

log = logging.getLogger("appliance.engines.llm")
BATCH_SIZE = 512
# Threads preparing prompts, per model. Rendering holds the GIL and tokenizing a core: two
# keep a burst of big prompts moving without taking the event loop's turn away from it.
PREPARE_THREADS = 2


class LlamaChatEngine:
    def __init__(self, config: ChatModelConfig, model: LoadedModel, template: ChatTemplate,
                 tool_support: ToolSupport,
                 on_step: Callable[[StepReport], None] | None = None,
                 samplers: SamplerFactory = SamplerChain,
                 reasoning: ReasoningProfile | None = None,
                 projector: Projector | None = None):
        """``samplers`` builds each request's sampler (tests pass ones that fail);
        ``reasoning``: how the model reasons (see reasoning_profile), None if it does not;
        ``projector``: the model's vision projector (models.toml mmproj), None: text only."""
        self._config = config
        self._model = model
        self._projector = projector
        self._template = template
        self._reasoning = reasoning
        if reasoning is not None and reasoning.family == HARMONY:
            # gpt-oss's template renders tools and tool turns itself; its calls are read by
            # the reasoning reader (messages to functions.NAME), not by a tool parser.
            tool_support = ToolSupport(HERMES, native=True)
        self._tool_support = tool_support
        self._tokenizer = PromptTokenizer(model)
        self._preparers = ThreadPoolExecutor(max_workers=PREPARE_THREADS,
                                             thread_name_prefix=f"prompt-{config.id}")
        # Control tokens that open tool calls (Mistral's [TOOL_CALLS]) must reach the parser.
        self._tool_markers = model.single_tokens((tool_support.dialect.start,))
        # ...and those that delimit reasoning (harmony's messages, a <think> that is one
        # token) the reasoning reader.
        self._reasoning_markers = frozenset() if reasoning is None else model.single_tokens(
            HARMONY_MARKERS if reasoning.family == HARMONY
            else (reasoning.open_tag, reasoning.close_tag))
        self._scheduler = Scheduler(
            model,
            model_id=config.id,
            slots=config.parallel or default_slots(config.gpu_layers),
            context_length=config.context_length,
            threads=default_threads(config.threads),
            batch_size=BATCH_SIZE,
            stop_tokens=model.single_tokens(config.stop),
            prompt_cache_bytes=config.prompt_cache_mb * 1024 * 1024,
            on_step=on_step,
            samplers=samplers,
            step_budget=step_budget(config, BATCH_SIZE),
        )
        self._info = ModelInfo(id=config.id, kind=config.kind,
                               context_length=config.context_length,
                               owned_by=config.owned_by, created=int(time.time()),
                               reasoning=None if reasoning is None else reasoning.family,
                               vision=projector is not None,
                               queue_limit=config.queue_limit)
        # Requests queued for or in the prompt threads, by key (none: absent).
        self._preparing: dict[str | None, int] = {}

    @classmethod
    def load(cls, config: ChatModelConfig,
             on_step: Callable[[StepReport], None] | None = None) -> LlamaChatEngine:
        model = LoadedModel(config.path, config.gpu_layers)
        projector: Projector | None = None
        try:
            if config.mmproj is not None:
                # On the GPU with the model's layers; as many threads as the model's.
                projector = Projector(config.mmproj, model,
                                      use_gpu=projector_on_gpu(config.gpu_layers),
                                      threads=default_threads(config.threads),
                                      batch_size=BATCH_SIZE, model_id=config.id)
            source = config.chat_template or model.chat_template
            if not source:
                raise ConfigError(f"model {config.id!r}: {config.path.name} carries no chat "
                                  "template; set chat_template in models.toml")
            template = ChatTemplate(source, model.bos_text, model.eos_text, config.id)
            reasoning = reasoning_profile(config, model, template, source)
            if reasoning is not None:
                log.info("model %s reasons: %s", config.id, reasoning.describe())
            return cls(config, model, template, detect_tool_support(source), on_step,
                       reasoning=reasoning, projector=projector)
        except BaseException:
            if projector is not None:
                projector.close()
            model.close()
            raise

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def reasoning(self) -> ReasoningProfile | None:
        return self._reasoning

    @property
    def _harmony(self) -> bool:
        return self._reasoning is not None and self._reasoning.family == HARMONY

    def waiting(self) -> int:
        """Requests queued for a slot (for the queue limit, metrics and tests)."""
        return self._scheduler.waiting()

    async def _room_for(self, owner: str | None) -> bool:
        """A place in the full queue for ``owner``'s request, if a key with more waiting
        gives its newest up (the decode thread, which owns the queue, decides: RoomAsked).
        A place given is counted as preparing at once, as the answer comes, so a request
        arriving before this one resumes sees the queue full still."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()

        def told(room: bool) -> None:
            if answer.done():
                return
            if room:
                self._preparing[owner] = self._preparing.get(owner, 0) + 1
            answer.set_result(room)

        def tell(room: bool) -> None:  # from the decode thread
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody asks
                loop.call_soon_threadsafe(told, room)

        self._scheduler.ask_room(RoomAsked(owner, self._config.queue_limit,
                                           dict(self._preparing), tell))
        try:
            return await answer
        except asyncio.CancelledError:
            if answer.done() and not answer.cancelled() and answer.result():
                self._done_preparing(owner)  # the place was given as the client left
            raise

    def _done_preparing(self, owner: str | None) -> None:
        left = self._preparing.pop(owner) - 1
        if left:
            self._preparing[owner] = left

    def warm_up(self) -> None:
        """One short real generation, so the first client request pays no first-use costs;
        for a model with a projector, with a small picture in it (decoded, encoded and its
        embeddings decoded: the whole path)."""
        message = ChatMessage("user", "Hello")
        if self._projector is not None:
            message = ChatMessage("user", "Hello", images=((0, warm_up_picture()),))
        params = ChatParams(messages=(message,), max_tokens=4,
                            sampling=Sampling(temperature=0.0))
        done = threading.Event()
        failure: list[BaseException] = []
        finished: list[Finish] = []

        def emit(event: ChatEvent | BaseException) -> None:
            if isinstance(event, BaseException):
                failure.append(event)
            if isinstance(event, Finish):
                finished.append(event)
            if isinstance(event, (Finish, BaseException)):
                done.set()

        request = self._request(params, CancelToken(), emit)
        try:
            self._scheduler.submit(request)
        except BaseException:
            self._release_images(request)
            raise
        if not done.wait(timeout=300):
            raise TimeoutError(f"model {self._config.id} did not finish its warm-up")
        if failure:
            raise failure[0]
        if self._projector is not None and finished:
            log.info("model %s takes images: a %dx%d picture cost %d prompt tokens",
                     self._config.id, WARM_UP_PICTURE_SIDE, WARM_UP_PICTURE_SIDE,
                     finished[0].usage.image_tokens)

    def close(self) -> None:
        self._preparers.shutdown(wait=True, cancel_futures=True)
        self._scheduler.close()  # frees the image chunks of what it still held
        if self._projector is not None:
            self._projector.close()
        self._model.close()

    @property
    def live_image_chunks(self) -> int:
        """Image chunks held by requests now (0 without a projector): for tests and leaks."""
        return 0 if self._projector is None else self._projector.live_chunks

    async def chat(
        self, params: ChatParams, cancel: CancelToken
    ) -> AsyncGenerator[ChatEvent, None]:
        # Requests still being tokenized count as waiting: a burst arriving at once would
        # otherwise all pass the check before any of them reached the queue.
        if self.waiting() + sum(self._preparing.values()) < self._config.queue_limit:
            self._preparing[params.owner] = self._preparing.get(params.owner, 0) + 1
        elif not await self._room_for(params.owner):  # counted as preparing when given
            raise Overloaded(f"The model `{self._info.id}` has {self._config.queue_limit} "
                             "requests waiting, as many of them this key's as any other's; "
                             "try again shortly.", retry_after=1.0)
        events: ThreadEvents[ChatEvent] = ThreadEvents(cancel)
        try:
            first = await self._prepare(params, cancel, events.emit)
        finally:
            self._done_preparing(params.owner)
        choices = [first, *(self._sibling(first, i) for i in range(1, params.n))]
        if first.images is not None:
            first.images.hold(len(choices))  # freed when the last choice ends
        # Queued at once (no await since the count above): generation may start while the
        # caller is still sending its response headers.
        try:
            self._scheduler.submit(*choices)
        except BaseException:
            self._release_images(first)
            raise
        calls_tools = params.tools is not None and params.tools.choice != "none" \
            and not self._harmony
        parsers = {index: ToolCallParser(self._tool_support.dialect, index)
                   for index in range(params.n)} if calls_tools else {}
        unfinished = params.n
        try:
            yield Started(prompt_tokens=len(first.tokens))
            while unfinished:
                event = await events.next()
                if isinstance(event, Finish):
                    unfinished -= 1
                if isinstance(event, Started) or event.index not in parsers:
                    yield event
                    continue
                parser = parsers[event.index]
                for parsed in _through_parser(parser, event):
                    yield parsed
                if parser.done:
                    choices[event.index].enough.set()
        finally:
            cancel.cancel()

    async def count_tokens(self, params: ChatParams, cancel: CancelToken,
                           limit: int | None = None) -> int:
        """The prompt's tokens, rendered and tokenized as ``chat`` does, on the prompt
        threads; past ``limit`` the count stops at a lower bound above it."""
        context = contextvars.copy_context()
        job = self._preparers.submit(context.run, self._count, params, cancel, limit)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            cancel.cancel()
            raise

    def _count(self, params: ChatParams, cancel: CancelToken, limit: int | None) -> int:
        marks = RequestText(self._tokenizer)
        pictures = PromptPictures(self._projector)
        rendered = self._render(params, marks, cancel, pictures)
        try:
            tokens, images = pictures.tokenize(self._tokenizer, rendered, marks,
                                               limit=limit or sys.maxsize, cancel=cancel)
        except PromptTooLong as too_long:
            return too_long.at_least
        if images is not None:
            images.close()  # counted, never evaluated
        return len(tokens)

    async def _prepare(self, params: ChatParams, cancel: CancelToken,
                       emit: Emit) -> GenerationRequest:
        """The request, prepared on the prompt threads. Cancelling the awaiting task (the
        client left) sets the cancel token, which the work checks between its pieces; one not
        started yet never starts."""
        context = contextvars.copy_context()  # the request id for the log lines
        job = self._preparers.submit(context.run, self._request, params, cancel, emit)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            cancel.cancel()
            # A request prepared after its client left never reaches the scheduler: its
            # pictures' chunks are freed here, when the job ends.
            job.add_done_callback(_free_unused_images)
            raise
        except Cancelled:
            # The token was set with no task cancelled: nobody waits for an answer.
            raise asyncio.CancelledError from None

    @staticmethod
    def _sibling(first: GenerationRequest, index: int) -> GenerationRequest:
        """Choice ``index`` of the same prompt: its own draw, a seed of its own if seeded."""
        sampling = first.sampling
        if sampling.seed is not None:
            sampling = replace(sampling, seed=sampling.seed + index)
        return replace(first, sampling=sampling, index=index, leader=first,
                       enough=threading.Event())

    def _render(self, params: ChatParams, marks: RequestText, cancel: CancelToken,
                pictures: PromptPictures) -> str:
        """The chat prompt, every piece of request text in it marked (see prompt_tokens.py)
        and a marker of ``pictures`` where each image stood (vision_prompt.py); for a
        reasoning model with effort none, closed thinking appended."""
        support = self._tool_support
        uses_tools = params.tools is not None and params.tools.choice != "none"
        self._check_images(params)
        messages = marks.messages(params.messages, pictures.marker)
        tools = marks.tools(params.tools) if uses_tools else None
        variables = self._template_variables(params)
        if support.native:
            rendered = self._template.render(
                messages, tools_json(tools.tools) if tools else None, cancel, variables)
        else:
            if uses_tools or any(m.role == "tool" or m.tool_calls for m in messages):
                messages = rewrite_for_prompt(messages, tools, support.dialect)
            rendered = self._template.render(messages, cancel=cancel, variables=variables)
        profile = self._reasoning
        if profile is not None and self._thinks_not(params):
            rendered += profile.no_thinking(rendered, tools_pending=uses_tools)
        return rendered

    def _check_images(self, params: ChatParams) -> None:
        """Images only in user turns, only for a model with a projector (the api refuses
        others first; this holds for any caller)."""
        for at, message in enumerate(params.messages):
            if not message.images:
                continue
            if self._projector is None:
                raise InvalidRequest(f"The model `{self._info.id}` does not take images.",
                                     param=f"messages[{at}].content", code="invalid_value")
            if message.role != "user":
                raise InvalidRequest("Images may only be in user messages.",
                                     param=f"messages[{at}].content", code="invalid_value")

    def _thinks_not(self, params: ChatParams) -> bool:
        """Effort none/minimal, or a budget of 0 tokens: the prompt closes the thinking."""
        effort = params.reasoning_effort
        return effort in ("none", "minimal") or (effort is not None
                                                 and self._budget(params) == 0)

    def _budget(self, params: ChatParams) -> int | None:
        """The thinking budget of the request's effort; no effort, no budget (max_tokens
        alone), as llama-server's default."""
        effort = params.reasoning_effort
        if effort is None or effort in ("none", "minimal"):
            return None
        return dict(self._config.reasoning_budget).get(effort)

    def _template_variables(self, params: ChatParams) -> dict[str, Any]:
        """What the template reads besides messages and tools: the effort (gpt-oss reads
        reasoning_effort; none turns Qwen3's enable_thinking off), then the request's
        chat_template_kwargs, which win."""
        variables: dict[str, Any] = {}
        profile, effort = self._reasoning, params.reasoning_effort
        if profile is not None and effort is not None:
            if effort in ("none", "minimal"):
                if profile.family == HARMONY:
                    variables["reasoning_effort"] = "low"  # its least; the prompt skips it
                elif profile.switchable:
                    variables["enable_thinking"] = False
            else:
                variables["reasoning_effort"] = effort
        variables.update(params.template_kwargs)
        return variables

    def _prompt_tokens(self, params: ChatParams, cancel: CancelToken
                       ) -> tuple[list[int], str | None, PromptImages | None]:
        """The prompt's tokens (pictures' placeholders included), its rendered text (None for
        a raw prompt) and its pictures' runs (None without pictures; the caller frees them).
        Raises ContextLengthExceeded when the prompt and ``max_tokens`` cannot fit; a prompt
        far too long is refused before it is tokenized."""
        n_ctx = self._info.context_length
        limit = n_ctx - params.max_tokens if params.max_tokens is not None else n_ctx - 1
        marks = RequestText(self._tokenizer)
        pictures = PromptPictures(self._projector)
        if params.prompt is None:
            rendered = self._render(params, marks, cancel, pictures)
        elif isinstance(params.prompt, str):
            rendered = marks.text(params.prompt, trailing=False)  # the client's text, all of it
        else:
            tokens = list(params.prompt)
            if any(t < 0 or t >= self._model.n_vocab for t in tokens):
                raise InvalidRequest("The prompt holds token ids outside this model's "
                                     f"vocabulary of {self._model.n_vocab}.", param="prompt",
                                     code="invalid_value")
            return self._fits(tokens, len(tokens), params, exact=True), None, None
        try:
            tokens, images = pictures.tokenize(self._tokenizer, rendered, marks,
                                               limit=max(limit, 0), cancel=cancel)
        except PromptTooLong as too_long:
            return self._fits([], too_long.at_least, params, exact=False), None, None
        chat = rendered if params.prompt is None else None
        try:
            return self._fits(tokens, len(tokens), params, exact=True), chat, images
        except BaseException:
            if images is not None:
                images.close()
            raise

    def _fits(self, tokens: list[int], count: int, params: ChatParams,
              exact: bool) -> list[int]:
        """``tokens`` if they and max_tokens fit the context, else ContextLengthExceeded
        (``count`` tokens; at least that many unless ``exact``)."""
        n_ctx = self._info.context_length
        param = "messages" if params.prompt is None else "prompt"
        many = "" if exact else "at least "
        if params.max_tokens is not None and count + params.max_tokens > n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you "
                f"requested {many}{count + params.max_tokens} tokens ({many}{count} in the "
                f"messages, {params.max_tokens} in the completion). Please reduce the length "
                "of the messages or completion.",
                param=param,
            )
        if count >= n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, your "
                f"messages resulted in {many}{count} tokens. Please reduce the length of the "
                "messages.",
                param=param,
            )
        if not tokens:
            raise InvalidRequest("The prompt is empty.", param="prompt", code="invalid_value")
        return tokens

    def _request(self, params: ChatParams, cancel: CancelToken, emit: Emit) -> GenerationRequest:
        tokens, rendered, images = self._prompt_tokens(params, cancel)
        try:
            return self._generation(params, cancel, emit, tokens, rendered, images)
        except BaseException:
            if images is not None:
                images.close()
            raise

    def _generation(self, params: ChatParams, cancel: CancelToken, emit: Emit,
                    tokens: list[int], rendered: str | None,
                    images: PromptImages | None) -> GenerationRequest:
        n_ctx = self._info.context_length
        for token, _ in params.sampling.logit_bias:
            if token >= self._model.n_vocab:
                raise InvalidRequest(
                    f"Invalid key in 'logit_bias': token {token} is outside this model's "
                    f"vocabulary of {self._model.n_vocab} tokens.", param="logit_bias",
                    code="invalid_value")
        stop = tuple(dict.fromkeys(params.stop + self._config.stop))
        sampling = self._constrained(params)
        plan = self._plan(params, rendered, sampling)
        if plan is not None and plan.answer_sampling is not None:
            # Thinking is free text: the grammar is armed when the answer begins.
            sampling = replace(sampling, grammar=None, grammar_trigger=None)
        shown = self._tool_markers if params.tools else frozenset()
        if plan is not None:
            shown = shown | self._reasoning_markers
        return GenerationRequest(
            tokens=tokens,
            max_tokens=params.max_tokens or n_ctx - len(tokens),
            stop=stop,
            sampling=sampling,
            cancel=cancel,
            emit=emit,
            shown_specials=shown,
            owner=params.owner,
            wait_until=time.monotonic() + self._config.queue_timeout_s,
            generate_for=self._config.generation_timeout_s or math.inf,
            reasoning=plan,
            images=images,
        )

    @staticmethod
    def _release_images(request: GenerationRequest) -> None:
        if request.images is not None:
            request.images.close()

    def _plan(self, params: ChatParams, rendered: str | None,
              sampling: Sampling) -> ReasoningPlan | None:
        """The request's reasoning: where its output starts (read off the rendered prompt),
        its budget, whether an answer is owed and the grammar the answer gets. None: no
        reader needed (no reasoning model, a raw prompt, or a think prompt that closed the
        block already: the output is plain answer, read as fast as any)."""
        profile = self._reasoning
        if profile is None or rendered is None:
            return None
        start = profile.start(rendered)
        if start is Phase.ANSWERING and profile.family != HARMONY:
            return None
        owed = params.output is not None or (params.tools is not None and params.tools.forced)
        deferred = sampling.grammar is not None and start is not Phase.ANSWERING
        return ReasoningPlan(profile, start, budget=self._budget(params), must_answer=owed,
                             answer_sampling=sampling if deferred else None)

    def _constrained(self, params: ChatParams) -> Sampling:
        """The request's sampling with the grammar its response_format and tools ask for."""
        sampling = params.sampling
        use = params.tools
        if self._harmony:
            # Harmony's tool calls are messages to functions.NAME, read by the reasoning
            # reader and not constrained; a response_format holds on the final channel.
            if params.output is not None:
                sampling = replace(sampling, grammar=grammar_for(params.output))
        elif use is not None and use.choice != "none":
            dialect = self._tool_support.dialect
            grammar = tool_call_grammar(use, dialect, params.output)
            # Under auto the model may answer in prose: the grammar waits for a call to
            # start, unless a response_format already constrains the reply from the start.
            lazy = not use.forced and params.output is None
            sampling = replace(sampling, grammar=grammar,
                               grammar_trigger=dialect.start if lazy else None)
        elif params.output is not None:
            sampling = replace(sampling, grammar=grammar_for(params.output))
        if sampling.grammar is not None:
            self._model.check_grammar(sampling.grammar)
        return sampling


def step_budget(config: ChatModelConfig, batch_size: int) -> StepBudget | None:
    """The model's step budget from models.toml's max_step_ms (None: off)."""
    if config.max_step_ms == 0:
        return None
    seconds = default_step_seconds(config.gpu_layers) if config.max_step_ms is None \
        else config.max_step_ms / 1000.0
    return StepBudget(seconds, batch_size)


def reasoning_profile(config: ChatModelConfig, model: LoadedModel, template: ChatTemplate,
                      source: str) -> ReasoningProfile | None:
    """How the model reasons: models.toml's reasoning key, else (auto) its template and
    vocabulary (see reasoning.detect)."""

    def one_message_prompt() -> str:
        return template.render((ChatMessage("user", "Hello"),))

    return detect_reasoning(
        config.reasoning, config.reasoning_tags, source,
        lambda texts: len(model.single_tokens(texts)) == len(texts),
        one_message_prompt, dict(config.reasoning_budget))


# The warm-up's picture: small, so the boot log's cost is one projector input's (a projector
# that resizes to its own input, as most do, costs the same for any picture).
WARM_UP_PICTURE_SIDE = 64


def warm_up_picture() -> ImageInput:
    """A PNG of a smooth gradient, made here (no file shipped)."""
    side = WARM_UP_PICTURE_SIDE
    picture = Image.new("RGB", (side, side))
    picture.putdata([(x * 4, y * 4, 128) for y in range(side) for x in range(side)])
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    return ImageInput(encoded.getvalue(), side, side)


def _free_unused_images(job: Future[GenerationRequest]) -> None:
    if not job.cancelled() and job.exception() is None:
        request = job.result()
        if request.images is not None:
            request.images.close()


def _through_parser(parser: ToolCallParser, event: ChatEvent) -> list[ChatEvent]:
    """A choice's text read for tool calls; its Finish says tool_calls if it made any."""
    if isinstance(event, TextDelta):
        parsed: list[ChatEvent] = list(parser.feed(event.text))
        if event.logprobs:
            # Logprobs belong to the content; tokens inside a call report none, as OpenAI.
            for at, text in enumerate(parsed):
                if isinstance(text, TextDelta):
                    parsed[at] = replace(text, logprobs=event.logprobs)
                    break
        return parsed
    if isinstance(event, Finish):
        reason = "tool_calls" if parser.calls and event.reason == "stop" else event.reason
        tail: list[ChatEvent] = list(parser.finish())
        return [*tail, replace(event, reason=reason)]
    return [event]
