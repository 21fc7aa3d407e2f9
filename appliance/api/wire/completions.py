"""POST /v1/completions on the wire: the legacy request body and its one translation into
ChatParams, one per prompt.

Refused by name: ``suffix`` (no shipped model can fill in the middle), ``best_of`` above 1,
``logprobs`` outside 0-5 or with ``echo`` (no prompt logprobs), ``echo`` on token-id prompts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from pydantic import Field

from appliance.api.bounds import RequestBounds
from appliance.api.wire.generation import GenerationFields, check_stream_options, stops, to_sampling
from appliance.api.wire.generation_bounds import check_choice_tokens
from appliance.api.wire.inputs import texts_or_token_lists
from appliance.engines.base import ChatParams
from appliance.errors import InvalidRequest

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
MAX_LOGPROBS = 5  # OpenAI's limit for this endpoint


class CompletionRequest(GenerationFields):
    prompt: str | list[Any]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


def _refuse(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"'{param}' {why}.", param=param, code="unsupported_parameter")


def to_completion_params(body: CompletionRequest, bounds: RequestBounds) -> list[ChatParams]:
    """The engine parameters of each prompt (the route sets the owner)."""
    if body.suffix:
        raise _refuse("suffix", "needs a model that can fill in the middle; none is served")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
        raise InvalidRequest(f"Invalid value for 'logprobs': it must be between 0 and "
                             f"{MAX_LOGPROBS}.", param="logprobs", code="invalid_value")
    if body.logprobs is not None and body.echo:
        raise _refuse("logprobs", "with 'echo' would need the prompt's logprobs, which this "
                      "server does not compute")
    if body.best_of not in (None, 1):
        raise _refuse("best_of", "above 1 is not supported by this server")
    check_stream_options(body)
    # check_completion bounded the prompts and each prompt's token ids already.
    prompts = texts_or_token_lists(body.prompt, "prompt", bounds.max_prompts,
                                   allow_empty_text=True)
    if body.echo and not isinstance(prompts[0], str):
        raise _refuse("echo", "works with text prompts only on this server")
    # Every prompt gets n choices: the tokens they may ask for add up across both.
    check_choice_tokens(len(prompts) * (body.n or 1), body.max_tokens or DEFAULT_MAX_TOKENS,
                        bounds, "n" if len(prompts) == 1 else "prompt")
    base = ChatParams(messages=(), max_tokens=body.max_tokens or DEFAULT_MAX_TOKENS,
                      stop=stops(body.stop), n=body.n or 1,
                      sampling=replace(to_sampling(body), logprobs=body.logprobs))
    return [replace(base, prompt=p if isinstance(p, str) else tuple(p)) for p in prompts]
