"""A grammar llama.cpp cannot parse is a 400 before any work, not a sampler that constrains
nothing (this build answers a parse failure with a sampler, not NULL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.engines.base import OutputFormat
from appliance.engines.llm.grammar import JSON_OBJECT_GBNF, grammar_for
from appliance.engines.llm.model import LoadedModel
from appliance.errors import InvalidRequest
from devtools.server_harness import SMOLLM2


@pytest.fixture(scope="module")
def model() -> Iterator[LoadedModel]:
    loaded = LoadedModel(SMOLLM2, gpu_layers=0)
    yield loaded
    loaded.close()


def test_a_grammar_that_parses_compiles(model: LoadedModel) -> None:
    model.check_grammar(JSON_OBJECT_GBNF)


@pytest.mark.parametrize("grammar", [
    'root ::= "a" (',  # syntax error
    "root ::= missing",  # undefined rule
    'root ::= "\\q"',  # bad escape
])
def test_a_grammar_that_does_not_parse_is_a_400(model: LoadedModel, grammar: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        model.check_grammar(grammar)
    assert raised.value.status == 400


def pattern_schema(pattern: str) -> OutputFormat:
    return OutputFormat("json_schema", {
        "type": "object", "required": ["a"], "additionalProperties": False,
        "properties": {"a": {"type": "string", "pattern": pattern}}}, strict=True)


@pytest.mark.parametrize("pattern", ["^(a|)$", "^(a?)+$", "^(a|)?$", "^((a|)b)+$"])
def test_empty_alternatives_outside_a_repetition_compile(model: LoadedModel,
                                                         pattern: str) -> None:
    model.check_grammar(grammar_for(pattern_schema(pattern)))


@pytest.mark.parametrize("pattern", ["^(a|b|)+$", "^()+$", "^(|a)*$", "^(a|){2}$"])
def test_a_repeated_empty_alternative_is_a_400_naming_the_pattern(pattern: str) -> None:
    # llama.cpp cannot parse what the converter writes for these: the 400 said only "could
    # not be compiled", naming no place.
    with pytest.raises(InvalidRequest) as raised:
        grammar_for(pattern_schema(pattern))
    assert raised.value.param == "response_format.json_schema.schema.properties.a.pattern"
    assert "empty alternative" in str(raised.value)


@pytest.mark.parametrize("strict", [True, False])
def test_boolean_subschemas(model: LoadedModel, strict: bool) -> None:
    """JSON Schema's true (any value) and false (none) where a subschema goes: the converter
    read only objects, and its "'bool' object has no attribute 'get'" came back as the 400."""
    where = "response_format.json_schema.schema"
    accepted = [
        {"type": "object", "properties": {"a": True}, "required": ["a"],
         "additionalProperties": False},
        {"type": "object", "properties": {"a": False, "b": {"type": "integer"}},
         "required": ["b"], "additionalProperties": False},
        {"type": "array", "items": True},
        {"anyOf": [True, {"type": "integer"}]},
        {"type": "object", "properties": {"a": {"$ref": "#/$defs/x"}}, "$defs": {"x": True},
         "required": ["a"], "additionalProperties": False},
    ]
    for schema in accepted:
        model.check_grammar(grammar_for(OutputFormat("json_schema", schema, strict)))
    dropped = grammar_for(OutputFormat("json_schema", accepted[1], strict))
    assert '"\\"b\\""' in dropped and '"\\"a\\""' not in dropped  # the false one: left out
    refused = {
        f"{where}.properties.a": {"type": "object", "properties": {"a": False},
                                  "required": ["a"]},
        f"{where}.items": {"type": "array", "items": False},
        f"{where}.anyOf[1]": {"anyOf": [{"type": "integer"}, False]},
    }
    for param, schema in refused.items():
        with pytest.raises(InvalidRequest) as raised:
            grammar_for(OutputFormat("json_schema", schema, strict))
        assert raised.value.param == param
        assert "'bool' object" not in str(raised.value)
