"""OpenAI's OpenAPI document, carried compressed with its MIT licence and checked by sha256.

The contract tests and ``scripts/build-openapi`` read it from here, so a clone passes its tests
with nothing beside it (``../shared`` is not needed).
"""

from __future__ import annotations

import hashlib
import lzma
from pathlib import Path
from typing import Any

import yaml

COMPRESSED = Path(__file__).resolve().parent / "openapi.yaml.xz"
# Of the decompressed text; README.md in this folder says how to update both.
SHA256 = "db5d7478feae10b4d331834c60d9765a8aa042e38419f9b1694288c11aa8ebc8"


def official_text() -> str:
    data = lzma.decompress(COMPRESSED.read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise RuntimeError(f"{COMPRESSED} decompresses to sha256 {digest}, expected {SHA256}")
    return data.decode("utf-8")


def official_document() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document: dict[str, Any] = yaml.load(official_text(), Loader=loader)
    return document
