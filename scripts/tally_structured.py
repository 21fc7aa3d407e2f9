"""Tally: do structured outputs validate, run after run, on the real models?

Starts the appliance on one model, sends N sampled requests (temperature 1, a different seed
each) for each response format below, validates every output against its schema, and prints
a table: valid / cut by max_tokens (finish_reason "length") / invalid. "invalid" must be 0.

    .venv/bin/python scripts/tally_structured.py [--model smollm2|gemma] [--runs 100]
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
from bench_chat import create_key, free_port, specs, start_server, stop_server, write_config

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


async def tally(client: openai.AsyncOpenAI, model: str, runs: int, max_tokens: int) -> None:
    gate = asyncio.Semaphore(8)

    async def one(response_format: dict[str, Any], schema: dict[str, Any], prompt: str,
                  seed: int) -> str:
        async with gate:
            completion = await client.chat.completions.create(
                model=model, temperature=1.0, seed=seed, max_tokens=max_tokens,
                response_format=response_format,  # type: ignore[arg-type]
                messages=[{"role": "user", "content": prompt}])
        choice = completion.choices[0]
        if choice.finish_reason == "length":
            return "length"
        try:
            jsonschema.validate(json.loads(choice.message.content or ""), schema)
        except (json.JSONDecodeError, jsonschema.ValidationError):
            return "invalid"
        return "valid"

    print(f"{'case':28} {'runs':>5} {'valid':>6} {'length':>7} {'invalid':>8}")
    for name, response_format, schema, prompt in CASES:
        outcomes = await asyncio.gather(
            *(one(response_format, schema, prompt, seed) for seed in range(runs)))
        print(f"{name:28} {runs:5d} {outcomes.count('valid'):6d} "
              f"{outcomes.count('length'):7d} {outcomes.count('invalid'):8d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["smollm2", "gemma"], default="smollm2")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=400)
    args = parser.parse_args()
    spec = specs(args.model)[0]
    print("command:", " ".join(sys.argv))
    with tempfile.TemporaryDirectory(prefix="tally-") as folder:
        port = free_port()
        config = write_config(Path(folder), spec, port, 4096, 8)
        key = create_key(config)
        process, _ = start_server(config, port)
        try:
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                        max_retries=0, timeout=600)
            asyncio.run(tally(client, spec.model_id, args.runs, args.max_tokens))
        finally:
            stop_server(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
