"""Request fields every text-generation resource shares (chat and legacy completions), their
one translation into the engine's Sampling, and the response pieces both send alike (the
system fingerprint, the token ``usage`` object).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from appliance.engines.base import Finish, Sampling, Usage
from appliance.errors import InvalidRequest

MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 16
MAX_TOP_K = 2**31 - 1  # llama.cpp takes an int32; any k past the vocabulary keeps every token
SYSTEM_FINGERPRINT = "fp_appliance"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class GenerationFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    # Extensions (llama.cpp samplers OpenAI does not have); documented in the README.
    top_k: Annotated[int, Field(ge=0, le=MAX_TOP_K)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    # Logits are divided by it in float32: below 0.01 they overflow and the draw is noise.
    repeat_penalty: Annotated[float, Field(ge=0.01, le=10)] | None = None

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


def check_stream_options(body: GenerationFields) -> None:
    if body.stream_options is not None and not body.stream:
        raise InvalidRequest("The 'stream_options' parameter is only allowed when 'stream' is "
                             "enabled.", param="stream_options", code="invalid_value")


def stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if len(stops) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences.",
                             param="stop", code="invalid_value")
    if any(not s for s in stops):
        raise InvalidRequest("'stop' sequences must not be empty.", param="stop",
                             code="invalid_value")
    return tuple(stops)


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI keys logit_bias by token id as a string; the engine checks ids against the vocab."""
    pairs: list[tuple[int, float]] = []
    for key, value in (bias or {}).items():
        # ASCII digits (str.isdigit() takes '²', which int() refuses), and no more than a
        # vocabulary's id has (int() refuses 4,300).
        digits = key.strip()
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 10):
            raise InvalidRequest(f"Invalid key in 'logit_bias': {key!r} is not a token id.",
                                 param="logit_bias", code="invalid_value")
        pairs.append((int(digits), value))
    return tuple(sorted(pairs))


def to_sampling(body: GenerationFields) -> Sampling:
    return Sampling(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repeat_penalty=body.repeat_penalty or 1.0,
        logit_bias=_logit_bias(body.logit_bias),
    )


def token_usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage`` object of a chat or legacy completion: its token counts (the
    reasoning tokens are among the completion tokens, as OpenAI counts them; the image tokens
    among the prompt tokens, and said only when the prompt had pictures)."""
    prompt_details: dict[str, int] = {"cached_tokens": usage.cached_tokens, "audio_tokens": 0}
    if usage.image_tokens:
        prompt_details["image_tokens"] = usage.image_tokens
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def total_token_usage(finishes: list[Finish]) -> Usage:
    """Every choice read the same prompt once; completion (and reasoning) tokens add up
    across choices."""
    first = min(finishes, key=lambda finish: finish.index).usage
    return Usage(first.prompt_tokens, sum(f.usage.completion_tokens for f in finishes),
                 first.cached_tokens, sum(f.usage.reasoning_tokens for f in finishes),
                 first.image_tokens)
