"""A GGUF chat model served by the continuous-batching scheduler.

Owns the request side: rendering the chat template, tokenizing, checking the context, and
carrying events from the decode thread back to the event loop. The scheduler owns decoding.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace

import anyio.to_thread

from appliance.config import ModelConfig
from appliance.engines.base import (
    CancelToken,
    ChatEvent,
    ChatMessage,
    ChatParams,
    Finish,
    ModelInfo,
    Sampling,
    Started,
    TextDelta,
)
from appliance.engines.llm.grammar import grammar_for
from appliance.engines.llm.model import LoadedModel, default_slots, default_threads
from appliance.engines.llm.scheduler import Emit, GenerationRequest, Scheduler, StepReport
from appliance.engines.llm.templates import ChatTemplate
from appliance.engines.llm.tool_dialects import ToolSupport, rewrite_for_prompt, tools_json
from appliance.engines.llm.tool_dialects import detect as detect_tool_support
from appliance.engines.llm.tool_grammar import tool_call_grammar
from appliance.engines.llm.tool_parser import ToolCallParser
from appliance.engines.thread_events import ThreadEvents
from appliance.errors import ConfigError, ContextLengthExceeded, InvalidRequest, Overloaded

log = logging.getLogger("appliance.engines.llm")
BATCH_SIZE = 512


class LlamaChatEngine:
    def __init__(self, config: ModelConfig, model: LoadedModel, template: ChatTemplate,
                 tool_support: ToolSupport,
                 on_step: Callable[[StepReport], None] | None = None):
        self._config = config
        self._model = model
        self._template = template
        self._tool_support = tool_support
        # Control tokens that open tool calls (Mistral's [TOOL_CALLS]) must reach the parser.
        self._tool_markers = model.single_tokens((tool_support.dialect.start,))
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
        )
        self._info = ModelInfo(id=config.id, kind=config.kind,
                               context_length=config.context_length,
                               owned_by=config.owned_by, created=int(time.time()))
        self._preparing = 0  # requests being tokenized on the event loop's behalf

    @classmethod
    def load(cls, config: ModelConfig,
             on_step: Callable[[StepReport], None] | None = None) -> LlamaChatEngine:
        model = LoadedModel(config.path, config.gpu_layers)
        try:
            source = config.chat_template or model.chat_template
            if not source:
                raise ConfigError(f"model {config.id!r}: {config.path.name} carries no chat "
                                  "template; set chat_template in models.toml")
            template = ChatTemplate(source, model.bos_text, model.eos_text, config.id)
            return cls(config, model, template, detect_tool_support(source), on_step)
        except BaseException:
            model.close()
            raise

    @property
    def info(self) -> ModelInfo:
        return self._info

    def waiting(self) -> int:
        """Requests queued for a slot (for admission, metrics and tests)."""
        return self._scheduler.waiting()

    def warm_up(self) -> None:
        """One short real generation, so the first client request pays no first-use costs."""
        params = ChatParams(messages=(ChatMessage("user", "Hello"),), max_tokens=4,
                            sampling=Sampling(temperature=0.0))
        done = threading.Event()
        failure: list[BaseException] = []

        def emit(event: ChatEvent | BaseException) -> None:
            if isinstance(event, BaseException):
                failure.append(event)
            if isinstance(event, (Finish, BaseException)):
                done.set()

        self._scheduler.submit(self._request(params, CancelToken(), emit))
        if not done.wait(timeout=300):
            raise TimeoutError(f"model {self._config.id} did not finish its warm-up")
        if failure:
            raise failure[0]

    def close(self) -> None:
        self._scheduler.close()
        self._model.close()

    async def chat(
        self, params: ChatParams, cancel: CancelToken
    ) -> AsyncGenerator[ChatEvent, None]:
        # Requests still being tokenized count as waiting: a burst arriving at once would
        # otherwise all pass the check before any of them reached the queue.
        if self.waiting() + self._preparing >= self._config.queue_limit:
            raise Overloaded(f"The model `{self._info.id}` has {self._config.queue_limit} "
                             "requests waiting; try again shortly.", retry_after=1.0)
        events: ThreadEvents[ChatEvent] = ThreadEvents(cancel)
        self._preparing += 1
        try:
            first = await anyio.to_thread.run_sync(self._request, params, cancel, events.emit)
        finally:
            self._preparing -= 1
        choices = [first, *(self._sibling(first, i) for i in range(1, params.n))]
        # Queued at once (no await since the count above): generation may start while the
        # caller is still sending its response headers.
        self._scheduler.submit(*choices)
        calls_tools = params.tools is not None and params.tools.choice != "none"
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

    @staticmethod
    def _sibling(first: GenerationRequest, index: int) -> GenerationRequest:
        """Choice ``index`` of the same prompt: its own draw, a seed of its own if seeded."""
        sampling = first.sampling
        if sampling.seed is not None:
            sampling = replace(sampling, seed=sampling.seed + index)
        return replace(first, sampling=sampling, index=index, leader=first,
                       enough=threading.Event())

    def _render(self, params: ChatParams) -> str:
        support = self._tool_support
        uses_tools = params.tools is not None and params.tools.choice != "none"
        if support.native:
            tools = tools_json(params.tools.tools) if uses_tools and params.tools else None
            return self._template.render(params.messages, tools)
        messages = params.messages
        if uses_tools or any(m.role == "tool" or m.tool_calls for m in messages):
            messages = rewrite_for_prompt(messages, params.tools, support.dialect)
        return self._template.render(messages)

    def _prompt_tokens(self, params: ChatParams) -> list[int]:
        if params.prompt is None:
            return self._model.tokenize_prompt(self._render(params))
        if isinstance(params.prompt, str):
            tokens = self._model.tokenize(params.prompt, add_bos=self._model.add_bos)
        else:
            tokens = list(params.prompt)
            if any(t < 0 or t >= self._model.n_vocab for t in tokens):
                raise InvalidRequest("The prompt holds token ids outside this model's "
                                     f"vocabulary of {self._model.n_vocab}.", param="prompt",
                                     code="invalid_value")
        if not tokens:
            raise InvalidRequest("The prompt is empty.", param="prompt", code="invalid_value")
        return tokens

    def _request(self, params: ChatParams, cancel: CancelToken, emit: Emit) -> GenerationRequest:
        tokens = self._prompt_tokens(params)
        n_ctx = self._info.context_length
        if params.max_tokens is not None and len(tokens) + params.max_tokens > n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, you "
                f"requested {len(tokens) + params.max_tokens} tokens ({len(tokens)} in the "
                f"messages, {params.max_tokens} in the completion). Please reduce the length "
                "of the messages or completion.",
                param="messages",
            )
        if len(tokens) >= n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, your "
                f"messages resulted in {len(tokens)} tokens. Please reduce the length of the "
                "messages.",
                param="messages",
            )
        for token, _ in params.sampling.logit_bias:
            if token >= self._model.n_vocab:
                raise InvalidRequest(
                    f"Invalid key in 'logit_bias': token {token} is outside this model's "
                    f"vocabulary of {self._model.n_vocab} tokens.", param="logit_bias",
                    code="invalid_value")
        stop = tuple(dict.fromkeys(params.stop + self._config.stop))
        sampling = self._constrained(params)
        return GenerationRequest(
            tokens=tokens,
            max_tokens=params.max_tokens or n_ctx - len(tokens),
            stop=stop,
            sampling=sampling,
            cancel=cancel,
            emit=emit,
            shown_specials=self._tool_markers if params.tools else frozenset(),
            owner=params.owner,
            wait_until=time.monotonic() + self._config.queue_timeout_s,
            generate_for=self._config.generation_timeout_s or math.inf,
        )

    def _constrained(self, params: ChatParams) -> Sampling:
        """The request's sampling with the grammar its response_format and tools ask for."""
        sampling = params.sampling
        use = params.tools
        if use is not None and use.choice != "none":
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
