"""A chat model's multimodal projector (an mmproj GGUF) on libmtmd's low-level functions.

Owns the mtmd context and what only it does: turning one decoded picture into the tokens it
stands for, and evaluating an image chunk into a KV sequence of the model's context.

Tokenizing (the prompt threads): ``mtmd_tokenize`` on the default media marker alone with one
bitmap. The chunks it returns are text (the begin/end-of-image tokens some projectors add,
real token ids) and image chunks; each image chunk becomes a run of placeholder ids
(prompt_images.py) keyed by the picture's content hash and the chunk's index, and is kept
(an owned copy) until the decode thread evaluates it or the request ends. The chunk list and
the bitmap are freed before tokenizing returns. Several prompt threads may tokenize while the
decode thread encodes, as llama-server's HTTP threads do.

Evaluating (the decode thread): ``mtmd_helper_eval_chunk_single`` encodes the chunk, then
decodes its embeddings into the request's own sequence at the given position, in batches of
the scheduler's size; for a chunk that needs non-causal attention (Gemma 3) it switches the
context to non-causal for those batches and back. Only models whose image positions are one
per token are served: a projector that needs M-RoPE positions (the Qwen2-VL family) or whose
chunks take fewer positions than tokens is refused at boot, since the scheduler's slots count
one position per token.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
from llama_cpp import _logger as llama_cpp_logger
from llama_cpp import mtmd_cpp

from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.pictures import Picture
from appliance.engines.llm.prompt_images import placeholder_run
from appliance.errors import ConfigError, EngineFailure, InvalidRequest

log = logging.getLogger("appliance.engines.llm")


@dataclass(frozen=True)
class PictureTokens:
    """One picture as prompt tokens: real ids and placeholder runs, and each run's chunk at
    its offset in ``tokens``."""

    tokens: list[int]
    runs: list[tuple[int, ImageChunk]]

    def close(self) -> None:
        for _, chunk in self.runs:
            chunk.close()


class ImageChunk:
    """An owned mtmd image chunk: evaluated once into a sequence, freed once."""

    def __init__(self, projector: Projector, handle: int, tokens: int):
        self._projector = projector
        self._handle: int | None = handle
        self._tokens = tokens

    @property
    def tokens(self) -> int:
        return self._tokens

    def evaluate(self, context: object, sequence: int, position: int) -> None:
        if self._handle is None:
            raise EngineFailure("An image chunk was evaluated after it was freed.")
        self._projector.evaluate(self._handle, context, sequence, position, self._tokens)

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            self._projector.free_chunk(handle)


class Projector:
    def __init__(self, path: Path, model: LoadedModel, *, use_gpu: bool, threads: int,
                 batch_size: int, model_id: str):
        """Loads the projector for ``model`` (its hidden size must match the projector's
        output: libmtmd refuses otherwise). ``batch_size``: the context's n_batch, which
        the embeddings are decoded in."""
        _quiet()
        caps = mtmd_cpp.mtmd_get_cap_from_file(str(path).encode())
        if not caps.inp_vision:
            takes = "audio only" if caps.inp_audio else "no input libmtmd can read"
            raise ConfigError(f"model {model_id!r}: the projector {path.name} takes {takes}; "
                              "mmproj must be a vision projector")
        params = mtmd_cpp.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = True  # its first encode's costs at boot, not on a request
        self._model_id = model_id
        self._batch_size = batch_size
        self._live = 0  # chunks made and not yet freed (the leak check counts them)
        self._live_lock = threading.Lock()  # made in the prompt threads, freed in the decode one
        handle = mtmd_cpp.mtmd_init_from_file(str(path).encode(), model.handle, params)
        if not handle:
            raise ConfigError(f"model {model_id!r}: libmtmd could not load the projector "
                              f"{path} for {model.metadata.get('general.name', 'this model')} "
                              "(its output width must be the model's hidden size)")
        self._handle: int | None = handle
        try:
            if mtmd_cpp.mtmd_decode_use_mrope(handle):
                raise ConfigError(
                    f"model {model_id!r}: the projector {path.name} needs M-RoPE positions "
                    "(the Qwen2-VL family), which this engine does not give; use a projector "
                    "with one position per image token (LLaVA, Gemma 3, SmolVLM, ...)")
            self._marker = mtmd_cpp.mtmd_default_marker()
        except BaseException:
            self.close()
            raise

    @property
    def live_chunks(self) -> int:
        """Image chunks held now (by queued or running requests)."""
        return self._live

    def tokenize(self, picture: Picture) -> PictureTokens:
        """The picture's tokens (see the module docstring). Raises InvalidRequest for a
        picture the projector cannot take."""
        handle = self._open()
        pixels = (ctypes.c_uint8 * len(picture.rgb)).from_buffer_copy(picture.rgb)
        bitmap = mtmd_cpp.mtmd_bitmap_init(picture.width, picture.height, pixels)
        if not bitmap:
            raise EngineFailure("libmtmd could not make a bitmap of the picture.")
        chunks = mtmd_cpp.mtmd_input_chunks_init()
        runs: list[tuple[int, ImageChunk]] = []
        try:
            text = mtmd_cpp.mtmd_input_text()
            text.text = self._marker
            text.text_len = len(self._marker)
            text.add_special = False
            text.parse_special = True
            bitmaps = (mtmd_cpp.mtmd_bitmap_p_ctypes * 1)(bitmap)
            status = mtmd_cpp.mtmd_tokenize(handle, chunks, ctypes.byref(text), bitmaps, 1)
            if status != 0:
                raise InvalidRequest(f"The model's projector could not take this picture "
                                     f"(mtmd_tokenize returned {status}).", param="messages",
                                     code="invalid_image")
            tokens: list[int] = []
            digest = picture.digest
            for index in range(mtmd_cpp.mtmd_input_chunks_size(chunks)):
                chunk = mtmd_cpp.mtmd_input_chunks_get(chunks, index)
                kind = mtmd_cpp.mtmd_input_chunk_get_type(chunk)
                if kind == mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    count = ctypes.c_size_t(0)
                    ids = mtmd_cpp.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                    tokens += [int(ids[i]) for i in range(count.value)]
                    continue
                if kind != mtmd_cpp.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    raise InvalidRequest("The model's projector made audio of a picture.",
                                         param="messages", code="invalid_image")
                runs.append((len(tokens), self._own(chunk)))
                size = runs[-1][1].tokens
                tokens += placeholder_run(digest + index.to_bytes(4, "big"), size)
            return PictureTokens(tokens, runs)
        except BaseException:
            for _, owned in runs:
                owned.close()
            raise
        finally:
            mtmd_cpp.mtmd_input_chunks_free(chunks)
            mtmd_cpp.mtmd_bitmap_free(bitmap)

    def _own(self, chunk: int) -> ImageChunk:
        """A copy of a chunk of the list, owned until freed; checked to take one position per
        token, which the scheduler counts on."""
        tokens = int(mtmd_cpp.mtmd_input_chunk_get_n_tokens(chunk))
        positions = int(mtmd_cpp.mtmd_input_chunk_get_n_pos(chunk))
        if positions != tokens:
            raise EngineFailure(f"model {self._model_id}: an image chunk takes {positions} "
                                f"positions for {tokens} tokens; this engine gives one "
                                "position per token")
        if tokens > self._batch_size and mtmd_cpp.mtmd_decode_use_non_causal(self._open(),
                                                                              chunk):
            # Non-causal attention over an image needs all of it in one batch.
            raise EngineFailure(f"model {self._model_id}: an image of {tokens} tokens needs "
                                f"non-causal attention over a batch of {self._batch_size}")
        copy = mtmd_cpp.mtmd_input_chunk_copy(chunk)
        if not copy:
            raise EngineFailure("libmtmd could not copy an image chunk.")
        with self._live_lock:
            self._live += 1
        return ImageChunk(self, copy, tokens)

    def evaluate(self, chunk: int, context: object, sequence: int, position: int,
                 tokens: int) -> None:
        """Encodes an image chunk and decodes its embeddings into ``sequence`` from
        ``position`` on (the decode thread only)."""
        reached = ctypes.c_int32(0)  # a llama_pos
        status = mtmd_cpp.mtmd_helper_eval_chunk_single(
            self._open(), context, chunk, position, sequence, self._batch_size, False,
            ctypes.byref(reached))
        if status != 0:
            raise EngineFailure(f"model {self._model_id}: evaluating an image failed "
                                f"(status {status})")
        if reached.value != position + tokens:
            raise EngineFailure(f"model {self._model_id}: an image of {tokens} tokens moved "
                                f"the position from {position} to {reached.value}")

    def free_chunk(self, chunk: int) -> None:
        mtmd_cpp.mtmd_input_chunk_free(chunk)
        with self._live_lock:
            self._live -= 1

    def _open(self) -> int:
        if self._handle is None:
            raise EngineFailure(f"model {self._model_id}: the projector is closed")
        return self._handle

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            mtmd_cpp.mtmd_free(handle)


def projector_on_gpu(gpu_layers: int) -> bool:
    """Whether the projector goes on the GPU: when the model's layers do (llama.cpp built
    with GPU offload, and gpu_layers not 0)."""
    return bool(llama_cpp.llama_supports_gpu_offload()) and gpu_layers != 0


def describe_projector(path: Path) -> str:
    """What check-config says of a projector, read from its file without loading it."""
    _quiet()
    caps = mtmd_cpp.mtmd_get_cap_from_file(str(path).encode())
    takes = [name for name, has in (("images", caps.inp_vision), ("audio", caps.inp_audio))
             if has]
    return f"projector {path.name}: takes {' and '.join(takes) or 'nothing libmtmd reads'}"


def _quiet() -> None:
    """libmtmd logs every load detail to stderr unless routed through llama-cpp-python's
    logger, which keeps errors only (model.py sets it so)."""
    llama_cpp_logger.set_verbose(False)
    mtmd_cpp.mtmd_log_set(llama_cpp_logger.llama_log_callback, ctypes.c_void_p(0))
    mtmd_cpp.mtmd_helper_log_set(llama_cpp_logger.llama_log_callback, ctypes.c_void_p(0))
