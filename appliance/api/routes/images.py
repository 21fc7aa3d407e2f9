"""POST /v1/images/generations: OpenAI's ImagesResponse, with base64 images or URLs.

The body is validated and translated (``wire/images``) before anything is queued; the engine
works off the event loop; encoding and file writes run in a worker thread. A client that
leaves while its images are being made stops the work at the next denoising step (the row
says ``cancelled``, not charged). /v1/images/edits and /v1/images/variations answer a 400
saying they are not served. GET /files/images/{name} serves the files behind ``url`` responses
(``image_files``): outside /v1, so fetching a URL takes no key.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.bounds import LABELS, check_labels
from appliance.api.image_files import ImageFiles
from appliance.api.routes.engine_call import gone_is_499, note_of, owned, watched
from appliance.api.services import Services
from appliance.api.wire.images import (
    DEFAULT_MODEL,
    ImageGenerationRequest,
    ImageOutput,
    check_unserved,
    output_of,
    to_image_params,
)
from appliance.api.wire.images_encoding import MEDIA_TYPES, encode
from appliance.api.wire.validation import parse_json
from appliance.engines.base import IMAGE, CancelToken, ImageEngine, ImageResult
from appliance.errors import InvalidRequest, ModelNotFound, NotFound

IMAGE_FILE_ROUTE = "image_file"
IMAGE_LABELS = (*LABELS, "safety_identifier")


def _engine(services: Services, model: str | None) -> ImageEngine:
    if model is not None:
        return services.catalog.get(IMAGE, model)
    try:
        return services.catalog.get(IMAGE, DEFAULT_MODEL)
    except ModelNotFound:
        raise InvalidRequest("You must provide a model parameter (no image model here is "
                             f"named `{DEFAULT_MODEL}`, OpenAI's default).", param="model",
                             code="missing_required_parameter") from None


def _usage(prompt_tokens: int) -> dict[str, Any]:
    # Images are priced per request here, not per token: output tokens are 0.
    return {"input_tokens": prompt_tokens, "output_tokens": 0, "total_tokens": prompt_tokens,
            "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0}}


@gone_is_499
async def create_image(request: Request) -> Response:
    services: Services = request.app.state.services
    note = note_of(request)
    bounds = services.bounds
    body = await parse_json(request, ImageGenerationRequest, bounds.max_body_bytes,
                            lambda data: check_labels(data, bounds, IMAGE_LABELS))
    engine = _engine(services, body.model)
    note.model = engine.info.id
    check_unserved(body)
    output = output_of(body)
    files = services.image_files
    if output.response_format == "url" and files is None:
        raise InvalidRequest("This server keeps no image files: ask for "
                             "'response_format': 'b64_json'.", param="response_format",
                             code="invalid_value")
    params = owned(to_image_params(body, engine), note)
    cancel = CancelToken()
    result = await watched(request, engine.generate(params, cancel), cancel)
    note.prompt_tokens = result.prompt_tokens
    if files is not None and output.response_format == "url":
        names = await anyio.to_thread.run_sync(_store, result, output, files)
        # Never request.url_for: it builds the URL from the client's Host header.
        data = [{"url": files.url(request.scope, request.app.url_path_for(
            IMAGE_FILE_ROUTE, name=name))} for name in names]
    else:
        data = [{"b64_json": text}
                for text in await anyio.to_thread.run_sync(_inline, result, output)]
    note.images = len(data)
    return JSONResponse({"created": int(time.time()), "data": data,
                         "output_format": output.file_format,
                         "usage": _usage(result.prompt_tokens)})


def _inline(result: ImageResult, output: ImageOutput) -> list[str]:
    return [base64.b64encode(encode(image, output.file_format, output.compression)).decode()
            for image in result.images]


def _store(result: ImageResult, output: ImageOutput, files: ImageFiles) -> list[str]:
    """Saves every image; returns the file names, the last part of their URLs."""
    return [files.save(encode(image, output.file_format, output.compression),
                       output.file_format) for image in result.images]


async def image_file(request: Request) -> Response:
    services: Services = request.app.state.services
    files = services.image_files
    name: str = request.path_params["name"]
    stored = None if files is None else await anyio.to_thread.run_sync(files.read, name)
    if stored is None:
        raise NotFound("This image does not exist or its URL has expired.")
    return Response(stored.content, media_type=MEDIA_TYPES[stored.extension], headers={
        "cache-control": f"private, max-age={int(stored.seconds_left)}, immutable"})


async def not_served(request: Request) -> Response:
    """Edits and variations need image-to-image and inpainting pipelines; none is served."""
    what = "Image edits" if request.url.path.endswith("/edits") else "Image variations"
    raise InvalidRequest(f"{what} are not served by this appliance: only "
                         "POST /v1/images/generations is.", param="image",
                         code="unsupported_endpoint")
