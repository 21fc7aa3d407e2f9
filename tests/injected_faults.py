"""Samplers that fail on purpose, for the tests of "an engine error fails only its request".

A request is marked by its seed: ``FAILS_AT_SETUP`` makes building its sampler raise (as a
binding whose signature changed did), ``FAILS_MID_STREAM`` makes its ``FAIL_AT``-th draw raise.
Every other request gets the real sampler chain.
"""

from __future__ import annotations

from appliance.engines.base import Sampling
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.sampling import SamplerChain
from appliance.engines.llm.scheduler import Sampler

FAILS_AT_SETUP = 101
FAILS_MID_STREAM = 102
FAIL_AT = 3


class FailingDraws:
    """A real sampler that raises on its ``fail_at``-th draw."""

    def __init__(self, inner: SamplerChain, fail_at: int):
        self._inner = inner
        self._left = fail_at

    def sample(self, context: object, batch_index: int) -> int:
        self._left -= 1
        if self._left == 0:
            raise RuntimeError("injected sampling failure")
        return self._inner.sample(context, batch_index)

    def close(self) -> None:
        self._inner.close()


def injected_samplers(sampling: Sampling, model: LoadedModel, window: int) -> Sampler:
    """The scheduler's ``samplers`` factory, with the failures the seeds ask for."""
    if sampling.seed == FAILS_AT_SETUP:
        raise TypeError("injected: this function takes 5 positional arguments but 4 were given")
    chain = SamplerChain(sampling, model, window)
    return FailingDraws(chain, FAIL_AT) if sampling.seed == FAILS_MID_STREAM else chain
