"""Structured outputs on the real SmolLM2: constrained sampling, not hope."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
SMOL = "smollm2-135m-instruct"


class Pet(BaseModel):
    name: str
    species: str
    age: int
    vaccinated: bool


def sdk(server: RealServer) -> openai.OpenAI:
    return server.sdk


def test_json_object_is_always_one_object(real_server: RealServer) -> None:
    for seed in range(3):
        completion = sdk(real_server).chat.completions.create(
            model=SMOL, temperature=1.0, seed=seed, max_tokens=200,
            response_format={"type": "json_object"},
            messages=[{"role": "user", "content": "Describe a city as JSON."}])
        choice = completion.choices[0]
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.message.content or ""), dict)
        else:
            assert choice.finish_reason == "length"
            assert (choice.message.content or "").lstrip().startswith("{")


def test_parse_returns_the_pydantic_object(real_server: RealServer) -> None:
    completion = sdk(real_server).chat.completions.parse(
        model=SMOL, temperature=0, max_tokens=120, response_format=Pet,
        messages=[{"role": "user", "content": "Invent a pet."}])
    pet = completion.choices[0].message.parsed
    assert isinstance(pet, Pet)
    assert isinstance(pet.age, int)


def test_schema_with_nesting_refs_and_enums_validates(real_server: RealServer) -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "size": {"enum": ["small", "medium", "large"]},
            "districts": {"type": "array", "items": {"$ref": "#/$defs/district"},
                          "minItems": 1, "maxItems": 2},
        },
        "required": ["city", "size", "districts"],
        "additionalProperties": False,
        "$defs": {"district": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 30}, "population": {"type": "integer"}},
            "required": ["name", "population"], "additionalProperties": False}},
    }
    for seed in range(3):
        completion = sdk(real_server).chat.completions.create(
            model=SMOL, temperature=1.0, seed=seed, max_tokens=300,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "city", "schema": schema, "strict": True}},
            messages=[{"role": "user", "content": "Describe a city."}])
        assert completion.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(completion.choices[0].message.content or ""), schema)


def test_strict_schema_with_unenforceable_keyword_is_400(real_server: RealServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(real_server).chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": "A number."}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "n", "strict": True,
                "schema": {"type": "object", "properties": {"n": {"type": "integer",
                                                                  "minimum": 5}},
                           "required": ["n"], "additionalProperties": False}}})
    assert caught.value.param == "response_format.json_schema.schema.properties.n.minimum"


def test_cut_constrained_output_reports_length(real_server: RealServer) -> None:
    with pytest.raises(openai.LengthFinishReasonError):
        sdk(real_server).chat.completions.parse(
            model=SMOL, temperature=0, max_tokens=5, response_format=Pet,
            messages=[{"role": "user", "content": "Invent a pet."}])


# Literals and patterns holding what JSON escapes. Before: "a\u0000b" reached llama.cpp's
# grammar as the code point 0 and aborted the process; a tab const, a backslash in a name,
# \s, [^...] and "." wrote raw control characters, quotes or backslashes (the output did not
# parse); "^a|b$" gave the string's quotes to one branch each.
ESCAPING_SCHEMAS = [
    {"const": "a\u0000b"},
    {"enum": ['say "hi"', "back\\slash", "tab\there"]},
    {"type": "object", "properties": {"a\\b": {"const": 1}, 'q"': {"type": "boolean"}},
     "required": ["a\\b", 'q"'], "additionalProperties": False},
    {"type": "string", "pattern": "^[ -~]{12}$"},
    {"type": "string", "pattern": "^\\W\\S\\s.[^a\\s]{3}$"},
    {"type": "string", "pattern": "^ab|cd$"},
    {"type": "string", "pattern": "^x{ 2 }$"},
    # \D and [^\w] wrote Arabic digits and Chinese, which Python's re does not count as such.
    {"type": "string", "pattern": "^\\D{2}[^\\w](?:[a-z]*|[0-9]*)+$"},
    # Negated escapes inside a class (refused before): letters and digits, and a non-space.
    {"type": "string", "pattern": "^[^\\W_]{4}[\\S]{2}[^\\D]$"},
]


@pytest.mark.parametrize("schema", ESCAPING_SCHEMAS)
def test_strict_output_is_json_that_validates_whatever_the_schema_escapes(
        real_server: RealServer, schema: dict[str, object]) -> None:
    for seed in range(2):
        completion = sdk(real_server).chat.completions.create(
            model=SMOL, temperature=1.0, seed=seed, max_tokens=60,
            messages=[{"role": "user", "content": 'Write "quotes", \\ and a\ttab.'}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "escapes", "strict": True, "schema": schema}})
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content or ""), schema)
    assert real_server.sdk.models.list().data  # the process lives
