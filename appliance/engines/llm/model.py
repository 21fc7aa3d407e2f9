"""One GGUF model file loaded with llama.cpp: weights, vocabulary and metadata.

Owns the model handle and what only needs the model: tokenizing, turning tokens into bytes,
end-of-generation tokens and the chat template the GGUF carries. Contexts (KV caches) are made
from it by the scheduler.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import llama_cpp
from llama_cpp import _internals
from llama_cpp import _logger as llama_cpp_logger

from appliance.config import GPU_LAYERS_ALL
from appliance.errors import InvalidRequest

# llama.cpp takes a layer count; "all" means more layers than any model has.
_ALL_LAYERS = 1 << 30


class LoadedModel:
    def __init__(self, path: Path, gpu_layers: int):
        # llama.cpp prints every load detail to stderr unless told otherwise; keep errors only.
        llama_cpp_logger.set_verbose(False)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = _ALL_LAYERS if gpu_layers == GPU_LAYERS_ALL else gpu_layers
        self._model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        self.handle = self._model.model
        self.vocab = self._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(self._model.n_ctx_train())
        self.is_swa = int(llama_cpp.llama_model_n_swa(self.handle)) > 0
        self.add_bos = bool(self._model.add_bos_token())
        self.bos_text = self.token_text(int(llama_cpp.llama_vocab_bos(self.vocab)))
        self.eos_text = self.token_text(int(llama_cpp.llama_vocab_eos(self.vocab)))
        self.metadata: dict[str, str] = dict(self._model.metadata())

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        return list(self._model.tokenize(text.encode(), add_bos=add_bos, special=special))

    def tokenize_prompt(self, text: str) -> list[int]:
        """A rendered chat prompt: special tokens parsed, BOS added once whoever writes it."""
        if self.add_bos and self.bos_text and text.startswith(self.bos_text):
            text = text[len(self.bos_text):]
        return self.tokenize(text, add_bos=self.add_bos)

    def single_tokens(self, texts: tuple[str, ...]) -> frozenset[int]:
        """The texts that are exactly one token (e.g. a special end-of-turn marker)."""
        found: set[int] = set()
        for text in texts:
            ids = self.tokenize(text, add_bos=False)
            if len(ids) == 1:
                found.add(ids[0])
        return frozenset(found)

    def check_grammar(self, grammar: str) -> None:
        """Compiles a GBNF grammar once, so a broken one is a 400 before any work starts."""
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if sampler is None:
            raise InvalidRequest("The output constraint could not be compiled.",
                                 param="response_format")
        llama_cpp.llama_sampler_free(sampler)

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int, special: bool = False) -> bytes:
        """The token's bytes; control tokens are empty unless ``special``."""
        size = 64
        while True:
            buffer = ctypes.create_string_buffer(size)
            written = llama_cpp.llama_token_to_piece(self.vocab, token, buffer, size, 0,
                                                     special)
            if written >= 0:
                return buffer.raw[:written]
            size = -written

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return str(self._model.token_get_text(token))

    def close(self) -> None:
        self._model.close()  # type: ignore[no-untyped-call]


def default_threads(configured: int | None) -> int:
    return configured or os.cpu_count() or 1


def default_slots(gpu_layers: int) -> int:
    """Concurrent sequences when models.toml says "auto".

    On a GPU a decode step costs nearly the same for 1 or 16 sequences, so more slots is more
    throughput; on a CPU the step cost grows with the batch and 4 keeps streams responsive.
    """
    on_gpu = bool(llama_cpp.llama_supports_gpu_offload()) and gpu_layers != 0
    return 16 if on_gpu else 4
