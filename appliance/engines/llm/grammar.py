"""Structured outputs as GBNF grammars for llama.cpp's grammar sampler.

``json_object`` is a hand-written grammar for one JSON object. ``json_schema`` goes through
llama-cpp-python's schema converter; before that, every keyword of the schema is checked
against what the converter really enforces, so a strict request never runs looser than it
asked (an unsupported keyword is a 400 naming it and where it sits). Every schema is held to
the bounds in schema_bounds.py before conversion, and the grammar to its size and nesting
before llama.cpp parses it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from llama_cpp.llama_grammar import SchemaConverter

from appliance.engines.base import OutputFormat
from appliance.engines.llm.regex_gbnf import gbnf_pattern
from appliance.engines.llm.schema_bounds import SchemaBudget, check_grammar, subschemas
from appliance.errors import InvalidRequest

# Whitespace is bounded: an unbounded `ws` lets a small model pad forever.
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" ( raw | "\\" escape )* "\"" ws
raw    ::= [^"\\\x7F\x00-\x1F\uD800-\uDFFF]
escape ::= ["\\bfnrt/] | "u" [0-9a-fA-F]{4}
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,3})? ws
ws     ::= | " " | "\n" [ \t]{0,20}
"""

_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F\\uD800-\\uDFFF] |'
ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema", "$id",
               "deprecated", "readOnly", "writeOnly"}
ENFORCED = {"type", "properties", "required", "additionalProperties", "items", "prefixItems",
            "minItems", "maxItems", "enum", "const", "anyOf", "$ref", "$defs", "definitions",
            "pattern", "format", "minLength", "maxLength"}
FORMATS = {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
TYPES = {"string", "number", "integer", "boolean", "null", "object", "array"}
# The converter's messages can quote the whole schema back; an error names the place instead.
_REASON_CHARS = 200


def grammar_for(output: OutputFormat) -> str:
    if output.kind == "json_object":
        return JSON_OBJECT_GBNF
    schema = dict(output.schema or {})
    where = "response_format.json_schema.schema"
    SchemaBudget().check(schema, where)
    if output.strict:
        check_enforceable(schema, where)
    converter = new_converter()
    visit(converter, schema, "", where)
    return finish(converter, "response_format")


class _Converter(SchemaConverter):
    """The converter, with its literals quoted for GBNF whole. It escaped only quotes and line
    ends, never the backslash, and its literals are JSON text (``const``, ``enum``, property
    names, through json.dumps): ``"a\\u0000b"`` reached GBNF as the code point 0, which no
    token can write, and llama.cpp aborted the process at the end of generation; ``"a\\tb"``
    wrote a raw tab and ``"a\\\\b"`` a backspace."""

    def _format_literal(self, literal: str) -> str:
        return '"' + _GBNF_LITERAL.sub(_gbnf_escape, literal) + '"'


_GBNF_LITERAL = re.compile(r'[\\"\x00-\x1F\x7F]')


def _gbnf_escape(found: re.Match[str]) -> str:
    char = found.group()
    return "\\" + char if char in '\\"' else f"\\x{ord(char):02X}"


def new_converter(prop_order: Mapping[str, int] | None = None) -> SchemaConverter:
    return _Converter(  # type: ignore[no-untyped-call]
        prop_order=dict(prop_order or {}), allow_fetch=False, dotall=False, raw_pattern=False)


def visit(converter: SchemaConverter, schema: Mapping[str, Any], rule: str, where: str) -> str:
    """Adds the rules for ``schema`` to the converter; returns the name of its rule. Its $refs
    resolve against the schema itself, under keys made unique by ``where``. The schema must
    have passed a ``SchemaBudget`` first."""
    resolved = copy.deepcopy(dict(schema))
    for node, at in subschemas(resolved, where):
        _replace_boolean_subschemas(node, at)
        if isinstance(node.get("pattern"), str):
            node["pattern"] = gbnf_pattern(node["pattern"], f"{at}.pattern")
    try:
        root_ref = resolved.pop("$ref", None)
        # The converter resolves no $ref below one it resolved, so a root $ref (what pydantic
        # writes for a recursive model) left those in its $defs unknown: resolve them first.
        converter.resolve_refs(resolved, where)
        if root_ref is not None:
            resolved["$ref"] = root_ref
            converter.resolve_refs(resolved, where)
        return str(converter.visit(resolved, rule))  # type: ignore[no-untyped-call]
    except Exception as exc:  # the converter asserts on shapes and refs it does not know
        reason = str(exc)
        if len(reason) > _REASON_CHARS:
            reason = reason[:_REASON_CHARS] + "..."
        raise InvalidRequest(f"Invalid schema at '{where}': it cannot be turned into an "
                             f"output constraint ({reason}).", param=where,
                             code="invalid_json_schema") from None


# Where a subschema may be a boolean (JSON Schema's ``true``: any value, ``false``: none) and
# the converter reads only objects ("'bool' object has no attribute 'get'" came back as the
# error). Its own additionalProperties takes a boolean and is left as it is.
_NAMED_SUBSCHEMAS = ("properties", "$defs", "definitions")
_LISTED_SUBSCHEMAS = ("anyOf", "oneOf", "allOf", "prefixItems")


def _replace_boolean_subschemas(node: dict[str, Any], where: str) -> None:
    """``true`` becomes ``{}`` (any JSON value); ``false``, which no value matches, is a 400
    naming its place, unless it is an optional property, which is then left out."""
    listed = node.get("required")
    required: list[Any] = listed if isinstance(listed, list) else []
    if isinstance(node.get("properties"), dict):
        node["properties"] = {name: child for name, child in node["properties"].items()
                              if child is not False or name in required}
    if node.get("items") is True:
        del node["items"]  # the converter reads an empty items schema as a missing one
    elif node.get("items") is False:
        raise InvalidRequest(f"Invalid schema at '{where}.items': items false (only an empty "
                             "array) cannot be turned into an output constraint.",
                             param=f"{where}.items", code="invalid_json_schema")

    def replaced(child: Any, at: str) -> Any:
        if child is True:
            return {}
        if child is False:
            raise InvalidRequest(f"Invalid schema at '{at}': the schema false allows no value, "
                                 "so no output can match it.", param=at,
                                 code="invalid_json_schema")
        return child

    for key in _NAMED_SUBSCHEMAS:
        if isinstance(node.get(key), dict):
            node[key] = {name: replaced(child, f"{where}.{key}.{name}")
                         for name, child in node[key].items()}
    for key in _LISTED_SUBSCHEMAS:
        if isinstance(node.get(key), list):
            node[key] = [replaced(child, f"{where}.{key}[{index}]")
                         for index, child in enumerate(node[key])]


def finish(converter: SchemaConverter, param: str, *extra_rules: str) -> str:
    """The grammar text, checked against its bounds (a 400 naming ``param``)."""
    # The converter's string character allows raw control characters, which JSON forbids
    # inside strings (a model then emits a newline in a string and the output cannot parse),
    # and surrogates, which UTF-8 cannot hold (llama.cpp reads the bytes ED A0 80 as one).
    grammar = converter.format_grammar()  # type: ignore[no-untyped-call]
    grammar = grammar.replace(_LOOSE_CHAR, _JSON_CHAR)
    grammar = "\n".join((*extra_rules, grammar))
    check_grammar(grammar, param)
    return grammar


def check_enforceable(node: Any, where: str) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, Mapping):
        raise _refuse(where, "a schema must be an object")
    for key in node:
        if key not in ENFORCED and key not in ANNOTATIONS:
            raise _refuse(f"{where}.{key}", f"the keyword '{key}' cannot be enforced")
    if "pattern" in node and ({"minLength", "maxLength", "format"} & node.keys()):
        raise _refuse(f"{where}.pattern", "'pattern' cannot be combined with length or format")
    if "format" in node and node["format"] not in FORMATS:
        raise _refuse(f"{where}.format", f"the string format '{node['format']}' cannot be "
                      f"enforced (supported: {', '.join(sorted(FORMATS))})")
    required = node.get("required")
    if required is not None and not (isinstance(required, list) and
                                     all(isinstance(name, str) for name in required)):
        # The converter reads a string as its characters: "ab" required 'a' and 'b'.
        raise _refuse(f"{where}.required", "'required' must be an array of property names")
    if isinstance(required, list):
        defined = node.get("properties") or {}
        missing = [name for name in required if name not in defined]
        if missing:
            # The converter writes only the properties it knows: the output lacked these.
            raise _refuse(f"{where}.required", f"'required' names {missing[0]!r}, which "
                          "'properties' does not define, so it cannot be enforced")
    kinds = node.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds else []:
        if kind not in TYPES:
            raise _refuse(f"{where}.type", f"unknown type '{kind}'")
    for key in ("properties", "$defs", "definitions"):
        for name, child in (node.get(key) or {}).items():
            check_enforceable(child, f"{where}.{key}.{name}")
    for index, child in enumerate(node.get("anyOf") or []):
        check_enforceable(child, f"{where}.anyOf[{index}]")
    for index, child in enumerate(node.get("prefixItems") or []):
        check_enforceable(child, f"{where}.prefixItems[{index}]")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), Mapping):
            check_enforceable(node[key], f"{where}.{key}")


def _refuse(where: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"{where}: {why} by this server; with strict: true the output would not be "
        "guaranteed to match. Remove it or set strict: false.",
        param=where, code="unsupported_schema")
