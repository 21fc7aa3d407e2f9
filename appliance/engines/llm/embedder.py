"""An embedding model on llama.cpp: one pooled, unit-length vector per input.

Owns a context made for embeddings (pooling on, one sequence per input of a batch) and one
worker thread, so embedding work never runs on the event loop and never shares a context
with generation; requests wait for it at a ``FairGate`` (bounded, round-robin across keys).
Inputs longer than the context are refused, never silently truncated.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor

import llama_cpp

from appliance.config import ModelConfig
from appliance.engines.base import Embeddings, ModelInfo
from appliance.engines.fair_gate import FairGate, Occupancy, OccupancyReport
from appliance.engines.llm.batch import TokenBatch
from appliance.engines.llm.model import LoadedModel, default_threads
from appliance.errors import EngineFailure, InvalidRequest

POOLING = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
           "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}
MAX_SEQUENCES = 16  # inputs embedded together in one decode


class LlamaEmbeddingEngine:
    def __init__(self, config: ModelConfig, model: LoadedModel,
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
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{config.id}")
        self._gate = FairGate(config.id, slots=1, queue_limit=config.queue_limit,
                              queue_timeout_s=config.queue_timeout_s, report=report)
        self._info = ModelInfo(id=config.id, kind="embedding",
                               context_length=config.context_length,
                               owned_by=config.owned_by, created=int(time.time()))

    @classmethod
    def load(cls, config: ModelConfig,
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
        return self._gate.occupancy

    def warm_up(self) -> None:
        self._embed_all(["Hello"])

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._batch.close()
        if self._context is not None:
            llama_cpp.llama_free(self._context)
            self._context = None
        self._model.close()

    async def embed(self, inputs: list[str] | list[list[int]],
                    owner: str | None = None) -> Embeddings:
        async with self._gate.slot(owner):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._worker, self._embed_all, inputs)

    def _tokens(self, inputs: list[str] | list[list[int]]) -> list[list[int]]:
        token_lists: list[list[int]] = []
        items: list[str | list[int]] = list(inputs)
        for index, item in enumerate(items):
            tokens = (self._model.tokenize(item, add_bos=self._model.add_bos, special=False)
                      if isinstance(item, str) else item)
            if not tokens:
                raise InvalidRequest(f"Input {index} is empty.", param="input",
                                     code="invalid_value")
            if len(tokens) > self._config.context_length:
                raise InvalidRequest(
                    f"Input {index} is {len(tokens)} tokens long; this model takes at most "
                    f"{self._config.context_length}. Shorten it: inputs are never truncated.",
                    param="input", code="context_length_exceeded")
            if any(t < 0 or t >= self._model.n_vocab for t in tokens):
                raise InvalidRequest(f"Input {index} holds token ids outside the vocabulary.",
                                     param="input", code="invalid_value")
            token_lists.append(tokens)
        return token_lists

    def _embed_all(self, inputs: list[str] | list[list[int]]) -> Embeddings:
        token_lists = self._tokens(inputs)
        vectors: list[tuple[float, ...]] = []
        start = 0
        while start < len(token_lists):
            group: list[list[int]] = []
            size = 0
            for tokens in token_lists[start:start + MAX_SEQUENCES]:
                if group and size + len(tokens) > self._batch.capacity:
                    break
                group.append(tokens)
                size += len(tokens)
            vectors.extend(self._embed_group(group))
            start += len(group)
        return Embeddings(tuple(vectors), sum(len(t) for t in token_lists))

    def _embed_group(self, group: list[list[int]]) -> list[tuple[float, ...]]:
        llama_cpp.llama_memory_clear(self._memory, True)
        self._batch.clear()
        for sequence, tokens in enumerate(group):
            for position, token in enumerate(tokens):
                self._batch.add(token, position, sequence, position == len(tokens) - 1)
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
