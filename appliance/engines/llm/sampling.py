"""A llama.cpp sampler chain per request, built from the request's Sampling.

Order follows llama.cpp's common sampler: logit bias, penalties, then either greedy
(temperature 0) or top-k / top-p / min-p / temperature / seeded draw. Penalties see only the
generated tokens, which is what OpenAI's presence and frequency penalties mean.
"""

from __future__ import annotations

import ctypes
import logging
import random
from typing import Any

import llama_cpp
import numpy as np

from appliance.engines.base import Sampling
from appliance.engines.llm.model import LoadedModel, grammar_allows
from appliance.errors import EngineFailure, InvalidRequest

log = logging.getLogger("appliance.engines.llm")


# llama.cpp's llama_token_data, as numpy sees it: the candidate buffer is filled from the
# logits without a Python loop.
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


# Temperatures under this draw greedily: the temperature sampler divides float32 logits by
# it, and near 1e-38 they overflow to infinity (the softmax turned to NaN and the output to
# noise); well before that the distribution is all on the top token anyway.
GREEDY_BELOW = 1e-4


class SamplerChain:
    """The request's samplers, and its grammar kept beside them rather than in the chain.

    With a grammar, each step first samples freely and asks the grammar about that one token
    (the common case: the model already follows the format); only when the grammar refuses
    it is the grammar applied to the whole vocabulary and the token drawn again. That is
    llama.cpp's own strategy, and what keeps constrained decoding cheap on large vocabularies
    (Gemma's is 262k tokens).
    """

    def __init__(self, sampling: Sampling, model: LoadedModel, penalty_window: int):
        self._sampling = sampling
        self._model = model
        self._penalty_window = penalty_window
        lazy = sampling.grammar is not None and sampling.grammar_trigger is not None
        # A lazy grammar waits for its trigger in the output (see _watch); until then the
        # output seen so far is kept to find the trigger in.
        self._trigger = (sampling.grammar_trigger or "").encode() if lazy else b""
        self._seen = bytearray()
        self._candidates: np.ndarray[Any, np.dtype[np.void]] | None = None
        self._grammar: object = None
        self.handle: object = self._build()
        if sampling.grammar is not None and not lazy:
            self._grammar = self._new_grammar()

    def _new_grammar(self) -> object:
        grammar = llama_cpp.llama_sampler_init_grammar(
            self._model.vocab, (self._sampling.grammar or "").encode(), b"root")
        if grammar is None:
            self.close()
            raise InvalidRequest("The output constraint could not be compiled.",
                                 param="response_format")
        return grammar

    def _build(self) -> object:
        handle = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if handle is None:
            raise EngineFailure("llama.cpp could not create a sampler chain.")
        try:
            self._fill(handle)
        except BaseException:
            llama_cpp.llama_sampler_free(handle)  # the chain owns the samplers added so far
            raise
        return handle

    def _fill(self, handle: object) -> None:
        sampling = self._sampling

        def add(sampler: object) -> None:
            # A NULL sampler in a chain would crash the decode thread at the first draw.
            if sampler is None:
                raise EngineFailure("llama.cpp could not create a sampler for this request.")
            llama_cpp.llama_sampler_chain_add(handle, sampler)

        if sampling.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(sampling.logit_bias))()
            for i, (token, bias) in enumerate(sampling.logit_bias):
                biases[i].token = token  # type: ignore[assignment]
                biases[i].bias = bias
            add(llama_cpp.llama_sampler_init_logit_bias(self._model.n_vocab, len(biases),
                                                        biases))
        if sampling.presence_penalty or sampling.frequency_penalty or \
                sampling.repeat_penalty != 1.0:
            # The chain accepts only sampled tokens, never the prompt: the counts are of
            # generated tokens, as OpenAI defines presence and frequency penalties.
            add(llama_cpp.llama_sampler_init_penalties(
                self._model.n_vocab, self._penalty_window, sampling.repeat_penalty,
                sampling.frequency_penalty, sampling.presence_penalty))
        if sampling.temperature < GREEDY_BELOW:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if sampling.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, context: object, batch_index: int) -> int:
        """Samples from the logits at ``batch_index`` and records the token in the chain."""
        if self._grammar is None:
            token = int(llama_cpp.llama_sampler_sample(self.handle, context, batch_index))
            if self._trigger:
                self._watch(token)
            return token
        token = self._draw(context, batch_index, constrained=False)
        if not grammar_allows(self._grammar, token):
            token = self._draw(context, batch_index, constrained=True)
            if not grammar_allows(self._grammar, token):
                # Nothing the model can write fits (the constraint wants a character no token
                # holds, or biases shut out every token it allows): accepting the draw would
                # abort the whole process inside llama.cpp.
                raise InvalidRequest(
                    "The output constraint allows no token this model can write at this "
                    "point of the answer, so it cannot be met. Check the schema's patterns, "
                    "const and enum values, and any logit_bias.", code="unsupported_schema")
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self.handle, token)
        return token

    def _draw(self, context: object, batch_index: int, constrained: bool) -> int:
        n_vocab = self._model.n_vocab
        if self._candidates is None:
            self._candidates = np.zeros(n_vocab, dtype=TOKEN_DATA)
            self._candidates["id"] = np.arange(n_vocab, dtype=np.int32)
        candidates = self._candidates
        logits = llama_cpp.llama_get_logits_ith(context, batch_index)
        candidates["logit"] = np.ctypeslib.as_array(logits, shape=(n_vocab,))
        candidates["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), n_vocab, -1,
            False)
        if constrained:
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self.handle, ctypes.byref(array))
        # Samplers may point ``data`` elsewhere (sorted copies); read through the struct.
        return int(array.data[array.selected].id)

    def _watch(self, token: int) -> None:
        """Arms the lazy grammar once its trigger shows up in the output."""
        self._watch_bytes(self._model.piece(token, special=True))

    def _watch_bytes(self, data: bytes) -> None:
        self._seen += data
        at = self._seen.find(self._trigger)
        if at < 0:
            del self._seen[: max(0, len(self._seen) - len(self._trigger))]
            return
        self._trigger = b""
        constrained = bytes(self._seen[at:]).decode(errors="replace")
        grammar = self._new_grammar()
        # The grammar reads the output from the trigger on; the token that completed the
        # trigger may carry more text, which the grammar must accept too. If it cannot, the
        # model left the format on its own and the rest stays free (the parser then gives
        # the text back as content), rather than failing the request.
        if self._read_into(grammar, constrained):
            self._grammar = grammar
        else:
            log.debug("lazy grammar not armed: output left the tool-call format")
            llama_cpp.llama_sampler_free(grammar)

    def _read_into(self, grammar: object, text: str) -> bool:
        """Feeds text already written to a grammar; False if the grammar refuses it."""
        for piece_token in self._model.tokenize(text, add_bos=False, special=False):
            if not grammar_allows(grammar, piece_token):
                return False
            llama_cpp.llama_sampler_accept(grammar, piece_token)
        return True

    def prime(self, answer: str) -> bool:
        """This sampler takes over a reasoning model's choice as its answer begins (the
        grammar starts after thinking), ``answer`` being the answer's text so far: a lazy
        grammar looks for its trigger in it, a grammar from the start reads it. False: that
        grammar refuses the text (the model closed its thinking and wrote on in one token,
        before the grammar could hold it); the grammar then starts afresh after it, and the
        caller keeps that text out of the answer, so the answer still matches."""
        if not answer:
            return True
        if self._trigger:
            self._watch_bytes(answer.encode())
            return True
        if self._grammar is None or self._read_into(self._grammar, answer):
            return True
        log.debug("the answer's first text left the format: kept out of the answer")
        llama_cpp.llama_sampler_free(self._grammar)
        self._grammar = None
        self._grammar = self._new_grammar()
        return False

    def close(self) -> None:
        if self.handle is not None:
            llama_cpp.llama_sampler_free(self.handle)
            self.handle = None
        if self._grammar is not None:
            llama_cpp.llama_sampler_free(self._grammar)
            self._grammar = None
