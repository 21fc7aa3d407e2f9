"""POST /v1/embeddings on the wire: the request body and the shape of each vector.

The Python SDK asks for base64 whenever numpy is installed and the JS SDK always does, so
both encodings must be exact.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Annotated[str, Field(min_length=1)]
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


def _shaped(vector: tuple[float, ...], dimensions: int | None) -> list[float]:
    if dimensions is None:
        return list(vector)
    cut = vector[:dimensions]
    norm = math.sqrt(sum(v * v for v in cut)) or 1.0
    return [v / norm for v in cut]


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def embedding_json(vector: tuple[float, ...], dimensions: int | None,
                   encoding: str) -> list[float] | str:
    """One vector as OpenAI's ``embedding`` field: cut to ``dimensions`` and re-normalised when
    asked, then floats or base64 (little-endian float32)."""
    return _encoded(_shaped(vector, dimensions), encoding)
