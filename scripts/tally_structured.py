"""Tally: do structured outputs and forced tool calls validate, run after run, on real models?

Starts the appliance on one model, sends N sampled requests (temperature 1, a different seed
each) for each response format and tool choice below, validates every output (for tools:
each call's name and its arguments against that tool's parameters), and prints a table:
valid / cut by max_tokens (finish_reason "length") / invalid. "invalid" must be 0. For
tool_choice "auto" it counts how often the model called a tool at all.

``--model think`` runs the same tallies on a reasoning model: SmolLM2 as the think family
(tests/real/session_server.py's smollm2-135m-think: its template opens ``<think>``, budgets
low 8 / medium 24 / high 64), every request with ``reasoning_effort`` (``--effort``, default
low), so the grammar is armed only once the engine has closed the thinking. Its table adds
"reasoned": runs whose usage counts reasoning tokens.

    .venv/bin/python scripts/tally_structured.py [--model smollm2|gemma|think] [--runs 100]
        [--tools-only] [--effort low|medium|high]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from bench_chat import specs, start_server, write_config

from devtools import server_harness
from devtools.server_harness import SMOLLM2, THINK_TEMPLATE, create_key, free_port

PET = {"type": "object", "additionalProperties": False,
       "required": ["name", "species", "age", "vaccinated"],
       "properties": {"name": {"type": "string", "maxLength": 30},
                      "species": {"enum": ["cat", "dog", "parrot"]},
                      "age": {"type": "integer"}, "vaccinated": {"type": "boolean"}}}
CITY = {"type": "object", "additionalProperties": False, "required": ["city", "districts"],
        "properties": {"city": {"type": "string", "maxLength": 40},
                       "districts": {"type": "array", "minItems": 1, "maxItems": 3,
                                     "items": {"$ref": "#/$defs/district"}}},
        "$defs": {"district": {"type": "object", "additionalProperties": False,
                               "required": ["name", "population"],
                               "properties": {"name": {"type": "string", "maxLength": 30},
                                              "population": {"type": "integer"},
                                              "nickname": {"anyOf": [{"type": "string",
                                                                      "maxLength": 20},
                                                                     {"type": "null"}]}}}}}
CASES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("json_schema pet (strict)", {"type": "json_schema", "json_schema": {
        "name": "pet", "schema": PET, "strict": True}}, PET, "Invent a pet."),
    ("json_schema city (strict)", {"type": "json_schema", "json_schema": {
        "name": "city", "schema": CITY, "strict": True}}, CITY, "Describe a city."),
    ("json_object", {"type": "json_object"}, {"type": "object"}, "Describe a book as JSON."),
]


WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 40},
                          "unit": {"enum": ["celsius", "fahrenheit"]}}}
EMAIL = {"type": "object", "additionalProperties": False, "required": ["to", "subject", "urgent"],
         "properties": {"to": {"type": "string", "maxLength": 60},
                        "subject": {"type": "string", "maxLength": 60},
                        "urgent": {"type": "boolean"},
                        "cc": {"type": "array", "maxItems": 2,
                               "items": {"type": "string", "maxLength": 60}}}}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "strict": True,
                                      "description": "Current weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "send_email", "strict": True,
                                      "description": "Send an email", "parameters": EMAIL}},
]
SCHEMAS = {"get_weather": WEATHER, "send_email": EMAIL}
THINK_MODEL = "smollm2-135m-think"
THINK_CONFIG = f"""[[models]]
id = "{THINK_MODEL}"
path = "{SMOLLM2}"
context_length = 4096
parallel = 8
reasoning = "think"
reasoning_budget = {{ low = 8, medium = 24, high = 64 }}
{THINK_TEMPLATE}
"""


def reasoned(completion: Any) -> bool:
    details = completion.usage.completion_tokens_details if completion.usage else None
    return bool(details is not None and details.reasoning_tokens)
TOOL_CASES: list[tuple[str, Any, str]] = [
    ("tools required", "required", "Is it cold in Oslo? Then mail Ann about it."),
    ("tools named send_email", {"type": "function", "function": {"name": "send_email"}},
     "Tell bob@example.com the build is green."),
    ("tools auto (fitting prompt)", "auto", "What is the weather in Lisbon?"),
]


async def tally_tools(client: openai.AsyncOpenAI, model: str, runs: int,
                      max_tokens: int, only: str, extra: dict[str, Any]) -> None:
    gate = asyncio.Semaphore(8)
    thought: list[bool] = []

    async def one(choice: Any, prompt: str, seed: int) -> str:
        async with gate:
            completion = await client.chat.completions.create(
                model=model, temperature=1.0, seed=seed, max_tokens=max_tokens, tools=TOOLS,
                tool_choice=choice, messages=[{"role": "user", "content": prompt}], **extra)
        thought.append(reasoned(completion))
        result = completion.choices[0]
        outcome = judge(result, choice)
        if outcome == "invalid":  # what went wrong, to look into
            print(f"invalid: seed {seed}: {result.model_dump_json()[:2000]}", file=sys.stderr)
        return outcome

    def judge(result: Any, choice: Any) -> str:
        if result.finish_reason == "length":
            return "length"
        calls = result.message.tool_calls or []
        if not calls:
            return "text" if choice == "auto" else "invalid"
        named = choice["function"]["name"] if isinstance(choice, dict) else None
        for call in calls:
            if call.type != "function" or call.function.name not in SCHEMAS or \
                    (named and call.function.name != named):
                return "invalid"
            try:
                jsonschema.validate(json.loads(call.function.arguments),
                                    SCHEMAS[call.function.name])
            except (json.JSONDecodeError, jsonschema.ValidationError):
                return "invalid"
        return "valid" if result.finish_reason == "tool_calls" else "invalid"

    print(f"\n{'tool choice':28} {'runs':>5} {'valid':>6} {'length':>7} {'invalid':>8} "
          f"{'no call':>8} {'reasoned':>9}")
    for name, choice, prompt in TOOL_CASES:
        if only not in name:
            continue
        thought.clear()
        outcomes = await asyncio.gather(*(one(choice, prompt, seed) for seed in range(runs)))
        print(f"{name:28} {runs:5d} {outcomes.count('valid'):6d} "
              f"{outcomes.count('length'):7d} {outcomes.count('invalid'):8d} "
              f"{outcomes.count('text'):8d} {sum(thought):9d}")


async def tally(client: openai.AsyncOpenAI, model: str, runs: int, max_tokens: int,
                extra: dict[str, Any]) -> None:
    gate = asyncio.Semaphore(8)
    thought: list[bool] = []

    async def one(response_format: dict[str, Any], schema: dict[str, Any], prompt: str,
                  seed: int) -> str:
        async with gate:
            completion = await client.chat.completions.create(
                model=model, temperature=1.0, seed=seed, max_tokens=max_tokens,
                response_format=response_format,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": prompt}], **extra)
        thought.append(reasoned(completion))
        choice = completion.choices[0]
        if choice.finish_reason == "length":
            return "length"
        try:
            jsonschema.validate(json.loads(choice.message.content or ""), schema)
        except (json.JSONDecodeError, jsonschema.ValidationError):
            return "invalid"
        return "valid"

    print(f"{'case':28} {'runs':>5} {'valid':>6} {'length':>7} {'invalid':>8} "
          f"{'reasoned':>9}")
    for name, response_format, schema, prompt in CASES:
        thought.clear()
        outcomes = await asyncio.gather(
            *(one(response_format, schema, prompt, seed) for seed in range(runs)))
        print(f"{name:28} {runs:5d} {outcomes.count('valid'):6d} "
              f"{outcomes.count('length'):7d} {outcomes.count('invalid'):8d} "
              f"{sum(thought):9d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["smollm2", "gemma", "think"], default="smollm2")
    parser.add_argument("--effort", choices=["low", "medium", "high"], default="low",
                        help="the think model's reasoning_effort")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=400)
    parser.add_argument("--tools-only", action="store_true", help="skip response formats")
    parser.add_argument("--only", default="", help="tool cases whose name contains this")
    args = parser.parse_args()
    print("command:", " ".join(sys.argv))
    with tempfile.TemporaryDirectory(prefix="tally-") as folder:
        port = free_port()
        extra: dict[str, Any] = {}
        if args.model == "think":
            model_id = THINK_MODEL
            config = server_harness.write_config(Path(folder), port, THINK_CONFIG)
            extra["reasoning_effort"] = args.effort
        else:
            spec = specs(args.model)[0]
            model_id = spec.model_id
            config = write_config(Path(folder), spec, port, 4096, 8)
        key = create_key(config, "bench")
        server = start_server(config, port)
        try:
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                        max_retries=0, timeout=600)
            if not args.tools_only:
                asyncio.run(tally(client, model_id, args.runs, args.max_tokens, extra))
            asyncio.run(tally_tools(client, model_id, args.runs, args.max_tokens, args.only,
                                    extra))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
