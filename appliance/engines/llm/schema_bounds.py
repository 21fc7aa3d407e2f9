"""Bounds on the JSON Schemas a grammar is built from, and on the GBNF grammar itself.

llama-cpp-python's converter turns every ``{m,n}`` (``minLength``/``maxLength``,
``minItems``/``maxItems``, a quantifier in ``pattern``) into ``n - m`` nested groups, and
llama.cpp parses groups recursively: 100,000 of them overflow the C stack and kill the
process. Measured on this build (tests/hostile/test_schemas.py says how), a thread with the
usual 8 MiB stack dies at about 19,000 nested groups, one with 2 MiB at about 4,700 and with
1 MiB at about 2,200; ``max_grammar_nesting`` stays well below. Other dimensions cost time
rather than stack: the converter's rule for optional properties is quadratic in their count
(600 in one object took 0.5 s), compiling grows with the number of groups, and quantifiers
nested inside quantified groups make the grammar ambiguous, which multiplies the states
llama.cpp tracks at every token (``(a{0,10}){0,10}){0,10}`` took 33 s for one token).

All the schemas that become one grammar (every tool's parameters and the response format)
share one ``SchemaBudget``: the totals are per request. Each bound is a 400 naming the
keyword where it sits (``response_format.json_schema.schema.properties.x.maxLength``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from appliance.errors import InvalidRequest


@dataclass(frozen=True)
class SchemaBounds:
    max_depth: int = 32  # nested schemas (and JSON values inside them)
    max_nodes: int = 10_000  # JSON objects and arrays in all the request's schemas
    max_properties: int = 256  # properties of one object
    max_optional_properties: int = 64  # its optional ones (the converter is quadratic there)
    max_total_properties: int = 5_000  # OpenAI's limit for structured outputs
    max_enum_values: int = 1_000  # enum values in all schemas (OpenAI's limit)
    max_alternatives: int = 256  # one anyOf / oneOf / allOf / prefixItems / type list
    max_repeat: int = 1_000  # one minLength/maxLength/minItems/maxItems/pattern count
    max_total_repeat: int = 10_000  # all of those together
    max_pattern_chars: int = 1_000
    max_pattern_product: int = 128  # choices of quantifiers nested in quantified groups
    max_grammar_bytes: int = 1024 * 1024
    max_grammar_nesting: int = 1_024  # parenthesised groups inside one another


SCHEMA_BOUNDS = SchemaBounds()

# Keywords whose value is one subschema, and those whose value maps names or lists subschemas.
_ONE_SCHEMA = {"additionalProperties", "additionalItems", "not", "if", "then", "else",
               "contains", "propertyNames", "unevaluatedItems", "unevaluatedProperties",
               "contentSchema"}
_NAMED_SCHEMAS = {"properties", "patternProperties", "$defs", "definitions",
                  "dependentSchemas"}
_LISTED_SCHEMAS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_COUNTS = (("minLength", "maxLength"), ("minItems", "maxItems"))
_NAME_IN_PARAM = 64  # a property name as it appears in `param`


def too_large(where: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"Invalid schema at '{where}': {message}.", param=where,
                          code="schema_too_large")


def _name(key: object) -> str:
    text = str(key)
    return text if len(text) <= _NAME_IN_PARAM else text[:_NAME_IN_PARAM] + "..."


@dataclass
class _Node:
    value: Any
    where: str
    depth: int
    schema: bool  # a subschema (else a JSON value inside one: enum, const, default ...)


class SchemaBudget:
    """Walks schemas once, without recursion, and refuses the first bound they pass."""

    def __init__(self, bounds: SchemaBounds = SCHEMA_BOUNDS):
        self.bounds = bounds
        self.nodes = 0
        self.properties = 0
        self.enum_values = 0
        self.repeat = 0

    def check(self, schema: Mapping[str, Any], where: str) -> None:
        refs: list[tuple[Mapping[str, Any], str]] = []  # schemas with a $ref, for the cycles
        stack = [_Node(schema, where, 1, True)]
        while stack:
            node = stack.pop()
            self._count(node)
            children: list[_Node] = []
            if node.schema and isinstance(node.value, Mapping):
                children = list(self._schema(node, refs))
            elif isinstance(node.value, Mapping):
                children = [_Node(v, f"{node.where}.{_name(k)}", node.depth + 1, False)
                            for k, v in node.value.items() if isinstance(v, Mapping | list)]
            elif isinstance(node.value, list):
                children = [_Node(v, f"{node.where}[{i}]", node.depth + 1, False)
                            for i, v in enumerate(node.value) if isinstance(v, Mapping | list)]
            stack.extend(reversed(children))  # in document order: the first bound passed
        _check_ref_cycles(schema, refs)

    def _count(self, node: _Node) -> None:
        if not isinstance(node.value, Mapping | list):
            return
        bounds = self.bounds
        self.nodes += 1
        if self.nodes > bounds.max_nodes:
            raise too_large(node.where, f"the schemas hold more than {bounds.max_nodes} "
                            "objects and arrays in all")
        if node.depth > bounds.max_depth:
            raise too_large(node.where, f"it is nested more than {bounds.max_depth} levels "
                            "deep")

    def _schema(self, node: _Node, refs: list[tuple[Mapping[str, Any], str]]) -> Iterator[_Node]:
        schema, where, depth = node.value, node.where, node.depth
        bounds = self.bounds
        if isinstance(schema.get("$ref"), str):
            refs.append((schema, where))
        self._object(schema, where)
        for low, high in _COUNTS:
            self._counts(schema, where, low, high)
        if isinstance(schema.get("pattern"), str):
            self._pattern(schema["pattern"], f"{where}.pattern")
        for key, value in schema.items():
            at = f"{where}.{key}"
            if key in _NAMED_SCHEMAS and isinstance(value, Mapping):
                yield from (_Node(child, f"{at}.{_name(name)}", depth + 1, True)
                            for name, child in value.items())
            elif (key in _LISTED_SCHEMAS or key == "items") and isinstance(value, list):
                if len(value) > bounds.max_alternatives:
                    raise too_large(at, f"{len(value)} subschemas; this server allows at "
                                    f"most {bounds.max_alternatives}")
                yield from (_Node(child, f"{at}[{i}]", depth + 1, True)
                            for i, child in enumerate(value))
            elif (key in _ONE_SCHEMA or key == "items") and isinstance(value, Mapping):
                yield _Node(value, at, depth + 1, True)
            elif key == "type" and isinstance(value, list) \
                    and len(value) > bounds.max_alternatives:
                raise too_large(at, f"{len(value)} types; this server allows at most "
                                f"{bounds.max_alternatives}")
            elif key == "enum" and isinstance(value, list):
                self.enum_values += len(value)
                if self.enum_values > bounds.max_enum_values:
                    raise too_large(at, f"the schemas list more than {bounds.max_enum_values} "
                                    "enum values in all")
                yield _Node(value, at, depth + 1, False)
            elif isinstance(value, Mapping | list) and key != "required":
                yield _Node(value, at, depth + 1, False)

    def _object(self, schema: Mapping[str, Any], where: str) -> None:
        bounds = self.bounds
        properties = schema.get("properties")
        count = len(properties) if isinstance(properties, Mapping) else 0
        if count > bounds.max_properties:
            raise too_large(f"{where}.properties", f"{count} properties in one object; this "
                            f"server allows at most {bounds.max_properties}")
        self.properties += count
        if self.properties > bounds.max_total_properties:
            raise too_large(f"{where}.properties", "the schemas have more than "
                            f"{bounds.max_total_properties} properties in all")
        names = set(properties) if isinstance(properties, Mapping) else set()
        required = schema.get("required")
        named = names & set(required) if isinstance(required, list) \
            and all(isinstance(r, str) for r in required) else set()
        extra = schema.get("additionalProperties")
        optional = count - len(named) + (1 if extra is True or isinstance(extra, Mapping)
                                         else 0)
        if optional > bounds.max_optional_properties:
            raise too_large(f"{where}.properties", f"{optional} optional properties in one "
                            "object (not in 'required', additionalProperties counting as "
                            f"one); this server allows at most "
                            f"{bounds.max_optional_properties}")

    def _counts(self, schema: Mapping[str, Any], where: str, low: str, high: str) -> None:
        bounds = self.bounds
        values: dict[str, int] = {}
        for key in (low, high):
            if key not in schema:
                continue
            value = schema[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidRequest(f"Invalid schema at '{where}.{key}': it must be a "
                                     "non-negative integer.", param=f"{where}.{key}",
                                     code="invalid_json_schema")
            if value > bounds.max_repeat:
                raise too_large(f"{where}.{key}", f"{key} is {value}; this server allows at "
                                f"most {bounds.max_repeat} (each repetition nests the output "
                                "grammar one level deeper)")
            values[key] = value
        if low in values and high in values and values[low] > values[high]:
            raise InvalidRequest(f"Invalid schema at '{where}.{low}': {low} is greater than "
                                 f"{high}.", param=f"{where}.{low}", code="invalid_json_schema")
        key = high if high in values else low
        self._spend(values.get(key, 0), f"{where}.{key}")

    def _spend(self, repeat: int, where: str) -> None:
        self.repeat += repeat
        if self.repeat > self.bounds.max_total_repeat:
            raise too_large(where, "the schemas' lengths, item counts and pattern "
                            f"repetitions add up to more than {self.bounds.max_total_repeat}")

    def _pattern(self, pattern: str, where: str) -> None:
        bounds = self.bounds
        if len(pattern) > bounds.max_pattern_chars:
            raise too_large(where, f"the pattern is {len(pattern)} characters long; this "
                            f"server allows at most {bounds.max_pattern_chars}")
        for count, product in _quantifiers(pattern):
            if count > bounds.max_repeat:
                raise too_large(where, f"a repetition count of {count}; this server allows "
                                f"at most {bounds.max_repeat}")
            if product > bounds.max_pattern_product:
                raise too_large(where, "quantifiers nested in quantified groups allow "
                                f"{product} combinations; this server allows at most "
                                f"{bounds.max_pattern_product} (they make the output "
                                "grammar ambiguous, which multiplies its cost per token)")
            self._spend(count, where)


def subschemas(schema: dict[str, Any], where: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Every schema object in ``schema`` (itself included) with where it sits; JSON values
    (enum, const, default ...) are not schemas. For a schema that passed a budget."""
    stack = [(schema, where)]
    while stack:
        node, at = stack.pop()
        yield node, at
        for key, value in node.items():
            if key in _NAMED_SCHEMAS and isinstance(value, dict):
                stack.extend((child, f"{at}.{key}.{_name(name)}")
                             for name, child in value.items() if isinstance(child, dict))
            elif (key in _LISTED_SCHEMAS or key == "items") and isinstance(value, list):
                stack.extend((child, f"{at}.{key}[{i}]")
                             for i, child in enumerate(value) if isinstance(child, dict))
            elif (key in _ONE_SCHEMA or key == "items") and isinstance(value, dict):
                stack.append((value, f"{at}.{key}"))


_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(,?)\s*(\d*)\s*\}")


def _quantifiers(pattern: str) -> Iterator[tuple[int, int]]:
    """Each quantifier's largest count, and the choices it and the quantifiers nested under
    it multiply to. Reads the pattern the way the converter does (escapes, classes, groups);
    what the converter refuses (lookarounds, unbalanced groups) it refuses later itself."""
    groups: list[int] = [1]  # per open group: the most choices of a quantified part in it
    last = 1  # choices inside the atom a quantifier would apply to
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i, last = i + 2, 1
            continue
        if c == "[":
            i += 1
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
            i, last = i + 1, 1
            continue
        if c == "(":
            groups.append(1)
        elif c == ")" and len(groups) > 1:
            last = groups.pop()
            groups[-1] = max(groups[-1], last)
            i += 1
            continue
        elif c in "?*+":
            groups[-1] = max(groups[-1], last * 2)
            yield 0, last * 2
        elif c == "{" and (match := _QUANTIFIER.match(pattern, i)):
            low, comma, high = match.groups()
            least = int(low) if low else 0
            most = int(high) if high else None
            count = max(least, most or 0)
            choices = 2 if most is None and comma else (most - least + 1 if most else 1)
            product = last * max(choices, 1)
            groups[-1] = max(groups[-1], product)
            yield count, product
            i = match.end()
            continue
        last = 1
        i += 1


def _check_ref_cycles(root: Mapping[str, Any], refs: list[tuple[Mapping[str, Any], str]]) \
        -> None:
    """A $ref that reaches itself through $refs and anyOf/oneOf alone (``a = $ref a``) is a
    left-recursive grammar, which llama.cpp cannot compile: it would constrain nothing.
    Recursion through properties or items is fine (each level writes a bracket first)."""
    def target(ref: str) -> Any:
        node: Any = root
        for part in ref[2:].split("/") if ref.startswith("#/") else ["\0"]:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def firsts(schema: Mapping[str, Any]) -> list[Any]:
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return [target(ref)]
        alternatives = schema.get("oneOf") or schema.get("anyOf")
        return list(alternatives) if isinstance(alternatives, list) else []

    done: set[int] = set()
    for start, where in refs:
        if id(start) in done:
            continue
        path: set[int] = set()
        stack: list[tuple[Any, bool]] = [(start, True)]
        while stack:
            node, entering = stack.pop()
            if not isinstance(node, Mapping):
                continue
            if not entering:
                path.discard(id(node))
                done.add(id(node))
                continue
            if id(node) in path:
                raise too_large(f"{where}.$ref", "it refers back to itself before any "
                                "output (through $ref and anyOf/oneOf only), which no "
                                "grammar can constrain")
            if id(node) in done:
                continue
            path.add(id(node))
            stack.append((node, False))
            stack.extend((child, True) for child in firsts(node))


_GRAMMAR_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|#[^\n]*|[()]'
                            r"|\{\s*(\d*)\s*,?\s*(\d*)\s*\}")


def check_grammar(grammar: str, param: str, bounds: SchemaBounds = SCHEMA_BOUNDS) -> None:
    """The last guard before llama.cpp parses the grammar: its size, how deep its groups
    nest (llama.cpp's parser recurses per group) and its own repetition counts."""
    size = len(grammar.encode())
    if size > bounds.max_grammar_bytes:
        raise InvalidRequest(f"The output constraint for '{param}' would be a grammar of "
                             f"{size} bytes; this server allows at most "
                             f"{bounds.max_grammar_bytes}. Simplify the schema.",
                             param=param, code="schema_too_large")
    depth = 0
    for match in _GRAMMAR_TOKEN.finditer(grammar):
        token = match.group(0)
        if token == "(":
            depth += 1
            if depth > bounds.max_grammar_nesting:
                raise InvalidRequest(
                    f"The output constraint for '{param}' would nest more than "
                    f"{bounds.max_grammar_nesting} groups; simplify the schema.",
                    param=param, code="schema_too_large")
        elif token == ")":
            depth = max(0, depth - 1)
        elif token.startswith("{"):
            counts = [int(n) for n in match.groups() if n]
            if counts and max(counts) > bounds.max_repeat:
                raise InvalidRequest(
                    f"The output constraint for '{param}' repeats a part {max(counts)} "
                    f"times; this server allows at most {bounds.max_repeat}.",
                    param=param, code="schema_too_large")
