"""A llama.cpp sampler chain per request, built from the request's Sampling.

Order follows llama.cpp's common sampler: logit bias, penalties, then either greedy
(temperature 0) or top-k / top-p / min-p / temperature / seeded draw. Penalties see only the
generated tokens, which is what OpenAI's presence and frequency penalties mean.
"""

from __future__ import annotations

import random

import llama_cpp

from appliance.engines.base import Sampling
from appliance.engines.llm.model import LoadedModel
from appliance.errors import InvalidRequest


class SamplerChain:
    def __init__(self, sampling: Sampling, model: LoadedModel, penalty_window: int):
        self.handle = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params())
        n_vocab = model.n_vocab
        if sampling.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                model.vocab, sampling.grammar.encode(), b"root")
            if grammar is None:
                self.close()
                raise InvalidRequest("The output constraint could not be compiled.",
                                     param="response_format")
            self._add(grammar)
        if sampling.logit_bias:
            biases = (llama_cpp.llama_logit_bias * len(sampling.logit_bias))()
            for i, (token, bias) in enumerate(sampling.logit_bias):
                biases[i].token = token  # type: ignore[assignment]
                biases[i].bias = bias
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(biases), biases))
        if sampling.presence_penalty or sampling.frequency_penalty or \
                sampling.repeat_penalty != 1.0:
            self._add(llama_cpp.llama_sampler_init_penalties(
                penalty_window, sampling.repeat_penalty, sampling.frequency_penalty,
                sampling.presence_penalty))
        if sampling.temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        if sampling.top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(sampling.top_k))
        if sampling.top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
        if sampling.min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(sampling.temperature))
        seed = sampling.seed if sampling.seed is not None else random.getrandbits(32)
        self._add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def _add(self, sampler: object) -> None:
        llama_cpp.llama_sampler_chain_add(self.handle, sampler)

    def sample(self, context: object, batch_index: int) -> int:
        """Samples from the logits at ``batch_index`` and records the token in the chain."""
        return int(llama_cpp.llama_sampler_sample(self.handle, context, batch_index))

    def close(self) -> None:
        if self.handle is not None:
            llama_cpp.llama_sampler_free(self.handle)
            self.handle = None
