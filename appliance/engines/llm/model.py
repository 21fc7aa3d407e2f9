"""One GGUF model file loaded with llama.cpp: weights, vocabulary and metadata.

Owns the model handle and what only needs the model: tokenizing, turning tokens into bytes,
end-of-generation tokens, the vocabulary's special tokens and the chat template the GGUF
carries. Contexts (KV caches) are made from it by the scheduler.
"""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import llama_cpp
from llama_cpp import _internals
from llama_cpp import _logger as llama_cpp_logger

from appliance.config import GPU_LAYERS_ALL
from appliance.engines.llm.step_budget import DEFAULT_CPU_STEP_S, DEFAULT_GPU_STEP_S
from appliance.errors import InvalidRequest

# llama.cpp takes a layer count; "all" means more layers than any model has.
_ALL_LAYERS = 1 << 30
# What the tokenizer finds in text before anything else (llama-vocab.cpp's special cache).
_PARTITIONED = (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
                | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN)
# ...and of those, what it finds only when asked to parse special tokens.
_PARSED_AS_SPECIAL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN


@dataclass(frozen=True)
class SpecialToken:
    """A token the tokenizer matches as a whole wherever its text appears."""

    id: int
    text: str
    parsed_only_as_special: bool  # control/unknown: matched only when special=True
    lstrip: bool  # eats the whitespace before it
    rstrip: bool  # eats the whitespace after it


def encoded(text: str) -> bytes:
    """``text`` in UTF-8, as llama.cpp reads it. The wire refuses a lone surrogate (a JSON
    escape of half a UTF-16 pair); one can still come out of text a request nests, such as a
    tool call's arguments, JSON inside a string: the request's fault, not the engine's."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise InvalidRequest("The request's text holds a lone UTF-16 surrogate (a \\ud800-"
                             "\\udfff escape not part of a pair), which is not a Unicode "
                             "character. Send valid UTF-8 text.", code="invalid_value") from None


class LoadedModel:
    def __init__(self, path: Path, gpu_layers: int, vocab_only: bool = False):
        """``vocab_only``: the vocabulary and metadata without the weights (check-config
        reads what a model is without loading it)."""
        # llama.cpp prints every load detail to stderr unless told otherwise; keep errors only.
        llama_cpp_logger.set_verbose(False)
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = _ALL_LAYERS if gpu_layers == GPU_LAYERS_ALL else gpu_layers
        params.vocab_only = vocab_only
        self._model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        self.handle = self._model.model
        self.vocab = self._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.n_ctx_train = int(self._model.n_ctx_train())
        self.is_swa = int(llama_cpp.llama_model_n_swa(self.handle)) > 0
        self.add_bos = bool(self._model.add_bos_token())
        self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.bos_text = self.token_text(int(llama_cpp.llama_vocab_bos(self.vocab)))
        self.eos_text = self.token_text(int(llama_cpp.llama_vocab_eos(self.vocab)))
        self.metadata: dict[str, str] = dict(self._model.metadata())

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        """``special``: parse control tokens' text as those tokens; only for text the
        appliance wrote (a template, models.toml), never a request's (see prompt_tokens.py)."""
        data = encoded(text)
        # A token covers at least a byte, save BOS/EOS and SentencePiece's space prefixes: one
        # call nearly always suffices (llama-cpp-python's own tokenize often calls twice).
        room = len(data) + 8
        while True:
            tokens = (llama_cpp.llama_token * room)()
            count = int(llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, room,
                                                 add_bos, special))
            if count >= 0:
                return tokens[:count]
            if -count <= room:
                raise RuntimeError(f"llama_tokenize asked for {-count} tokens, given {room}")
            room = -count

    def special_tokens(self) -> list[SpecialToken]:
        """Every token the tokenizer matches by its text (control, user-defined, unknown)."""
        return list(self._vocabulary[0])

    @property
    def longest_piece(self) -> int:
        """Bytes of the longest token: a text of n bytes holds at least n / this many tokens."""
        return self._vocabulary[1]

    @cached_property
    def _vocabulary(self) -> tuple[tuple[SpecialToken, ...], int]:
        """One pass over the vocabulary (262k tokens for Gemma): its special tokens and the
        length of its longest piece."""
        found: list[SpecialToken] = []
        size = 256
        buffer = ctypes.create_string_buffer(size)
        longest = 1
        for token in range(self.n_vocab):
            written = int(llama_cpp.llama_token_to_piece(self.vocab, token, buffer, size, 0,
                                                         True))
            longest = max(longest, written if written >= 0 else len(self.piece(token, True)))
            attr = int(llama_cpp.llama_vocab_get_attr(self.vocab, token))
            if attr & _PARTITIONED:
                text = self.token_text(token)
                if text:
                    found.append(SpecialToken(
                        token, text, bool(attr & _PARSED_AS_SPECIAL),
                        bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP),
                        bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)))
        return tuple(found), longest

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
        try:
            # This llama.cpp build answers a grammar it cannot parse with a sampler that
            # constrains nothing. None of our grammars accepts an empty output, so a sampler
            # that lets the end of generation come first is one that failed to parse.
            end = int(llama_cpp.llama_vocab_eos(self.vocab))
            if end >= 0 and grammar_allows(sampler, end):
                raise InvalidRequest("The output constraint could not be compiled.",
                                     param="response_format", code="invalid_json_schema")
        finally:
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
            if -written <= size:  # would ask again for the same room, for ever
                raise RuntimeError(f"llama_token_to_piece failed for token {token}")
            size = -written

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return str(self._model.token_get_text(token))

    def close(self) -> None:
        self._model.close()  # type: ignore[no-untyped-call]


def grammar_allows(grammar: object, token: int) -> bool:
    """Whether a grammar sampler, in its current state, lets ``token`` come next."""
    candidate = (llama_cpp.llama_token_data * 1)()
    candidate[0].id = token  # type: ignore[assignment]
    candidate[0].logit = 0.0
    candidate[0].p = 0.0
    array = llama_cpp.llama_token_data_array(candidate, 1, -1, False)
    llama_cpp.llama_sampler_apply(grammar, ctypes.byref(array))
    return bool(math.isfinite(candidate[0].logit))


def default_threads(configured: int | None) -> int:
    return configured or os.cpu_count() or 1


def default_slots(gpu_layers: int) -> int:
    """Concurrent sequences when models.toml says "auto".

    On a GPU a decode step costs nearly the same for 1 or 16 sequences, so more slots is more
    throughput; on a CPU the step cost grows with the batch and 4 keeps streams responsive.
    """
    return 16 if on_gpu(gpu_layers) else 4


def on_gpu(gpu_layers: int) -> bool:
    """Whether a model loaded with these gpu_layers runs on a GPU."""
    return bool(llama_cpp.llama_supports_gpu_offload()) and gpu_layers != 0


def default_step_seconds(gpu_layers: int) -> float:
    """The step budget's target when models.toml says "auto" (see step_budget.py): a GPU
    decodes a step in a few milliseconds, so a stream there should never pause long; a CPU
    decode step alone takes tens of them."""
    return DEFAULT_GPU_STEP_S if on_gpu(gpu_layers) else DEFAULT_CPU_STEP_S
