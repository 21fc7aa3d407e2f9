"""POST /v1/images/generations on the wire: the request body and its one translation into
ImageParams and the output options.

OpenAI's knobs map onto a diffusion model like this (README "Images" says the same):

- ``quality`` scales the model's default denoising steps: ``low`` half, ``auto`` /
  ``standard`` / ``medium`` as configured, ``high`` / ``hd`` twice, ``xhigh`` three times,
  ``max`` four times (at least one step).
- ``style`` moves the guidance scale: ``vivid`` (OpenAI's default) keeps the model's, and
  ``natural`` halves its distance above 1 (7.5 -> 4.25), for looser, less saturated images.
  A model that runs without guidance (scale <= 1, e.g. SD-Turbo) looks the same in both.
- The extensions ``steps`` and ``guidance`` set those numbers outright and win over
  ``quality`` and ``style``; ``seed`` makes a request repeatable; ``negative_prompt`` says
  what to steer away from.

Every field is bounded here (lengths, counts, ranges); what a request costs the model
(n x steps x size) is bounded by the engine, which knows the model's defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.engines.base import ImageDefaults, ImageEngine, ImageParams
from appliance.errors import InvalidRequest

MAX_IMAGES = 10
MAX_PROMPT_CHARS = 32_000  # OpenAI's limit for its GPT image models, the most lenient
MAX_NAME_CHARS = 256  # model, user, safety_identifier: names, never text to work on
MAX_STEPS = 150
MAX_GUIDANCE = 50.0
MAX_SEED = 2**64 - 1
QUALITY_STEP_FACTORS = {"low": 0.5, "auto": 1.0, "standard": 1.0, "medium": 1.0, "high": 2.0,
                        "hd": 2.0, "xhigh": 3.0, "max": 4.0}
# Requests that leave out `model` get OpenAI's default, which models.toml may alias.
DEFAULT_MODEL = "dall-e-2"
OutputFormat = Literal["png", "jpeg", "webp"]
ResponseFormat = Literal["url", "b64_json"]
# Matched whole (fullmatch): "$" would let a trailing newline through.
_SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES)] | None = None
    size: str | None = None
    quality: Literal["low", "auto", "standard", "medium", "high", "hd", "xhigh",
                     "max"] | None = None
    style: Literal["vivid", "natural"] | None = None
    response_format: ResponseFormat | None = None
    output_format: OutputFormat | None = None
    output_compression: Annotated[int, Field(ge=0, le=100)] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    moderation: Literal["low", "auto"] | None = None
    stream: bool | None = None
    partial_images: Annotated[int, Field(ge=0, le=3)] | None = None
    user: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    safety_identifier: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    # Extensions (diffusion knobs OpenAI does not have); documented in the README.
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    negative_prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)] | None = None
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | None = None
    guidance: Annotated[float, Field(ge=0, le=MAX_GUIDANCE)] | None = None


@dataclass(frozen=True)
class ImageOutput:
    """How the api hands the pixels back: the file format and where they go."""

    response_format: ResponseFormat
    file_format: OutputFormat
    compression: int  # 0-100; for png only the default (100) is allowed


def _invalid(param: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def check_unserved(body: ImageGenerationRequest) -> None:
    """OpenAI options this server cannot honour: a 400 naming them, never ignored."""
    if body.stream:
        raise _invalid("stream", "Streaming image generation (partial images) is not served; "
                                 "send 'stream': false or leave it out.")
    if body.partial_images:
        raise _invalid("partial_images", "Partial images come only with streaming, which is "
                                         "not served.")
    if body.background == "transparent":
        raise _invalid("background", "Transparent backgrounds are not served: the models make "
                                     "opaque RGB images. Use 'opaque' or 'auto'.")
    if getattr(body, "svg", None) is not None:
        raise _invalid("svg", "SVG output is not served.")


def output_of(body: ImageGenerationRequest) -> ImageOutput:
    file_format = body.output_format or "png"
    compression = 100 if body.output_compression is None else body.output_compression
    if file_format == "png" and compression != 100:
        raise _invalid("output_compression", "'output_compression' applies to jpeg and webp "
                                             "output; png is lossless.")
    return ImageOutput(body.response_format or "url", file_format, compression)


def parse_size(size: str | None, engine: ImageEngine) -> tuple[int, int]:
    """``auto`` (or nothing) is the model's first size; others must be sizes it makes."""
    if size is None or size == "auto":
        return engine.sizes[0]
    match = _SIZE.fullmatch(size)
    supported = ", ".join(f"{w}x{h}" for w, h in engine.sizes)
    if match is None:
        raise _invalid("size", f"Invalid value for 'size': {size!r} is not WIDTHxHEIGHT (e.g. "
                               f"'512x512') or 'auto'. Supported sizes: {supported}.")
    width, height = int(match[1]), int(match[2])
    if (width, height) not in engine.sizes:
        raise _invalid("size", f"Invalid value for 'size': {size} is not a size model "
                               f"{engine.info.id} makes. Supported sizes: {supported}.")
    return width, height


def steps_for(body: ImageGenerationRequest, defaults: ImageDefaults) -> int:
    if body.steps is not None:
        return body.steps
    factor = QUALITY_STEP_FACTORS[body.quality or "auto"]
    return max(1, round(defaults.steps * factor))


def guidance_for(body: ImageGenerationRequest, defaults: ImageDefaults) -> float | None:
    if body.guidance is not None:
        return body.guidance
    if defaults.guidance is None:
        if body.style == "natural":
            raise _invalid("style", "This model takes no guidance scale, so 'style' cannot "
                                    "change anything; leave it out or send 'vivid'.")
        return None
    if body.style == "natural" and defaults.guidance > 1:
        return 1 + (defaults.guidance - 1) / 2
    return defaults.guidance


def to_image_params(body: ImageGenerationRequest, engine: ImageEngine) -> ImageParams:
    width, height = parse_size(body.size, engine)
    return ImageParams(
        prompt=body.prompt,
        n=body.n or 1,
        width=width,
        height=height,
        steps=steps_for(body, engine.defaults),
        guidance=guidance_for(body, engine.defaults),
        seed=body.seed,
        negative_prompt=body.negative_prompt,
    )
