"""GET /v1/models and GET /v1/models/{id}: OpenAI's list and model objects.

Aliases are listed as models of their own (owned by the same owner) so that clients which
check ``models.list()`` before using a familiar name find it; retrieving an alias returns it
under the name asked for, as OpenAI does for its alias names.

Each model also says its ``kind`` (chat, embedding, transcription, image), a field OpenAI's
Model schema does not have and allows (it forbids no extra fields): the playground fills its
model menus from it instead of guessing from names. A chat model that reasons also says
``reasoning``: the format its thinking comes in (``"think"``, ``"harmony"``), absent for the
others; the playground offers its effort selector on those. A chat model also says
``input_modalities``: ``["text", "image"]`` when it has a projector (models.toml ``mmproj``)
and takes image parts, ``["text"]`` otherwise; the playground offers its attach button on
those that take images.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from appliance.api.bounds import check_label
from appliance.api.services import Services
from appliance.engines.base import CHAT, Kind, ModelInfo


def _model_json(name: str, info: ModelInfo, kind: Kind[Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": name, "object": "model", "created": info.created,
                             "owned_by": info.owned_by, "kind": kind.name}
    if info.reasoning is not None:
        entry["reasoning"] = info.reasoning
    if kind.name == CHAT.name:
        entry["input_modalities"] = ["text", "image"] if info.vision else ["text"]
    return entry


async def list_models(request: Request) -> Response:
    services: Services = request.app.state.services
    catalog = services.catalog
    data = [_model_json(name, catalog.resolve(name), catalog.kind_of(name))
            for name in catalog.names()]
    return JSONResponse({"object": "list", "data": data})


async def retrieve_model(request: Request) -> Response:
    services: Services = request.app.state.services
    name = request.path_params["model"]
    check_label("model", name, services.bounds)  # before the 404, which quotes the name
    info = services.catalog.resolve(name)
    return JSONResponse(_model_json(name, info, services.catalog.kind_of(name)))
