"""POST /v1/embeddings: OpenAI's embedding list, float or base64 (little-endian float32).

The Python SDK asks for base64 whenever numpy is installed and the JS SDK always does, so
both encodings must be exact. ``dimensions`` truncates and re-normalises, or is a 400 when
the model has fewer. Over-long inputs are a 400, never truncated (the engine counts tokens);
more than ``max_embedding_inputs`` inputs are a 400 before the engine sees them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.bounds import check_labels
from appliance.api.routes.engine_call import gone_is_499, note_of, watched
from appliance.api.services import Services
from appliance.api.wire.embeddings import EmbeddingRequest, embedding_json
from appliance.api.wire.inputs import texts_or_token_lists
from appliance.api.wire.validation import parse_json
from appliance.engines.base import EMBEDDING
from appliance.errors import InvalidRequest


@gone_is_499
async def create_embeddings(request: Request) -> Response:
    services: Services = request.app.state.services
    note = note_of(request)
    bounds = services.bounds
    # `model` and `user` are labels: bounded before the lookup, whose 404 quotes the name.
    body = await parse_json(request, EmbeddingRequest, bounds.max_body_bytes,
                            lambda data: check_labels(data, bounds))
    engine = services.catalog.get(EMBEDDING, body.model)
    note.model = engine.info.id
    if body.dimensions is not None and body.dimensions > engine.dimensions:
        raise InvalidRequest(f"This model has {engine.dimensions} dimensions; 'dimensions' "
                             f"must be from 1 to {engine.dimensions}, not {body.dimensions}.",
                             param="dimensions", code="invalid_value")
    inputs = texts_or_token_lists(body.input, "input", services.bounds.max_embedding_inputs)
    # The model is shared per key; a client that leaves while queued gives its place up.
    result = await watched(request, engine.embed(inputs, owner=note.key_id))
    note.prompt_tokens = result.prompt_tokens
    encoding = body.encoding_format or "float"
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": index,
                  "embedding": embedding_json(vector, body.dimensions, encoding)}
                 for index, vector in enumerate(result.vectors)],
        "model": engine.info.id,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    })
