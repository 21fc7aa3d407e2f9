"""A GGUF chat model on llama-cpp-python, served from one decode thread.

Owns the model, its context, its chat template and the thread that generates. Requests queue
in front of the thread and run one after another (issue 3 replaces this with a batching
scheduler behind the same ChatEngine Protocol). Tokens travel back to the event loop through
a thread-safe hand-off; a cancelled request frees the thread at its next token. The context
keeps the last prompt's KV, so a request sharing its prefix decodes only the rest.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import queue
import random
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

import anyio.to_thread
import llama_cpp

from appliance.config import ModelConfig
from appliance.engines.base import (
    CancelToken,
    ChatEvent,
    ChatMessage,
    ChatParams,
    Finish,
    FinishReason,
    ModelInfo,
    Sampling,
    Started,
    TextDelta,
    Usage,
)
from appliance.engines.llm.templates import ChatTemplate
from appliance.engines.llm.textstream import TextAssembler
from appliance.errors import ConfigError, ContextLengthExceeded, EngineFailure

log = logging.getLogger("appliance.engines.llm")


@dataclass
class _Job:
    tokens: list[int]
    max_tokens: int
    stop: tuple[str, ...]
    sampling: Sampling
    cancel: CancelToken
    emit: Callable[[ChatEvent | BaseException], None]


class LlamaChatEngine:
    def __init__(self, config: ModelConfig, llama: llama_cpp.Llama, template: ChatTemplate):
        self._config = config
        self._llama = llama
        self._template = template
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._add_bos = bool(llama._model.add_bos_token())
        self._bos_text = _token_text(llama, llama.token_bos())
        # A configured stop string that is one special token (Gemma's <start_of_turn>) never
        # shows up as text, so it is matched as a token.
        self._stop_tokens = frozenset(
            ids[0] for stop in config.stop
            if len(ids := llama.tokenize(stop.encode(), add_bos=False, special=True)) == 1
        )
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._info = ModelInfo(
            id=config.id, kind=config.kind, context_length=llama.n_ctx(),
            owned_by=config.owned_by, created=int(time.time()),
        )
        self._thread = threading.Thread(target=self._serve, name=f"llm-{config.id}", daemon=True)
        self._thread.start()

    @classmethod
    def load(cls, config: ModelConfig) -> LlamaChatEngine:
        threads = config.threads or os.cpu_count() or 1
        llama = llama_cpp.Llama(
            model_path=str(config.path),
            n_ctx=config.context_length,
            n_gpu_layers=config.gpu_layers,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        template_source = config.chat_template or llama.metadata.get("tokenizer.chat_template")
        if not template_source:
            llama.close()
            raise ConfigError(
                f"model {config.id!r}: {config.path.name} carries no chat template; "
                "set chat_template in models.toml"
            )
        template = ChatTemplate(
            template_source,
            bos_token=_token_text(llama, llama.token_bos()),
            eos_token=_token_text(llama, llama.token_eos()),
            model_id=config.id,
        )
        return cls(config, llama, template)

    @property
    def info(self) -> ModelInfo:
        return self._info

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

        tokens, max_tokens = self._prepare(params)
        self._jobs.put(_Job(tokens, max_tokens, params.stop, params.sampling, CancelToken(), emit))
        done.wait()
        if failure:
            raise failure[0]

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)
        self._llama.close()

    async def chat(
        self, params: ChatParams, cancel: CancelToken
    ) -> AsyncGenerator[ChatEvent, None]:
        tokens, max_tokens = await anyio.to_thread.run_sync(self._prepare, params)
        yield Started(prompt_tokens=len(tokens))
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[ChatEvent | BaseException] = asyncio.Queue()

        def emit(event: ChatEvent | BaseException) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        stop = tuple(dict.fromkeys(params.stop + self._config.stop))
        self._jobs.put(_Job(tokens, max_tokens, stop, params.sampling, cancel, emit))
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finish):
                    return
        finally:
            cancel.cancel()

    # --- request preparation (any thread) ---

    def _prepare(self, params: ChatParams) -> tuple[list[int], int]:
        text = self._template.render(params.messages)
        if self._add_bos and self._bos_text and text.startswith(self._bos_text):
            text = text[len(self._bos_text):]  # the tokenizer adds BOS; never send it twice
        tokens = self._llama.tokenize(text.encode(), add_bos=self._add_bos, special=True)
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
        return tokens, params.max_tokens or n_ctx - len(tokens)

    # --- the decode thread ---

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancel.cancelled:
                continue
            try:
                job.emit(self._generate(job))
            except Exception as exc:  # keep serving the other requests
                log.exception("generation failed on model %s", self._config.id)
                job.emit(EngineFailure(f"Generation failed on model {self._config.id}: {exc}"))

    def _generate(self, job: _Job) -> Finish:
        llama = self._llama
        cached = _common_prefix(llama._input_ids.tolist(), job.tokens)
        sampling = job.sampling
        llama.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
        assembler = TextAssembler(job.stop)
        produced = 0
        reason: FinishReason = "length"
        for token in llama.generate(
            job.tokens,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,  # OpenAI has no top-k: sample from the whole (top_p-cut) distribution
            min_p=0.0,
            repeat_penalty=1.0,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            reset=True,
        ):
            if job.cancel.cancelled:
                break
            if token in self._stop_tokens or llama_cpp.llama_vocab_is_eog(self._vocab, token):
                reason = "stop"
                break
            produced += 1
            piece = assembler.push(self._piece(token))
            if piece.text:
                job.emit(TextDelta(piece.text))
            if piece.stopped:
                reason = "stop"
                break
            if produced >= job.max_tokens:
                break
        tail = assembler.finish()
        if tail:
            job.emit(TextDelta(tail))
        prompt = len(job.tokens)
        return Finish(reason, Usage(prompt, produced, min(cached, max(prompt - 1, 0))))

    def _piece(self, token: int) -> bytes:
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            written = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, size, 0, False)
            if written >= 0:
                return buffer.raw[:written]
            size = -written


def _common_prefix(cached: Sequence[int], tokens: list[int]) -> int:
    count = 0
    for a, b in zip(cached, tokens, strict=False):
        if a != b:
            break
        count += 1
    return count


def _token_text(llama: llama_cpp.Llama, token: int) -> str:
    if token < 0:
        return ""
    return str(llama._model.token_get_text(token))
