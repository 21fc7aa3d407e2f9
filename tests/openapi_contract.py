"""Validates our responses against OpenAI's published OpenAPI document (../shared).

The document mixes OpenAPI 3.0's ``nullable: true`` into 3.1 schemas; JSON Schema ignores
that keyword, so it is rewritten as a union with ``null`` before validating.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_IN_SHARED = Path("shared") / "openai-openapi" / "openapi.yaml"
SPEC_URI = "urn:openai-openapi"


def _nullable_to_union(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _nullable_to_union(v) for k, v in node.items()}
        if node.pop("nullable", False):
            kind = node.get("type")
            if isinstance(kind, str):
                node["type"] = [kind, "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
            if "$ref" in node or "allOf" in node or "oneOf" in node or "anyOf" in node:
                node = {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_union(v) for v in node]
    return node


def _spec_path() -> Path:
    """shared/ sits beside the checkout (../shared), here and in CI."""
    for folder in Path(__file__).resolve().parents:
        if (folder / SPEC_IN_SHARED).is_file():
            return folder / SPEC_IN_SHARED
    raise FileNotFoundError(f"no {SPEC_IN_SHARED} beside or above this checkout")


@functools.cache
def _registry() -> Registry:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    text = _spec_path().read_text(encoding="utf-8")
    document = _nullable_to_union(yaml.load(text, Loader=loader))
    resource = Resource(contents=document, specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def validate(instance: Any, schema_name: str) -> None:
    """Raises jsonschema.ValidationError if ``instance`` breaks components/schemas/<name>."""
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    validator = jsonschema.Draft202012Validator(schema, registry=_registry())
    validator.validate(instance)
