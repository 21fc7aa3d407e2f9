"""An embedding model on llama.cpp: one pooled, unit-length vector per input.

Owns a context made for embeddings (pooling on, one sequence per input of a batch) and one
worker thread, so embedding work never runs on the event loop and never shares a context
with generation; requests wait for it in a ``WorkerPool`` (bounded, round-robin across keys).
A request runs in steps in the pool, each its batches of about a second (``STEP_S``, or one
batch where that takes longer): between two steps another key's waiting request takes its
turn, so one key's request of 2,048 inputs (minutes on a CPU) holds another key's one input
for a step, not for all of them. A step holds the worker until it is done, not until the
client leaves; a client that leaves stops its request between two inputs (tokenizing) or two
batches.

Bounds, each a 400 before the work they guard: an input longer than the context is refused
(never truncated) -- first by its length in characters where no tokenization could make it
fit, so no client pays for tokenizing megabytes, then by its tokens; a token-id input must
hold ids of the vocabulary; all inputs together take at most ``max_request_tokens``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import llama_cpp

from appliance.config import EmbeddingModelConfig
from appliance.engines.base import CancelToken, Embeddings, ModelInfo
from appliance.engines.llm.batch import TokenBatch
from appliance.engines.llm.model import LoadedModel, default_threads
from appliance.engines.runtime.fair_gate import Occupancy, OccupancyReport
from appliance.engines.runtime.worker_pool import STEP_S, WorkerPool
from appliance.errors import EngineFailure, InvalidRequest

POOLING = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
           "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}
MAX_SEQUENCES = 16  # inputs embedded together in one decode
# Tokens of inputs embedded together in one decode (an input longer than this has a decode of
# its own). A decode cannot be interrupted, so this bounds how long a cancelled request keeps
# the model: one decode (SmolLM2-135M, 512 tokens, two busy CPU cores: 2-8 s). Batching more
# buys little on a CPU.
MAX_BATCH_TOKENS = 512
WARM_UP_TEXT = "The appliance embeds a full batch before it serves, so no request pays for it."


class Stopped(Exception):
    """The request was cancelled (its client left) while its inputs were tokenized."""


@dataclass
class _Progress:
    """One request's batches and how far its steps have come (used by one step at a time)."""

    groups: list[list[list[int]]]
    tokens: int
    cancel: CancelToken  # set when the client left: the step ends after its current batch
    next_group: int = 0
    vectors: list[tuple[float, ...]] = field(default_factory=list)


class LlamaEmbeddingEngine:
    def __init__(self, config: EmbeddingModelConfig, model: LoadedModel,
                 report: OccupancyReport | None = None):
        self._config = config
        self._model = model
        threads = default_threads(config.threads)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = config.context_length
        params.n_batch = config.context_length
        params.n_ubatch = config.context_length  # a whole input must fit one ubatch
        params.n_seq_max = MAX_SEQUENCES
        params.n_threads = threads
        params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = POOLING[config.pooling]
        params.kv_unified = True
        self._context = llama_cpp.llama_init_from_model(model.handle, params)
        if self._context is None:
            raise EngineFailure(f"model {config.id}: llama.cpp could not create a context")
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._batch = TokenBatch(config.context_length)
        self._dimensions = int(llama_cpp.llama_model_n_embd(model.handle))
        # Every token of a text stands for at least one of its bytes and at most this many,
        # so a text of more characters than context x this cannot fit: refused untokenized.
        self._longest_piece = max((len(model.piece(token)) for token in range(model.n_vocab)),
                                  default=1) or 1
        self._worker = WorkerPool(config.id, workers=1, queue_limit=config.queue_limit,
                                  queue_timeout_s=config.queue_timeout_s,
                                  thread_name=f"embed-{config.id}", report=report)
        self._info = ModelInfo(id=config.id, kind="embedding",
                               context_length=config.context_length,
                               owned_by=config.owned_by, created=int(time.time()))

    @classmethod
    def load(cls, config: EmbeddingModelConfig,
             report: OccupancyReport | None = None) -> LlamaEmbeddingEngine:
        model = LoadedModel(config.path, config.gpu_layers)
        try:
            return cls(config, model, report)
        except BaseException:
            model.close()
            raise

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def occupancy(self) -> Occupancy:
        return self._worker.occupancy

    def warm_up(self) -> None:
        """A text through the tokenizer, then one decode of the largest batch requests share
        (MAX_SEQUENCES inputs, MAX_BATCH_TOKENS tokens together), so the first request pays
        no first-use costs.

        Measured (page faults per decode, the 2-core box): llama.cpp grows its output buffer
        to the most outputs a decode has had so far (every token is an output when pooling)
        and clears it, and touches its compute buffer's pages only as batches first need
        them. Warmed with "Hello" alone, the first 60-token request took ~6,400 page faults
        (25 MB, ~50 ms) that later ones did not; a batch one token larger than any before
        grows the buffer again, so the batch here is the full budget, exactly. An input over
        it (a decode of its own, up to the context) still grows the buffer once, a few percent
        of that decode's time.
        """
        cancel = CancelToken()
        self._embed_all([WARM_UP_TEXT], cancel)
        budget = min(MAX_BATCH_TOKENS, self._config.context_length)
        each = max(1, budget // MAX_SEQUENCES)
        sentence = self._model.tokenize(WARM_UP_TEXT, add_bos=False, special=False)
        filler = (sentence * (each // max(1, len(sentence)) + 1))[:each]
        self._embed_all([filler] * MAX_SEQUENCES, cancel)

    def close(self) -> None:
        self._worker.close(wait=True)
        self._batch.close()
        if self._context is not None:
            llama_cpp.llama_free(self._context)
            self._context = None
        self._model.close()

    async def embed(self, inputs: list[str] | list[list[int]],
                    owner: str | None = None) -> Embeddings:
        self._check(inputs)
        cancel = CancelToken()
        try:
            progress = await self._worker.run(owner, self._start, inputs, cancel)
            while progress.next_group < len(progress.groups):
                # A client that leaves cancels this await: no later step is started.
                progress = await self._worker.resume(owner, self._step, progress)
            return Embeddings(tuple(progress.vectors), progress.tokens)
        finally:
            cancel.cancel()  # the client left (or the work is over): stop tokenizing

    def _start(self, inputs: Sequence[str | list[int]], cancel: CancelToken) -> _Progress:
        """The first step (on the worker): the inputs tokenized, then batches embedded."""
        started = time.monotonic()
        token_lists = self._tokens(inputs, cancel)
        progress = _Progress(list(self._groups(token_lists)), sum(map(len, token_lists)), cancel)
        return self._step(progress, started)

    def _step(self, progress: _Progress, started: float | None = None) -> _Progress:
        """Batches embedded in order until the step has held the worker for STEP_S."""
        started = time.monotonic() if started is None else started
        while progress.next_group < len(progress.groups):
            progress.vectors.extend(self._embed_group(progress.groups[progress.next_group]))
            progress.next_group += 1
            if progress.cancel.cancelled or time.monotonic() - started >= STEP_S:
                break
        return progress

    def _too_long(self, index: int, length: str) -> InvalidRequest:
        limit = self._config.context_length
        return InvalidRequest(
            f"Invalid 'input[{index}]': this model's maximum context length is {limit} tokens, "
            f"however input[{index}] has {length}. Shorten it: inputs are never truncated.",
            param=f"input[{index}]", code="context_length_exceeded")

    def _too_many(self, total: int) -> InvalidRequest:
        return InvalidRequest(
            f"The inputs have {total} tokens together; model `{self._info.id}` takes at most "
            f"{self._config.max_request_tokens} tokens per request. Send fewer inputs per "
            "request.", param="input", code="max_tokens_per_request")

    def _check(self, inputs: Sequence[str | list[int]]) -> None:
        """What can be told before queueing, in time linear in the number of inputs."""
        limit = self._config.context_length
        ids = 0
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                if len(item) > limit * self._longest_piece:
                    raise self._too_long(index, f"{len(item)} characters, more than any "
                                                f"{limit} of its tokens can hold")
                continue
            if len(item) > limit:
                raise self._too_long(index, f"{len(item)} tokens")
            ids += len(item)
        if ids > self._config.max_request_tokens:
            raise self._too_many(ids)

    def _tokens(self, inputs: Sequence[str | list[int]], cancel: CancelToken) -> list[list[int]]:
        token_lists: list[list[int]] = []
        total = 0
        for index, item in enumerate(inputs):
            if cancel.cancelled:
                raise Stopped
            if isinstance(item, str):
                tokens = self._model.tokenize(item, add_bos=self._model.add_bos, special=False)
            else:
                tokens = item
                if tokens and (min(tokens) < 0 or max(tokens) >= self._model.n_vocab):
                    raise InvalidRequest(
                        f"Invalid 'input[{index}]': it holds token ids outside this model's "
                        f"vocabulary (0 to {self._model.n_vocab - 1}).", param=f"input[{index}]",
                        code="invalid_value")
            if not tokens:
                raise InvalidRequest(f"Invalid 'input[{index}]': it is empty.",
                                     param=f"input[{index}]", code="invalid_value")
            if len(tokens) > self._config.context_length:
                raise self._too_long(index, f"{len(tokens)} tokens")
            total += len(tokens)
            if total > self._config.max_request_tokens:
                raise self._too_many(total)
            token_lists.append(tokens)
        return token_lists

    def _embed_all(self, inputs: Sequence[str | list[int]], cancel: CancelToken) -> Embeddings:
        """A request's steps one after another on the calling thread (the warm-up, before
        serving)."""
        progress = self._start(inputs, cancel)
        while progress.next_group < len(progress.groups):
            progress = self._step(progress)
        return Embeddings(tuple(progress.vectors), progress.tokens)

    def _groups(self, token_lists: list[list[int]]) -> Iterator[list[list[int]]]:
        """The inputs in order, cut into the batches decoded together: at most MAX_SEQUENCES
        inputs and MAX_BATCH_TOKENS tokens (an input longer than that alone)."""
        start = 0
        while start < len(token_lists):
            group: list[list[int]] = []
            size = 0
            for tokens in token_lists[start:start + MAX_SEQUENCES]:
                if group and size + len(tokens) > min(MAX_BATCH_TOKENS, self._batch.capacity):
                    break
                group.append(tokens)
                size += len(tokens)
            yield group
            start += len(group)

    def _embed_group(self, group: list[list[int]]) -> list[tuple[float, ...]]:
        llama_cpp.llama_memory_clear(self._memory, True)
        self._batch.clear()
        for sequence, tokens in enumerate(group):
            for position, token in enumerate(tokens):
                # Pooling reads every token's output: left unmarked, llama.cpp marks them
                # itself and logs a warning on every decode.
                self._batch.add(token, position, sequence, True)
        status = llama_cpp.llama_decode(self._context, self._batch.handle)
        if status != 0:
            raise EngineFailure(f"llama_decode failed with status {status} on {self._info.id}")
        vectors = []
        for sequence in range(len(group)):
            pointer = llama_cpp.llama_get_embeddings_seq(self._context, sequence)
            if not pointer:
                raise EngineFailure(f"model {self._info.id} returned no pooled embedding")
            raw = [float(pointer[i]) for i in range(self._dimensions)]
            norm = math.sqrt(sum(v * v for v in raw)) or 1.0
            vectors.append(tuple(v / norm for v in raw))
        return vectors
