"""Log probabilities of generated tokens, read from the raw logits of a decode step.

They are the model's own distribution (before temperature, top-p or a grammar), which is what
OpenAI reports.
"""

from __future__ import annotations

import llama_cpp
import numpy as np

from appliance.engines.base import TokenChoice, TokenLogprob
from appliance.engines.llm.model import LoadedModel


def token_logprob(context: object, batch_index: int, model: LoadedModel, token: int,
                  alternatives: int) -> TokenLogprob:
    pointer = llama_cpp.llama_get_logits_ith(context, batch_index)
    logits = np.ctypeslib.as_array(pointer, shape=(model.n_vocab,)).astype(np.float64)
    peak = logits.max()
    normaliser = peak + np.log(np.exp(logits - peak).sum())
    top: tuple[TokenChoice, ...] = ()
    if alternatives > 0:
        best = np.argpartition(-logits, alternatives)[:alternatives]
        best = best[np.argsort(-logits[best], kind="stable")]
        top = tuple(_choice(model, int(t), float(logits[t] - normaliser)) for t in best)
    return TokenLogprob(_choice(model, token, float(logits[token] - normaliser)), top)


def _choice(model: LoadedModel, token: int, logprob: float) -> TokenChoice:
    piece = model.piece(token)
    return TokenChoice(piece.decode("utf-8", errors="replace"), logprob, tuple(piece))
