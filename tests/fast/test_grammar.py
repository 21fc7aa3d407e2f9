"""Schemas become grammars; with strict, a keyword we cannot enforce is refused by name."""

from __future__ import annotations

import pytest

from appliance.engines.base import OutputFormat
from appliance.engines.llm.grammar import JSON_OBJECT_GBNF, grammar_for
from appliance.errors import InvalidRequest

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "full name"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "kind": {"enum": ["cat", "dog"]},
        "home": {"$ref": "#/$defs/address"},
        "nick": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["name", "age", "tags", "kind", "home", "nick"],
    "additionalProperties": False,
    "$defs": {"address": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False}},
}


def test_json_object_uses_the_object_grammar() -> None:
    assert grammar_for(OutputFormat("json_object")) == JSON_OBJECT_GBNF


def test_supported_schema_converts_with_strict() -> None:
    grammar = grammar_for(OutputFormat("json_schema", PERSON, strict=True))
    assert "root ::=" in grammar
    assert '\\"cat\\"' in grammar or "cat" in grammar


@pytest.mark.parametrize(
    ("schema", "param"),
    [
        ({"type": "integer", "minimum": 3}, "response_format.json_schema.schema.minimum"),
        ({"type": "object", "properties": {"e": {"type": "string", "format": "email"}}},
         "response_format.json_schema.schema.properties.e.format"),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]},
         "response_format.json_schema.schema.oneOf"),
        ({"type": "object", "properties": {"x": {"type": "number", "multipleOf": 2}}},
         "response_format.json_schema.schema.properties.x.multipleOf"),
        ({"type": "string", "pattern": "^a+$", "maxLength": 3},
         "response_format.json_schema.schema.pattern"),
    ],
)
def test_strict_refuses_what_it_cannot_enforce(schema: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        grammar_for(OutputFormat("json_schema", schema, strict=True))
    assert caught.value.param == param


def test_without_strict_the_enforceable_part_still_constrains() -> None:
    grammar = grammar_for(OutputFormat("json_schema", {"type": "integer", "minimum": 3}))
    assert "root ::=" in grammar


def test_strings_in_schema_grammars_exclude_raw_control_characters() -> None:
    grammar = grammar_for(OutputFormat("json_schema", {"type": "string"}))
    char_rule = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert "\\x00-\\x1F" in char_rule
