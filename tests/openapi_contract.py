"""Validates our responses against OpenAI's published OpenAPI document (third_party/).

The document mixes OpenAPI 3.0's ``nullable: true`` into 3.1 schemas; JSON Schema ignores
that keyword, so it is rewritten as a union with ``null`` before validating.
"""

from __future__ import annotations

import functools
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from third_party.openai_openapi import official_document

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


@functools.cache
def _registry() -> Registry:
    document = _nullable_to_union(official_document())
    resource = Resource(contents=document, specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def validate(instance: Any, schema_name: str) -> None:
    """Raises jsonschema.ValidationError if ``instance`` breaks components/schemas/<name>."""
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    validator = jsonschema.Draft202012Validator(schema, registry=_registry())
    validator.validate(instance)
