"""The GBNF grammar that makes a model's tool calls well formed.

One rule per offered function: its name as a literal, then its arguments under the function's
own JSON Schema. The dialect decides what wraps the calls. With ``tool_choice`` required or
named the grammar holds from the first token; with ``auto`` it is armed lazily, when the
model writes the dialect's start marker (see sampling.py), so a model that answers in prose
is not constrained, and one that calls a tool cannot call it wrongly. All the schemas that go
into one grammar share one budget (schema_bounds.py): its totals are per request.
"""

from __future__ import annotations

import json

from appliance.engines.base import OutputFormat, ToolUse
from appliance.engines.llm.grammar import check_enforceable, finish, new_converter, visit
from appliance.engines.llm.schema_bounds import SchemaBudget
from appliance.engines.llm.tool_dialects import ToolDialect

EMPTY_PARAMETERS = {"type": "object", "properties": {}}
# Parallel calls are capped: a small model can otherwise call tools until max_tokens.
MAX_PARALLEL_CALLS = 8


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def tool_call_grammar(use: ToolUse, dialect: ToolDialect,
                      output: OutputFormat | None = None) -> str:
    """Tool calls only; or, with ``output`` under ``auto``, either tool calls or a reply in
    that format (then the grammar holds from the first token)."""
    converter = new_converter({"name": 0, dialect.args_key: 1})
    budget = SchemaBudget()
    named = use.named()
    alternatives: list[str] = []
    for position, tool in enumerate(use.tools):
        if named is not None and tool is not named:
            continue
        where = f"tools[{position}].function.parameters"
        parameters = tool.parameters or EMPTY_PARAMETERS
        budget.check(parameters, where)
        if tool.strict:
            check_enforceable(parameters, where)
        arguments = visit(converter, parameters, f"tool-{position}-arguments", where)
        alternatives.append(
            f"tool-{position}-call ::= \"{{\" space {_literal(json.dumps('name'))} space "
            f"\":\" space {_literal(json.dumps(tool.name))} space \",\" space "
            f"{_literal(json.dumps(dialect.args_key))} space \":\" space {arguments} "
            "\"}\" space")
    calls = " | ".join(rule.split(" ::= ")[0] for rule in alternatives)
    rules = [*alternatives, f"tool-call ::= {calls}", "tool-ws ::= [ \\t\\n]{0,3}"]
    start = _literal(dialect.start)
    if dialect.list_form:
        more = f'("," tool-ws tool-call){{0,{MAX_PARALLEL_CALLS - 1}}}' if not use.single else ""
        end = f" tool-ws {_literal(dialect.end)}" if dialect.end else ""
        root = f'root ::= {start} tool-ws "[" tool-ws tool-call {more} tool-ws "]"{end}'
    elif dialect.marker_in_payload:
        more = f'(";" tool-ws tool-call){{0,{MAX_PARALLEL_CALLS - 1}}}' if not use.single else ""
        root = f"root ::= tool-call {more}"
    else:
        rules.append(f"tool-block ::= {start} tool-ws tool-call tool-ws "
                     f"{_literal(dialect.end or '')}")
        more = f"(tool-ws tool-block){{0,{MAX_PARALLEL_CALLS - 1}}}" if not use.single else ""
        root = f"root ::= tool-block {more}"
    if output is not None and not use.forced:
        where = "response_format.json_schema.schema"
        schema = dict(output.schema or {}) if output.kind == "json_schema" else {"type": "object"}
        budget.check(schema, where)
        if output.strict:
            check_enforceable(schema, where)
        reply = visit(converter, schema, "reply", where)
        rules.append(root.replace("root ::=", "tool-calls ::=", 1))
        root = f"root ::= {reply} | tool-calls"
    return finish(converter, "tools", root, *rules)
